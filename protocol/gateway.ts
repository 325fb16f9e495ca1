import { z } from "zod";

/** What a secret looks like in a reply: masked, never the value. */
export const MASK = "********";

const SLUG = /^[a-z0-9-]{1,32}$/;
const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const NO_CONTROL = /^[^\r\n\0]*$/;
const PEM_MAX = 64 * 1024;

/**
 * Header names the gateway owns on each hop: they are never taken from a gateway
 * record nor passed through from a client, so a client's credentials for the edge
 * never reach an upstream.
 */
export const GATEWAY_INTERNAL_HEADERS = [
  "authorization",
  "proxy-authorization",
  "cookie",
  "host",
  "connection",
  "keep-alive",
  "upgrade",
  "te",
  "trailer",
  "transfer-encoding",
  "content-length",
  "content-type",
  "accept",
  "mcp-session-id",
  "mcp-protocol-version",
  "last-event-id",
] as const;

const isInternalHeader = (name: string) => (GATEWAY_INTERNAL_HEADERS as readonly string[]).includes(name.toLowerCase());

export const GatewayNameSchema = z.string().regex(SLUG, "must be a slug: 1-32 of a-z, 0-9 and -");
export const GatewayIdSchema = z.string().regex(/^[a-f0-9]{16}$/, "must be a 16-hex-digit gateway id");

const headerName = z.string().regex(HEADER_NAME, "must be an HTTP header name");

/** Keys that name an object's prototype machinery: refused, never stored. */
const RESERVED_KEYS = ["__proto__", "constructor", "prototype"] as const;

/**
 * A record that refuses reserved keys. zod skips an own `__proto__` key (JSON.parse makes
 * one) without an issue, so a credential under it would vanish from an accepted request.
 */
function record<K extends z.ZodType<string>, V extends z.ZodType>(key: K, value: V) {
  return z.preprocess((input, ctx) => {
    if (typeof input === "object" && input !== null) {
      for (const k of Object.keys(input)) {
        if ((RESERVED_KEYS as readonly string[]).includes(k)) ctx.addIssue({ code: "custom", path: [k], message: `reserved key name ${k}`, input });
      }
    }
    return input;
  }, z.record(key, value));
}
const headerValue = z.string().max(8192).regex(NO_CONTROL, "must not contain line breaks");
const httpUrl = z
  .string()
  .max(2048)
  .superRefine((text, ctx) => {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      ctx.addIssue({ code: "custom", message: "must be a URL" });
      return;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") ctx.addIssue({ code: "custom", message: "must be an http or https URL" });
    if (url.username || url.password) ctx.addIssue({ code: "custom", message: "must not carry credentials; use auth basic" });
  });

/** The secret-bearing parts of a gateway, generic in how a secret is represented. */
function secretParts<S extends z.ZodType>(secret: S) {
  const secretMap = record(headerName, secret).refine((m) => Object.keys(m).length <= 64, "at most 64 entries");
  const auth = z.discriminatedUnion("type", [
    z.object({ type: z.literal("none") }).strict(),
    z.object({ type: z.literal("bearer"), token: secret }).strict(),
    z.object({ type: z.literal("basic"), username: z.string().min(1).max(256).regex(NO_CONTROL), password: secret }).strict(),
    z
      .object({ type: z.literal("headers"), headers: secretMap })
      .strict()
      .refine((a) => Object.keys(a.headers).every((h) => !isInternalHeader(h) || h.toLowerCase() === "authorization"), {
        message: "auth headers may not set gateway-internal headers (except authorization)",
        path: ["headers"],
      }),
    z
      .object({ type: z.literal("query"), params: record(z.string().min(1).max(128), secret).refine((m) => Object.keys(m).length <= 64, "at most 64 entries") })
      .strict(),
  ]);
  const tls = z
    .object({
      ca: z.string().max(PEM_MAX).optional(),
      cert: z.string().max(PEM_MAX).optional(),
      key: secret.optional(),
      rejectUnauthorized: z.boolean().optional(),
    })
    .strict()
    .refine((t) => !t.cert === !t.key, "cert and key go together (mTLS)");
  const stdio = z
    .object({
      command: z.string().min(1).max(1024),
      args: z.array(z.string().max(4096)).max(256).default([]),
      env: record(z.string().regex(ENV_NAME, "must be an environment variable name"), secret).default({}),
      cwd: z.string().max(1024).optional(),
    })
    .strict();
  return { auth, tls, stdio };
}

/** Every field of a gateway spec; `secret` decides how secrets are carried (clear, sealed or masked). */
function gatewaySpecShape<S extends z.ZodType>(secret: S) {
  const parts = secretParts(secret);
  const fields = {
    name: GatewayNameSchema,
    transport: z.enum(["streamable-http", "sse", "stdio"]),
    url: httpUrl.optional(),
    stdio: parts.stdio.optional(),
    auth: parts.auth,
    headers: record(headerName, headerValue)
      .refine((h) => Object.keys(h).length <= 64, "at most 64 headers")
      .refine((h) => Object.keys(h).every((n) => !isInternalHeader(n)), "static headers may not set gateway-internal headers"),
    tls: parts.tls.optional(),
    passthroughHeaders: z
      .array(headerName.transform((h) => h.toLowerCase()))
      .max(64)
      .refine((hs) => hs.every((h) => !isInternalHeader(h)), "gateway-internal headers cannot be passed through"),
    tags: z.array(z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, "must be 1-64 of A-Z a-z 0-9 _ . : -")).max(32),
    description: z.string().max(1024),
    enabled: z.boolean(),
  };
  return {
    ...fields,
    auth: fields.auth.default({ type: "none" }),
    headers: fields.headers.default({}),
    passthroughHeaders: fields.passthroughHeaders.default([]),
    tags: fields.tags.default([]),
    description: fields.description.default(""),
    enabled: fields.enabled.default(true),
  };
}

/** The same fields with no defaults: what a patch may carry. */
function gatewayPatchShape<S extends z.ZodType>(secret: S) {
  const s = gatewaySpecShape(secret);
  return {
    ...s,
    auth: s.auth.unwrap(),
    headers: s.headers.unwrap(),
    passthroughHeaders: s.passthroughHeaders.unwrap(),
    tags: s.tags.unwrap(),
    description: s.description.unwrap(),
    enabled: s.enabled.unwrap(),
  };
}

function transportRule<T extends { transport: string; url?: string | undefined; stdio?: unknown }>(g: T, ctx: z.RefinementCtx) {
  if (g.transport === "stdio") {
    if (!g.stdio) ctx.addIssue({ code: "custom", path: ["stdio"], message: "required when transport is stdio" });
    if (g.url !== undefined) ctx.addIssue({ code: "custom", path: ["url"], message: "not allowed when transport is stdio" });
  } else {
    if (!g.url) ctx.addIssue({ code: "custom", path: ["url"], message: `required when transport is ${g.transport}` });
    if (g.stdio !== undefined) ctx.addIssue({ code: "custom", path: ["stdio"], message: "only allowed when transport is stdio" });
  }
}

function specSchema<S extends z.ZodType>(secret: S) {
  return z.object(gatewaySpecShape(secret)).strict().superRefine(transportRule);
}

const ClearSecret = z.string().min(1).max(8192);
/** A secret sealed with AES-256-GCM: `enc:v1:<iv>:<ciphertext>:<tag>`, base64url parts. */
export const SealedSecretSchema = z.string().regex(/^enc:v1:[A-Za-z0-9_-]+:[A-Za-z0-9_-]*:[A-Za-z0-9_-]+$/, "must be a sealed secret");
const MaskedSecret = z.literal(MASK);

/** A gateway as an operator writes it (secrets in clear). */
export const GatewaySpecSchema = specSchema(ClearSecret);
export type GatewaySpecInput = z.input<typeof GatewaySpecSchema>;
export type GatewaySpec = z.infer<typeof GatewaySpecSchema>;

/** Every field may be left out of a patch; the merged result is validated as a whole spec. */
export const GatewayPatchSchema = z.object(gatewayPatchShape(ClearSecret)).partial().strict();

const recordMeta = {
  id: GatewayIdSchema,
  createdAt: z.string(),
  updatedAt: z.string(),
};

/** The value of `gw.<gid>` in the gateways bucket: secrets sealed. */
export const GatewayRecordSchema = z
  .object({ ...gatewaySpecShape(SealedSecretSchema), ...recordMeta })
  .strict()
  .superRefine(transportRule);
export type GatewayRecord = z.infer<typeof GatewayRecordSchema>;

/** The value of `name.<name>`: the unique-name index. */
export const GatewayNameIndexSchema = z.object({ id: GatewayIdSchema }).strict();

/** The longest an upstream's error text is kept or shown (a status's `lastError`, a failed connect's reason), cut after its secrets are masked. */
export const UPSTREAM_ERROR_MAX = 300;

/** Live status a poller keeps about a gateway (filled by the poller). */
export const GatewayStatusSchema = z.object({
  health: z.enum(["unknown", "healthy", "unhealthy"]),
  lastSuccessAt: z.string().nullable(),
  lastError: z.string().nullable(),
  consecutiveFailures: z.number().int().nonnegative(),
  tools: z.number().int().nonnegative(),
  prompts: z.number().int().nonnegative(),
  resources: z.number().int().nonnegative(),
  tier: z.enum(["hot", "cold", "unclassified"]),
  nextPollAt: z.string().nullable(),
});
export type GatewayStatus = z.infer<typeof GatewayStatusSchema>;

/** A gateway as replies show it: secrets masked, with its KV revision. */
export const GatewayViewSchema = z.object({
  ...gatewaySpecShape(MaskedSecret),
  ...recordMeta,
  revision: z.number().int().positive(),
  status: GatewayStatusSchema.optional(),
});
export type GatewayView = z.infer<typeof GatewayViewSchema>;

// ---- requests ----

const ref = {
  id: GatewayIdSchema.optional(),
  name: GatewayNameSchema.optional(),
};
const oneRef = <T extends { id?: string | undefined; name?: string | undefined }>(r: T, ctx: z.RefinementCtx) => {
  if (!r.id === !r.name) ctx.addIssue({ code: "custom", path: ["id"], message: "give exactly one of id or name" });
};
const expectedRevision = z.number().int().positive().optional();

export const GatewayAddRequestSchema = GatewaySpecSchema;
export const GatewayGetRequestSchema = z.object(ref).strict().superRefine(oneRef);
export const GatewayUpdateRequestSchema = z
  .object({ ...ref, expectedRevision, patch: GatewayPatchSchema })
  .strict()
  .superRefine(oneRef);
export const GatewayRemoveRequestSchema = z.object({ ...ref, expectedRevision }).strict().superRefine(oneRef);
/** Most gateways one list reply carries (fewer when their views would not fit in one NATS message). */
export const GATEWAY_LIST_MAX = 1_000;
export const GatewayListRequestSchema = z
  .object({
    tag: z.string().max(64).optional(),
    enabled: z.boolean().optional(),
    /** the page after this name (a reply's `next`); gateways come in name order */
    after: GatewayNameSchema.optional(),
    limit: z.number().int().min(1).max(GATEWAY_LIST_MAX).optional(),
  })
  .strict()
  .default({});
export const GatewayRefreshRequestSchema = GatewayGetRequestSchema;

export type GatewayRef = z.infer<typeof GatewayGetRequestSchema>;

/** `next`: there are more; ask again with it as `after`. */
export const GatewayListReplySchema = z.object({ gateways: z.array(GatewayViewSchema), next: GatewayNameSchema.optional() });
export const GatewayRemoveReplySchema = z.object({ id: GatewayIdSchema, name: GatewayNameSchema, removed: z.literal(true) });

// ---- events ----

/** Fields whose change means open upstream sessions must be rebuilt. */
export const CONNECT_FIELDS = ["url", "transport", "auth", "headers", "tls", "stdio"] as const;

const eventBase = { gid: GatewayIdSchema, name: GatewayNameSchema, at: z.string() };
export const GatewayAddedEventSchema = z.object({ type: z.literal("added"), ...eventBase, revision: z.number().int() });
export const GatewayUpdatedEventSchema = z.object({
  type: z.literal("updated"),
  ...eventBase,
  revision: z.number().int(),
  connectChanged: z.boolean(),
  changedFields: z.array(z.string()),
});
export const GatewayRemovedEventSchema = z.object({ type: z.literal("removed"), ...eventBase });
export const GatewayListChangedEventSchema = z.object({
  type: z.literal("list_changed"),
  gid: GatewayIdSchema,
  at: z.string(),
  lists: z.array(z.enum(["tools", "prompts", "resources"])),
});
export const GatewayEventSchema = z.discriminatedUnion("type", [
  GatewayAddedEventSchema,
  GatewayUpdatedEventSchema,
  GatewayRemovedEventSchema,
  GatewayListChangedEventSchema,
]);
export type GatewayEvent = z.infer<typeof GatewayEventSchema>;

// ---- secrets ----

type SecretCarrier = {
  auth: GatewaySpec["auth"];
  tls?: { ca?: string | undefined; cert?: string | undefined; key?: string | undefined; rejectUnauthorized?: boolean | undefined } | undefined;
  stdio?: { command: string; args: string[]; env: Record<string, string>; cwd?: string | undefined } | undefined;
};

const mapValues = (m: Record<string, string>, f: (v: string) => string) =>
  Object.fromEntries(Object.entries(m).map(([k, v]) => [k, f(v)]));

/**
 * Applies `f` to every secret of a gateway: auth token / password / header values /
 * query parameters, the TLS client key and stdio environment values. The one list of
 * what counts as a secret; sealing, opening and masking all go through it.
 */
export function mapGatewaySecrets<T extends SecretCarrier>(g: T, f: (secret: string) => string): T {
  const a = g.auth;
  const auth: GatewaySpec["auth"] =
    a.type === "bearer"
      ? { ...a, token: f(a.token) }
      : a.type === "basic"
        ? { ...a, password: f(a.password) }
        : a.type === "headers"
          ? { ...a, headers: mapValues(a.headers, f) }
          : a.type === "query"
            ? { ...a, params: mapValues(a.params, f) }
            : a;
  const out: T = { ...g, auth };
  if (g.tls?.key !== undefined) out.tls = { ...g.tls, key: f(g.tls.key) };
  if (g.stdio) out.stdio = { ...g.stdio, env: mapValues(g.stdio.env, f) };
  return out;
}

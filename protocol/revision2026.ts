// The MCP revision 2026-07-28 on the wire, as far as mcpgw meets it (SEP-2575: no initialize,
// every request self-contained; SEP-2567: no Mcp-Session-Id, state in explicit handles).
// Names and shapes follow the revision's schema as the Python MCP SDK 2.3.0 speaks it; see
// docs/REVISION-2026-07-28.md for what a client sends and expects, message by message.
import { z } from "zod";
import { LoggingLevelSchema } from "./edge.ts";

/** Revisions without a handshake or session: every request carries its version and capabilities. */
export const STATELESS_PROTOCOL_VERSIONS = ["2026-07-28"] as const;
/** Revisions reached by the `initialize` handshake, served with sessions (`Mcp-Session-Id`). */
export const SESSION_PROTOCOL_VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] as const;
export type StatelessProtocolVersion = (typeof STATELESS_PROTOCOL_VERSIONS)[number];

export const isStatelessVersion = (v: unknown): v is StatelessProtocolVersion => (STATELESS_PROTOCOL_VERSIONS as readonly unknown[]).includes(v);
export const isSessionVersion = (v: unknown): boolean => (SESSION_PROTOCOL_VERSIONS as readonly unknown[]).includes(v);

/** HTTP headers of a 2026-07-28 request (lower case, as Node gives them); Mcp-Name mirrors the named parameter. */
export const HEADER = {
  protocolVersion: "mcp-protocol-version",
  method: "mcp-method",
  name: "mcp-name",
  /** prefix of the headers a tool's `x-mcp-header` arguments are mirrored into */
  paramPrefix: "mcp-param-",
  /**
   * mcpgw's own: the state partition a stateless client asks for (its upstream sessions are
   * keyed by credential and partition; see actors/statelessIdentity.ts). Optional.
   */
  partition: "mcpgw-partition",
} as const;

/** Which request parameter each name-bearing method mirrors into `Mcp-Name`. */
export const NAME_BEARING_METHODS: Readonly<Record<string, "name" | "uri">> = { "tools/call": "name", "prompts/get": "name", "resources/read": "uri" };

/** Reserved `_meta` keys of the revision. */
export const META = {
  protocolVersion: "io.modelcontextprotocol/protocolVersion",
  clientCapabilities: "io.modelcontextprotocol/clientCapabilities",
  clientInfo: "io.modelcontextprotocol/clientInfo",
  logLevel: "io.modelcontextprotocol/logLevel",
  serverInfo: "io.modelcontextprotocol/serverInfo",
  subscriptionId: "io.modelcontextprotocol/subscriptionId",
} as const;

/** The revision's error codes (the spec-defined band from -32020), beside JSON-RPC's own that it uses. */
export const REVISION_ERROR = {
  /** headers disagree with the body, or a required header is missing or malformed */
  headerMismatch: -32020,
  missingRequiredClientCapability: -32021,
  unsupportedProtocolVersion: -32022,
  invalidParams: -32602,
  invalidRequest: -32600,
  methodNotFound: -32601,
  parseError: -32700,
} as const;

/** The HTTP status of an error answer, by JSON-RPC code (the revision's table; others: 200). */
export const ERROR_HTTP_STATUS: Readonly<Record<number, number>> = {
  [-32700]: 400,
  [-32600]: 400,
  [-32602]: 400,
  [-32020]: 400,
  [-32021]: 400,
  [-32022]: 400,
  [-32601]: 404,
};

export const ImplementationSchema = z.looseObject({ name: z.string().max(256), version: z.string().max(256) });

/** The per-request envelope in `params._meta`: version and capabilities required, client info optional. */
export const RequestEnvelopeSchema = z.looseObject({
  [META.protocolVersion]: z.string().max(64),
  [META.clientCapabilities]: z.record(z.string(), z.unknown()),
  [META.clientInfo]: ImplementationSchema.optional(),
  [META.logLevel]: LoggingLevelSchema.optional(),
});
export type RequestEnvelope = z.infer<typeof RequestEnvelopeSchema>;

/** `data` of the unsupported-version error: what the server serves and what was asked. */
export const UnsupportedVersionDataSchema = z.object({ supported: z.array(z.string()), requested: z.string().nullable() });

/** `data` of the missing-capability error. */
export const MissingCapabilityDataSchema = z.object({ requiredCapabilities: z.record(z.string(), z.unknown()) });

/**
 * The revision's cache hints on cacheable results (`server/discover`, the lists,
 * `resources/read`): how long the client may reuse it, and whether across credentials.
 */
export const CacheHintsSchema = z.object({ ttlMs: z.number().int().min(0), cacheScope: z.enum(["private", "public"]) });
export type CacheHints = z.infer<typeof CacheHintsSchema>;

/** Every 2026-07-28 result names its kind; absent means "complete" (a pre-2026 server). */
export const RESULT_TYPE = { complete: "complete", inputRequired: "input_required" } as const;

export const DiscoverResultSchema = z.looseObject({
  supportedVersions: z.array(z.string()).min(1),
  capabilities: z.record(z.string(), z.unknown()),
  instructions: z.string().optional(),
  resultType: z.string(),
  ttlMs: z.number().int().min(0),
  cacheScope: z.enum(["private", "public"]),
  _meta: z.record(z.string(), z.unknown()).optional(),
});
export type DiscoverResult = z.infer<typeof DiscoverResultSchema>;

/**
 * The revision's server→client requests: not sent on a back channel (there is none) but
 * returned as the result of the request that needs them; the client answers by repeating its
 * request with `inputResponses` (by the same keys) and the `requestState` it was given.
 */
export const InputRequiredResultSchema = z.looseObject({
  resultType: z.literal(RESULT_TYPE.inputRequired),
  inputRequests: z.record(z.string(), z.looseObject({ method: z.string(), params: z.record(z.string(), z.unknown()).optional() })).optional(),
  requestState: z.string().optional(),
});

/**
 * What mcpgw seals into the `requestState` of an input-required answer to a stateless client
 * (actors/statelessIdentity.ts signs it, bound to the client's session key): the call still
 * in flight in its upstream session actor, the stream its events go to, the last event the
 * client was given, and the server requests it was asked to answer.
 */
export const PendingCallStateSchema = z
  .object({
    /** the downstream request id the call runs under in its actor */
    call: z.string().min(1).max(128),
    /** the stream the actor publishes the call's events on (`stream.<sid>.<stream>`) */
    stream: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
    /** the uid of the last stream event handed to the client: the next round reads on after it */
    after: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
    /** the server request ids (`serverRequestId`) the client was asked to answer */
    ids: z.array(z.string().max(128)).min(1).max(64),
  })
  .strict();
export type PendingCallState = z.infer<typeof PendingCallStateSchema>;

/** What a `subscriptions/listen` request opts in to: each notification kind is off unless asked for. */
export const SubscriptionFilterSchema = z.looseObject({
  toolsListChanged: z.boolean().optional(),
  promptsListChanged: z.boolean().optional(),
  resourcesListChanged: z.boolean().optional(),
  resourceSubscriptions: z.array(z.string().max(4096)).max(256).optional(),
});
export const SubscriptionsListenParamsSchema = z.looseObject({ notifications: SubscriptionFilterSchema, _meta: RequestEnvelopeSchema });

/** The client methods the revision removed: a stateless client that sends one gets "method not found". */
export const REMOVED_METHODS = ["initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"] as const;

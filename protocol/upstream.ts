import { z } from "zod";
import { ClaimSchema } from "./placement.ts";
import { LoggingLevelSchema } from "./edge.ts";
import { envelopeSchema } from "./envelope.ts";
import { GatewayIdSchema } from "./gateway.ts";
import type { StreamEventKind } from "./subjects.ts";

/** Downstream session ids are subject tokens. */
export const SessionIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, "must be 1-128 of A-Z a-z 0-9 _ -");

/**
 * A JSON object (not an array, not null). The messages of every call check their open-ended
 * parts (params, headers, a result) with this one test instead of a per-key record schema:
 * the same acceptance, at a third of zod's cost on the call path.
 */
const isJsonObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const JsonObjectSchema = z.custom<Record<string, unknown>>(isJsonObject, "expected an object");
const MAX_HEADER_VALUE = 8192;
/** request headers by name, each value a string of at most 8192 characters */
const HeadersSchema = z.custom<Record<string, string>>(
  (v) => isJsonObject(v) && Object.values(v).every((x) => typeof x === "string" && x.length <= MAX_HEADER_VALUE),
  `expected an object of header values, strings of at most ${MAX_HEADER_VALUE} characters`,
);

/** MCP requests an upstream session actor forwards. */
export const UPSTREAM_METHODS = [
  "ping",
  "tools/list",
  "tools/call",
  "prompts/list",
  "prompts/get",
  "resources/list",
  "resources/templates/list",
  "resources/read",
  "completion/complete",
  "resources/subscribe",
  "resources/unsubscribe",
  "tasks/get",
  "tasks/result",
  "tasks/list",
  "tasks/cancel",
] as const;
export const UpstreamMethodSchema = z.enum(UPSTREAM_METHODS);
export type UpstreamMethod = z.infer<typeof UpstreamMethodSchema>;

/** `mcpgw.upstream.<sid>.<gid>.call`: one MCP request, forwarded as it is. */
export const UpstreamCallRequestSchema = z
  .object({
    method: UpstreamMethodSchema,
    params: JsonObjectSchema.optional(),
    /** an id unique within the downstream session; `notifications/cancelled` names it */
    requestId: z.string().min(1).max(128),
    /** the downstream request's headers; the actor forwards only the gateway's passthroughHeaders */
    headers: HeadersSchema.default({}),
    /** per-call timeout; the actor's default applies when absent */
    timeoutMs: z.number().int().positive().max(3_600_000).optional(),
    /**
     * the client's stream this call answers on (`stream.event(sid, stream)`): the actor
     * publishes there what the upstream sends about the call (progress, related requests)
     * and, for resumption, the call's final answer; absent: related messages go to the GET stream
     */
    stream: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/).optional(),
    /**
     * a client without a session record (stateless, 2026-07-28): the capabilities its upstream
     * session declares if this call has to start one (carried into the spawn); absent: `ds.<sid>`'s
     */
    clientCapabilities: z.record(z.string(), z.unknown()).optional(),
    /**
     * who keeps the final answer on `stream` for a client that lost it. Absent: the actor
     * publishes it there. "caller": the caller, which has the answer in hand, publishes it when
     * its client did not receive it; the actor publishes it only when its reply reaches no one
     * (the caller's connection is gone)
     */
    answerCopy: z.literal("caller").optional(),
  })
  .strict();
export type UpstreamCallRequest = z.input<typeof UpstreamCallRequestSchema>;

/**
 * W3C trace context: NATS message headers of a `call` request (and HTTP headers to the
 * upstream), so a call's spans and log lines share the client's trace id on every worker.
 */
export const TRACE_CONTEXT_HEADERS = ["traceparent", "tracestate"] as const;

/** The upstream's JSON-RPC error, unchanged. */
export const JsonRpcErrorSchema = z.object({ code: z.number().int(), message: z.string(), data: z.unknown().optional() });
export type JsonRpcError = z.infer<typeof JsonRpcErrorSchema>;

/** Reply data of `call`: the upstream's result, or its JSON-RPC error. */
export const UpstreamCallReplySchema = z.union([
  z.object({ result: JsonObjectSchema }).strict(),
  z.object({ rpcError: JsonRpcErrorSchema }).strict(),
]);
export type UpstreamCallReply = z.infer<typeof UpstreamCallReplySchema>;
/** The `call` reply envelope: checked in one parse where it crosses a worker, and kept as a call's answer on its stream. */
export const UpstreamCallEnvelopeSchema = envelopeSchema(UpstreamCallReplySchema);

/**
 * A request from an upstream to its client (sampling, elicitation, roots) carries an id that
 * names the upstream session actor that asked: the client's answer, arriving at any worker,
 * goes to `upstream.op(sid, gid, "answer")` without a lookup. `nonce` tells apart successive
 * actors of one (sid, gid); `n` counts requests within one actor.
 */
export function serverRequestId(gid: string, nonce: string, n: number): string {
  return `mcpgw.${gid}.${nonce}.${n}`;
}
const SERVER_REQUEST_ID = /^mcpgw\.([a-f0-9]{16})\.([A-Za-z0-9_-]{1,32})\.(\d{1,15})$/;
export function parseServerRequestId(id: unknown): { gid: string; nonce: string; n: number } | null {
  const m = typeof id === "string" ? SERVER_REQUEST_ID.exec(id) : null;
  return m ? { gid: m[1]!, nonce: m[2]!, n: Number(m[3]) } : null;
}

/** `mcpgw.upstream.<sid>.<gid>.answer`: the client's JSON-RPC response to a server request id. */
export const UpstreamAnswerRequestSchema = z.union([
  z.object({ id: z.string().max(128), result: z.record(z.string(), z.unknown()) }).strict(),
  z.object({ id: z.string().max(128), error: JsonRpcErrorSchema }).strict(),
]);
export type UpstreamAnswerRequest = z.infer<typeof UpstreamAnswerRequestSchema>;

/** `mcpgw.internal.session.<sid>.upstreams`: what a client says to every upstream session it has. */
export const SessionWideMessageSchema = z.discriminatedUnion("method", [
  z.object({ method: z.literal("logging/setLevel"), params: z.object({ level: LoggingLevelSchema }).strict() }).strict(),
  z.object({ method: z.literal("notifications/roots/list_changed"), params: z.record(z.string(), z.unknown()).optional() }).strict(),
]);
export type SessionWideMessage = z.infer<typeof SessionWideMessageSchema>;

/** A JSON-RPC notification or request for the client, as the client receives it. */
export const ClientBoundMessageSchema = z.object({
  jsonrpc: z.literal("2.0"),
  method: z.string().min(1).max(256),
  params: z.record(z.string(), z.unknown()).optional(),
  /** requests only: a `serverRequestId` */
  id: z.string().max(128).optional(),
});
export type ClientBoundMessage = z.infer<typeof ClientBoundMessageSchema>;

/**
 * What travels on `stream.event(sid, streamId)` (and is kept by the stream log): one SSE event
 * of a client's stream. Its SSE id is `<streamId>.<uid>`; a client resuming after that id
 * gets the stored events that came after it on that stream, then the live ones.
 */
export const StreamEventSchema = z.union([
  z
    .object({
      /** unique within its stream (publisher-chosen, e.g. `<actor nonce>-<n>`) */
      uid: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
      /** the gateway whose upstream session sent it */
      gid: GatewayIdSchema.optional(),
      message: ClientBoundMessageSchema,
    })
    .strict(),
  z
    .object({
      uid: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
      gid: GatewayIdSchema.optional(),
      /** the downstream request id (`wireKey`) this answers */
      requestId: z.string().min(1).max(128),
      /** the call's final answer, the `call` reply envelope: the POST stream ends with it */
      reply: UpstreamCallEnvelopeSchema,
    })
    .strict(),
]);
export type StreamEvent = z.infer<typeof StreamEventSchema>;

/** The subject kind of a stream event (protocol/subjects.ts STREAM_EVENT_KINDS): a call's final answer, or a message. */
export function streamEventKind(event: StreamEvent): StreamEventKind {
  return "requestId" in event ? "answer" : "message";
}

const STREAM_TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** The SSE id of a stream event: `<streamId>.<uid>`; a client's `Last-Event-ID` names where it resumes. */
export function streamEventId(streamId: string, uid: string): string {
  return `${streamId}.${uid}`;
}
export function parseStreamEventId(id: unknown): { streamId: string; uid: string } | null {
  if (typeof id !== "string") return null;
  const [streamId, uid, ...rest] = id.split(".");
  return rest.length === 0 && STREAM_TOKEN.test(streamId ?? "") && STREAM_TOKEN.test(uid ?? "") ? { streamId: streamId!, uid: uid! } : null;
}

/**
 * The uid of a stream's priming event (the first SSE event, empty data): it is never stored,
 * so resuming after it replays every stored event of the stream.
 */
export const PRIMING_UID = "0";

/**
 * `Nats-Msg-Id` of a stream event: every publisher sets it, and it names the event's own
 * stream and uid. The stream log's duplicate window spans its retention, so a copy of a stored
 * event delivered back into `stream.>` is dropped; whatever else lands there (a JetStream API
 * answer, another stream's consumer) has no matching id and is never replayed.
 */
export function streamEventMsgId(sid: string, streamId: string, uid: string): string {
  return `${sid}.${streamId}.${uid}`;
}

/** `mcpgw.upstream.<sid>.<gid>.notify`: a client notification for the upstream (cancellation). */
export const UpstreamNotifyRequestSchema = z
  .object({
    method: z.literal("notifications/cancelled"),
    params: z.object({ requestId: z.string().min(1).max(128), reason: z.string().max(1024).optional() }).strict(),
  })
  .strict();

/**
 * `mcpgw.internal.upstream.spawn` (queue group): host the actor for a key. A new actor is
 * answered for once its upstream session is connected; a failed connect is answered with
 * `unavailable` and its reason.
 */
export const SpawnRequestSchema = z
  .object({
    sid: SessionIdSchema,
    gid: GatewayIdSchema,
    /** headers of the downstream request that needs the actor: its initialize carries their passthrough subset */
    headers: z.record(z.string(), z.string().max(8192)).optional(),
    /** what the new session declares upstream when its client has no session record (see the call's `clientCapabilities`) */
    clientCapabilities: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();
export const SpawnReplySchema = z.object({ worker: z.string(), created: z.boolean() });

/** Value of `up.<sid>.<gid>` in the sessions bucket: who hosts the actor (one kind of placement claim). */
export const UpstreamClaimSchema = ClaimSchema;

export const UpstreamSessionInfoSchema = z.object({
  sid: SessionIdSchema,
  gid: GatewayIdSchema,
  gatewayName: z.string(),
  state: z.string(),
  worker: z.string(),
  createdAt: z.string(),
  lastUsedAt: z.string().nullable(),
  useCount: z.number().int().nonnegative(),
  ageMs: z.number().int().nonnegative(),
});
export type UpstreamSessionInfo = z.infer<typeof UpstreamSessionInfoSchema>;

/** `mcpgw.admin.session.list` → every live actor in the cluster. */
export const SessionListRequestSchema = z.object({ sid: SessionIdSchema.optional(), gid: GatewayIdSchema.optional() }).strict().default({});
export const SessionListReplySchema = z.object({ workers: z.array(z.string()), sessions: z.array(UpstreamSessionInfoSchema) });

/** `mcpgw.admin.session.evict`: by downstream session id and/or gateway id (at least one). */
export const SessionEvictRequestSchema = z
  .object({ sid: SessionIdSchema.optional(), gid: GatewayIdSchema.optional() })
  .strict()
  .refine((r) => r.sid !== undefined || r.gid !== undefined, { message: "give sid, gid or both", path: ["sid"] });
export const SessionEvictReplySchema = z.object({ evicted: z.number().int().nonnegative(), workers: z.array(z.string()) });

/** `mcpgw.internal.upstream.snapshot` (every worker answers): a worker's live actors. */
export const WorkerSnapshotRequestSchema = z.object({ sid: SessionIdSchema.optional(), gid: GatewayIdSchema.optional() }).strict().default({});
export const WorkerSnapshotReplySchema = z.object({ worker: z.string(), sessions: z.array(UpstreamSessionInfoSchema) });

/** `mcpgw.internal.upstream.evict` (every worker answers): close matching actors; `all` for a drain. */
export const WorkerEvictRequestSchema = z
  .object({ sid: SessionIdSchema.optional(), gid: GatewayIdSchema.optional(), all: z.literal(true).optional(), reason: z.string().max(256).optional() })
  .strict()
  .refine((r) => r.all === true || r.sid !== undefined || r.gid !== undefined, { message: "give sid, gid or all", path: ["sid"] });
export const WorkerEvictReplySchema = z.object({ worker: z.string(), evicted: z.number().int().nonnegative() });

/** `mcpgw.admin.drain`: close every upstream session on every worker (credential / TLS reload). */
export const DrainRequestSchema = z.object({ reason: z.string().max(256).optional() }).strict().default({});
export const DrainReplySchema = SessionEvictReplySchema;

/** `mcpgw.evt.session.<sid>.closed` */
export const SessionClosedEventSchema = z.object({ sid: SessionIdSchema, at: z.string(), reason: z.string() });

import { hash } from "node:crypto";
import { z } from "zod";
import { GatewayIdSchema } from "./gateway.ts";

/**
 * A client's `Mcp-Session-Id` is a bearer secret: whoever presents it (with the owner's
 * credential) continues the session. Only the edge sees it. Everything behind the edge
 * (KV keys, subjects, events, logs, admin listings) names the session by its key, and
 * calls that key `sid`: the first 128 bits of the id's SHA-256, in hex.
 */
export function sessionKey(clientSessionId: string): string {
  // the one-shot hash: no Hash object per request (every request of a session computes its key)
  return hash("sha256", clientSessionId, "hex").slice(0, 32);
}

/** MCP logging levels (RFC 5424 severities), least severe first. */
export const LOGGING_LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"] as const;
export const LoggingLevelSchema = z.enum(LOGGING_LEVELS);
export type LoggingLevel = z.infer<typeof LoggingLevelSchema>;

export const SessionKeySchema = z.string().regex(/^[0-9a-f]{32}$/, "must be a session key: 32 hex digits");

/**
 * Value of `ds.<sid>` in the sessions bucket: what any worker needs to serve a request of
 * a downstream session it has never seen (no sticky load balancing).
 */
export const DownstreamSessionSchema = z.object({
  /** the session key (`sessionKey` of the client's id), never the id itself */
  sid: SessionKeySchema,
  /** keyed digest (HMAC-SHA-256, hex) of the credential that created the session: only it may use the session */
  owner: z.string().regex(/^[0-9a-f]{64}$/),
  /** null: the federated endpoint `/mcp`; a gateway id: that gateway's `/gateways/<name>/mcp` */
  gid: GatewayIdSchema.nullable(),
  protocolVersion: z.string(),
  clientInfo: z.looseObject({ name: z.string(), version: z.string() }),
  capabilities: z.record(z.string(), z.unknown()),
  createdAt: z.string(),
  lastSeenAt: z.string(),
  /** the client's `logging/setLevel`: every upstream session of this client gets it, the ones opened later too */
  logLevel: LoggingLevelSchema.optional(),
  /** the client's `resources/subscribe`, by gateway (URIs as that upstream knows them): re-established when an upstream session is recreated */
  subscriptions: z.record(GatewayIdSchema, z.array(z.string().max(4096)).max(256)).optional(),
  /**
   * lists an upstream changed for this client session alone (a `list_changed` on its upstream
   * session): served from that upstream session, not the shared catalog, until it closes
   */
  views: z.record(GatewayIdSchema, z.array(z.enum(["tools", "prompts", "resources"]))).optional(),
});
export type DownstreamSession = z.infer<typeof DownstreamSessionSchema>;

/** `mcpgw.internal.edge.<sid>.cancel`: a client cancelled a request that may be in flight on another worker. */
export const EdgeCancelSchema = z.object({ requestId: z.string().min(1).max(128), reason: z.string().max(1024).optional() });

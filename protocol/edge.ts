import { z } from "zod";
import { GatewayIdSchema } from "./gateway.ts";
import { SessionIdSchema } from "./upstream.ts";

/**
 * Value of `ds.<sid>` in the sessions bucket: what any worker needs to serve a request of
 * a downstream session it has never seen (no sticky load balancing).
 */
export const DownstreamSessionSchema = z.object({
  sid: SessionIdSchema,
  /** null: the federated endpoint `/mcp`; a gateway id: that gateway's `/gateways/<name>/mcp` */
  gid: GatewayIdSchema.nullable(),
  protocolVersion: z.string(),
  clientInfo: z.looseObject({ name: z.string(), version: z.string() }),
  capabilities: z.record(z.string(), z.unknown()),
  createdAt: z.string(),
  lastSeenAt: z.string(),
});
export type DownstreamSession = z.infer<typeof DownstreamSessionSchema>;

/** `mcpgw.internal.edge.<sid>.cancel`: a client cancelled a request that may be in flight on another worker. */
export const EdgeCancelSchema = z.object({ requestId: z.string().min(1).max(128), reason: z.string().max(1024).optional() });

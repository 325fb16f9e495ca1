import { z } from "zod";
import { ClaimSchema } from "./placement.ts";
import { GATEWAY_LIST_MAX, GatewayIdSchema, GatewayStatusSchema } from "./gateway.ts";

/** Value of `poll.<gid>.health` / `poll.<gid>.discovery`: written only after a poll succeeded. */
export const PollStampSchema = z.object({
  at: z.string(),
  /** when the writer plans the next poll of this kind */
  nextAt: z.string().nullable(),
  worker: z.string(),
});
export type PollStamp = z.infer<typeof PollStampSchema>;

/** Value of `owner.<gid>`: which worker polls a gateway; its KV revision is the claim (one kind of placement claim). */
export const PollOwnerSchema = ClaimSchema;

/**
 * Value of `worker.<id>`: a poller heartbeat. Liveness is judged by each reader on its own
 * monotonic clock from seeing the revision change, never by comparing `at` across machines.
 */
export const PollerHeartbeatSchema = z.object({ worker: z.string(), at: z.string() });

/** A request to a gateway's poller at its own address (`mcpgw.poller.<gid>.<op>`): no fields. */
export const PollerRequestSchema = z.object({}).strict();

/** Reply of `mcpgw.poller.<gid>.status`: which worker polls the gateway and the poller's live status. */
export const PollerStatusReplySchema = z.object({ gid: GatewayIdSchema, worker: z.string(), status: GatewayStatusSchema });
export type PollerStatusReply = z.infer<typeof PollerStatusReplySchema>;

/** `mcpgw.internal.poller.statuses`, asked of every worker at once: the live statuses of these gateways, from whoever polls them. */
export const PollerStatusesRequestSchema = z.object({ gids: z.array(GatewayIdSchema).max(GATEWAY_LIST_MAX) }).strict();
/** One worker's answer: the statuses of the asked gateways it polls. */
export const PollerStatusesReplySchema = z.object({ worker: z.string(), statuses: z.record(GatewayIdSchema, GatewayStatusSchema) });
export type PollerStatusesReply = z.infer<typeof PollerStatusesReplySchema>;

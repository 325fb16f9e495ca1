import { z } from "zod";

/** `mcpgw.admin.status` request: no fields. */
export const StatusRequestSchema = z.object({}).strict().default({});

export const WorkerStatusSchema = z.object({
  worker: z.string(),
  /** gateways whose poller this worker owns */
  pollers: z.number().int().nonnegative(),
  /** upstream session actors it hosts */
  upstreamSessions: z.number().int().nonnegative(),
  /** holds the classifier lease */
  leader: z.boolean(),
});

/** `mcpgw.admin.status` reply: the cluster at a glance, from KV and the workers that answer. */
export const StatusReplySchema = z.object({
  workers: z.array(WorkerStatusSchema),
  gateways: z.object({
    total: z.number().int().nonnegative(),
    enabled: z.number().int().nonnegative(),
    healthy: z.number().int().nonnegative(),
    unhealthy: z.number().int().nonnegative(),
    /** enabled, but no poller has reported on it yet */
    unknown: z.number().int().nonnegative(),
  }),
  clientSessions: z.number().int().nonnegative(),
  leader: z.object({ holder: z.string(), revision: z.number().int() }).nullable(),
  classification: z.object({ valid: z.boolean(), hot: z.number().int(), cold: z.number().int(), computedAt: z.string() }).nullable(),
});
export type StatusReply = z.infer<typeof StatusReplySchema>;

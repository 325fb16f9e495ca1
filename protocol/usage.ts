import { z } from "zod";
import { GatewayIdSchema } from "./gateway.ts";

/** One gateway's usage as one worker saw it since its previous report. */
export const GatewayUsageSchema = z.object({
  gid: GatewayIdSchema,
  /** epoch ms of the latest call through any actor of this worker */
  lastUsedAt: z.number().int().nonnegative().nullable(),
  /** calls since the previous report */
  uses: z.number().int().nonnegative(),
  /** live upstream session actors on this worker now */
  liveSessions: z.number().int().nonnegative(),
});
export type GatewayUsage = z.infer<typeof GatewayUsageSchema>;

/** `mcpgw.evt.usage`: a worker's batched usage report. */
export const UsageReportSchema = z.object({ worker: z.string(), at: z.number().int(), gateways: z.array(GatewayUsageSchema) });
export type UsageReport = z.infer<typeof UsageReportSchema>;

/**
 * Value of `usage.<gid>` in the state bucket: cluster-wide usage kept by the classifier leader,
 * so a worker that takes over does not classify from an empty picture.
 */
export const StoredUsageSchema = z.object({
  /** epoch ms of the latest call seen anywhere in the cluster */
  lastUsedAt: z.number().int().nonnegative().nullable(),
  /** cumulative calls (approximate across leader changes: never double counted, may miss one interval) */
  uses: z.number().int().nonnegative(),
});
export type StoredUsage = z.infer<typeof StoredUsageSchema>;

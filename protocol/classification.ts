import { z } from "zod";
import { GatewayIdSchema } from "./gateway.ts";

export const TierSchema = z.enum(["hot", "cold", "unclassified"]);
export type Tier = z.infer<typeof TierSchema>;

/** Value of `leader.classifier`: for people reading it; correctness rests on its revision only. */
export const LeaderLeaseSchema = z.object({ holder: z.string(), since: z.string(), renewedAt: z.string(), ttlMs: z.number().int().positive() });
export type LeaderLease = z.infer<typeof LeaderLeaseSchema>;

/** Value of `classification` in the state bucket. */
export const ClassificationSchema = z.object({
  hot: z.array(GatewayIdSchema),
  cold: z.array(GatewayIdSchema),
  computedAt: z.string(),
  /** readers treat the classification as absent after this instant */
  validUntil: z.string(),
  leader: z.string(),
  leaseRevision: z.number().int().positive(),
  meta: z.object({
    total: z.number().int().nonnegative(),
    hotCap: z.number().int().nonnegative(),
    hotActual: z.number().int().nonnegative(),
    eligible: z.number().int().nonnegative(),
    belowCapReason: z.string().nullable(),
    /** how long the leader took to classify, in ms (its in-memory picture and one KV read) */
    computeMs: z.number().nonnegative().optional(),
  }),
});
export type Classification = z.infer<typeof ClassificationSchema>;

/** Reply of `mcpgw.admin.classification.get`. */
export const ClassificationGetReplySchema = z.object({
  leader: LeaderLeaseSchema.extend({ revision: z.number().int() }).nullable(),
  classification: ClassificationSchema.nullable(),
  valid: z.boolean(),
});

/** Request of `mcpgw.admin.classification.get`: no fields. */
export const ClassificationGetRequestSchema = z.object({}).strict();
export type ClassificationGetReply = z.infer<typeof ClassificationGetReplySchema>;

/**
 * How far a classification's `computedAt` may lie ahead of the reader's clock and still be
 * trusted: covers ordinary skew between machines, while a leader whose clock runs further
 * ahead can stretch its result's validity by at most this much (seconds, against a window of
 * two classification periods).
 */
export const CLASSIFICATION_CLOCK_SKEW_MS = 5_000;

/**
 * Whether readers may act on a classification now: not expired, and not computed in the
 * future beyond the skew allowance (like a future poll stamp, its window cannot be trusted).
 * Everything else is "unclassified": fail open.
 */
export function isClassificationValid(c: Pick<Classification, "computedAt" | "validUntil">, nowMs: number): boolean {
  return Date.parse(c.computedAt) <= nowMs + CLASSIFICATION_CLOCK_SKEW_MS && Date.parse(c.validUntil) > nowMs;
}

import { z } from "zod";

/** Value of `poll.<gid>.health` / `poll.<gid>.discovery`: written only after a poll succeeded. */
export const PollStampSchema = z.object({
  at: z.string(),
  /** when the writer plans the next poll of this kind */
  nextAt: z.string().nullable(),
  worker: z.string(),
});
export type PollStamp = z.infer<typeof PollStampSchema>;

/** Value of `owner.<gid>`: which worker polls a gateway; its KV revision is the claim. */
export const PollOwnerSchema = z.object({ worker: z.string(), since: z.string() });

/**
 * Value of `worker.<id>`: a poller heartbeat. Liveness is judged by each reader on its own
 * monotonic clock from seeing the revision change, never by comparing `at` across machines.
 */
export const PollerHeartbeatSchema = z.object({ worker: z.string(), at: z.string() });

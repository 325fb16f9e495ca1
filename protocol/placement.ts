import { z } from "zod";

/**
 * Value of a claim on a keyed actor (`owner.<gid>` for a gateway's poller, `up.<sid>.<gid>`
 * for an upstream session): which worker hosts it. Its KV revision is the fencing token.
 */
export const ClaimSchema = z.object({ worker: z.string(), since: z.string() });
export type Claim = z.infer<typeof ClaimSchema>;

import { getLive, listKeys, parseEntry } from "../actors/kvStore.ts";
import { ClassificationSchema, isClassificationValid, LeaderLeaseSchema } from "../protocol/classification.ts";
import { parseRequest } from "../protocol/envelope.ts";
import { GatewayStatusSchema, type GatewayStatus } from "../protocol/gateway.ts";
import { PollerStatusesReplySchema, PollOwnerSchema } from "../protocol/poller.ts";
import { StatusRequestSchema, type StatusReply } from "../protocol/status.ts";
import { KEYS } from "../protocol/subjects.ts";
import { WorkerSnapshotReplySchema } from "../protocol/upstream.ts";
import { gather } from "./bus.ts";
import { readStoredStatus } from "./pollerEffects.ts";
import type { WorkerContext } from "./worker.ts";

/**
 * `mcpgw.admin.status`: the cluster at a glance. Workers are the ones that answer the
 * upstream snapshot fan-out now; everything else is read from KV.
 */
export async function clusterStatus(ctx: Pick<WorkerContext, "nc" | "s" | "stores" | "registry">): Promise<StatusReply> {
  const { nc, s, stores, registry } = ctx;
  const [snapshots, records, ownerKeys, sessionKeys, leaseEntry, classificationEntry] = await Promise.all([
    gather(nc, s.upstream.snapshot, {}, WorkerSnapshotReplySchema),
    registry.records(),
    listKeys(stores.state, `${KEYS.pollOwnerPrefix}*`),
    listKeys(stores.sessions, `${KEYS.downstreamSessionPrefix}*`),
    getLive(stores.state, KEYS.leaderClassifier),
    getLive(stores.state, KEYS.classification),
  ]);
  const owners = await Promise.all(ownerKeys.map(async (k) => parseEntry(PollOwnerSchema, await getLive(stores.state, k))?.worker));
  const enabled = records.filter((r) => r.record.enabled);
  const health = await Promise.all(enabled.map(async (r) => parseEntry(GatewayStatusSchema, await getLive(stores.state, KEYS.gatewayStatus(r.record.id)))?.health ?? "unknown"));
  const lease = parseEntry(LeaderLeaseSchema, leaseEntry);
  const classification = parseEntry(ClassificationSchema, classificationEntry);
  return {
    workers: snapshots
      .map((w) => ({
        worker: w.worker,
        pollers: owners.filter((o) => o === w.worker).length,
        upstreamSessions: w.sessions.length,
        leader: lease?.holder === w.worker,
      }))
      .sort((a, b) => a.worker.localeCompare(b.worker)),
    gateways: {
      total: records.length,
      enabled: enabled.length,
      healthy: health.filter((h) => h === "healthy").length,
      unhealthy: health.filter((h) => h === "unhealthy").length,
      unknown: health.filter((h) => h === "unknown").length,
    },
    clientSessions: sessionKeys.length,
    leader: lease && leaseEntry ? { holder: lease.holder, revision: leaseEntry.revision } : null,
    classification: classification
      ? { valid: isClassificationValid(classification, Date.now()), hot: classification.hot.length, cold: classification.cold.length, computedAt: classification.computedAt }
      : null,
  };
}

/**
 * The statuses of a list of gateways (a `gateway list` page): asked of every worker at once, each
 * answering for the pollers it runs; the stored status of the others (disabled, moving, or their
 * worker did not answer in time).
 */
export async function gatewayStatuses(ctx: Pick<WorkerContext, "nc" | "s" | "stores">, gids: string[]): Promise<Map<string, GatewayStatus>> {
  const out = new Map<string, GatewayStatus>();
  if (gids.length === 0) return out;
  for (const reply of await gather(ctx.nc, ctx.s.poller.statuses, { gids }, PollerStatusesReplySchema)) {
    for (const [gid, status] of Object.entries(reply.statuses)) out.set(gid, status);
  }
  const missing = gids.filter((gid) => !out.has(gid));
  await Promise.all(
    missing.map(async (gid) => {
      const status = await readStoredStatus(ctx.stores.state, gid).catch(() => undefined);
      if (status) out.set(gid, status);
    }),
  );
  return out;
}

export function serveStatus(ctx: WorkerContext): void {
  ctx.admin.endpoint(ctx.s.admin.status, (payload) => {
    parseRequest(StatusRequestSchema, payload, "status request");
    return clusterStatus(ctx);
  });
}

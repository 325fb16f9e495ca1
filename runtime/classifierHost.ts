// Hosts the classifier on every worker: the leader-lease machine with KV effects, the
// classification as the leader's fenced duty, cluster-wide usage from `evt.usage`, and
// `admin.classification.get` (answered from KV by any worker).
import { performance } from "node:perf_hooks";
import { createActor, fromCallback, fromPromise, waitFor } from "xstate";
import { classify, type ClassificationResult } from "../actors/classification.ts";
import { encodeValue, getLive, isCasConflict, listKeys, parseEntry } from "../actors/kvStore.ts";
import { leaderLeaseMachine, type LeaseEvent } from "../actors/leaderLease.machine.ts";
import type { Registry } from "../actors/registry.ts";
import { UsageAggregate } from "../actors/usageAggregate.ts";
import { parseRequest } from "../protocol/envelope.ts";
import { GatewayEventSchema } from "../protocol/gateway.ts";
import {
  ClassificationGetRequestSchema,
  ClassificationSchema,
  isClassificationValid,
  LeaderLeaseSchema,
  type Classification,
  type ClassificationGetReply,
  type LeaderLease,
} from "../protocol/classification.ts";
import { KEYS } from "../protocol/subjects.ts";
import { StoredUsageSchema, UsageReportSchema, type StoredUsage } from "../protocol/usage.ts";
import { decodeJson, listen } from "./bus.ts";
import { followEvents } from "./events.ts";
import { followKv, type KvFollower } from "./kvWatch.ts";
import type { Stores } from "./nats.ts";
import type { Hosted, WorkerContext } from "./worker.ts";

export type ClassifierStats = {
  leader: boolean;
  leaseRevision: number;
  classificationsWritten: number;
  /** lease or classification writes refused by compare-and-swap: this worker had been deposed */
  staleWritesRejected: number;
};

export type ClassifierHost = Hosted & { stats(): ClassifierStats };

type Prepared = { readRevision: number; result: ClassificationResult; computedAt: number; known: string[]; workersReporting: number };

/** KV round trips in flight at once when usage is loaded or kept */
const USAGE_LOAD_CONCURRENCY = 64;

/**
 * The lease and classification effects of one worker, against the state bucket. Exported
 * apart from the host so a test can interleave two workers' steps on a real server.
 */
export function createClassifierEffects(
  ctx: Pick<WorkerContext, "config" | "log"> & { stores: Pick<Stores, "state">; registry: Pick<Registry, "records"> },
  usage: UsageAggregate,
) {
  const { config, registry, log } = ctx;
  const kv = ctx.stores.state;
  const me = config.workerId;
  const ttlMs = config.intervals.leaderTtl;
  const intervalMs = config.intervals.classification;
  const stats: ClassifierStats = { leader: false, leaseRevision: 0, classificationsWritten: 0, staleWritesRejected: 0 };

  /** what this leader last wrote to `usage.<gid>`; null until loaded at the start of a term */
  let persisted: Map<string, StoredUsage> | null = null;
  let since = "";

  const leaseValue = (sinceIso: string): string =>
    encodeValue({ holder: me, since: sinceIso, renewedAt: new Date().toISOString(), ttlMs } satisfies LeaderLease);

  /** a compare-and-swap write; null when the revision moved */
  async function cas(write: () => Promise<number>): Promise<number | null> {
    try {
      return await write();
    } catch (err) {
      if (isCasConflict(err)) return null;
      throw err;
    }
  }

  function rejected(what: string, revision: number, why = "another worker holds the classifier lease"): void {
    stats.staleWritesRejected++;
    log.warn({ revision, rejected: stats.staleWritesRejected }, `stale ${what} rejected: ${why}`);
  }

  async function loadStoredUsage(): Promise<Map<string, StoredUsage>> {
    const loaded = new Map<string, StoredUsage>();
    const keys = await listKeys(kv, `${KEYS.usagePrefix}*`);
    for (let i = 0; i < keys.length; i += USAGE_LOAD_CONCURRENCY) {
      const entries = await Promise.all(keys.slice(i, i + USAGE_LOAD_CONCURRENCY).map((k) => getLive(kv, k)));
      for (const e of entries) {
        const v = parseEntry(StoredUsageSchema, e);
        if (!e || !v) continue;
        const gid = e.key.slice(KEYS.usagePrefix.length);
        usage.adopt(gid, v);
        loaded.set(gid, v);
      }
    }
    return loaded;
  }

  /**
   * Keeps `usage.<gid>` current for known gateways; a read-merge-CAS, so a late writer never
   * lowers it. Runs while the lease is not being renewed, so gateways go in parallel batches
   * (one after another, a thousand used gateways cost two thousand round trips of the term).
   */
  async function persistUsage(known: string[]): Promise<void> {
    const last = persisted;
    if (!last) return;
    const changed = known.filter((gid) => {
      const mine = usage.stored(gid);
      const was = last.get(gid);
      return mine && !(was && was.lastUsedAt === mine.lastUsedAt && was.uses === mine.uses);
    });
    const persistOne = async (gid: string) => {
      const e = await kv.get(KEYS.usage(gid));
      const theirs = e?.operation === "PUT" ? parseEntry(StoredUsageSchema, e) : null;
      if (theirs) usage.adopt(gid, theirs);
      const merged = usage.stored(gid)!;
      if ((await cas(() => kv.put(KEYS.usage(gid), encodeValue(merged), { previousSeq: e?.revision ?? 0 }))) !== null) last.set(gid, merged);
    };
    for (let i = 0; i < changed.length; i += USAGE_LOAD_CONCURRENCY) await Promise.all(changed.slice(i, i + USAGE_LOAD_CONCURRENCY).map(persistOne));
  }

  return {
    stats,
    /** a new term: reload what the previous leader kept in KV before the next classification */
    newTerm(): void {
      persisted = null;
    },
    actors: {
    watchLease: fromCallback<LeaseEvent>(({ sendBack }) => {
      let newest = -1;
      const seen = (revision: number, live: boolean) => {
        if (revision <= newest) return;
        newest = revision;
        sendBack({ type: "LEASE.SEEN", revision, live });
      };
      let follower: KvFollower | undefined;
      let stopped = false;
      void (async () => {
        // opened again if it ends: a follower that stopped hearing the lease would never take over
        follower = await followKv(kv, KEYS.leaderClassifier, (w) => seen(w.revision, w.operation === "PUT"), log, "classifier lease watch");
        if (stopped) return follower.stop();
        // a watch says nothing about a key that never existed: ask once
        const e = await kv.get(KEYS.leaderClassifier);
        if (!e) seen(0, false);
      })().catch((err) => log.warn({ err }, "watch of the classifier lease failed"));
      return () => {
        stopped = true;
        follower?.stop();
      };
    }),
    fence: fromPromise<boolean, { revision: number }>(async ({ input }) => {
      const lease = await kv.get(KEYS.leaderClassifier);
      if ((lease?.revision ?? 0) !== input.revision) return false;
      const c = await kv.get(KEYS.classification);
      // Bump the classification's revision without changing what readers see: any commit
      // prepared by the current holder before this point can no longer succeed.
      const bumped = await cas(async () => {
        if (!c) await kv.delete(KEYS.classification); // nothing to lose; the client sends no CAS header for revision 0
        else if (c.operation !== "PUT") await kv.delete(KEYS.classification, { previousSeq: c.revision });
        else return kv.put(KEYS.classification, c.value, { previousSeq: c.revision });
        return 0;
      });
      return bumped !== null;
    }),
    acquire: fromPromise<number | null, { revision: number }>(async ({ input }) => {
      const at = new Date().toISOString();
      const revision = await cas(() => kv.put(KEYS.leaderClassifier, leaseValue(at), { previousSeq: input.revision }));
      if (revision !== null) since = at;
      return revision;
    }),
    renew: fromPromise<number | null, { revision: number }>(async ({ input }) => {
      const revision = await cas(() => kv.put(KEYS.leaderClassifier, leaseValue(since), { previousSeq: input.revision }));
      if (revision === null) rejected("lease renewal", input.revision);
      return revision;
    }),
    release: fromPromise<void, { revision: number }>(async ({ input }) => {
      if (input.revision === 0) return;
      const del = (revision: number) =>
        cas(async () => {
          await kv.delete(KEYS.leaderClassifier, { previousSeq: revision });
          return revision;
        });
      let done = await del(input.revision);
      if (done === null) {
        // a renewal still in flight when we decided to let go may have moved the revision;
        // only this worker writes its own id as holder, so that revision is still ours
        const e = await getLive(kv, KEYS.leaderClassifier);
        if (e && parseEntry(LeaderLeaseSchema, e)?.holder === me) done = await del(e.revision);
      }
      if (done === null) rejected("lease release", input.revision);
      else log.info({ revision: done }, "classifier lease released");
    }),
    prepareDuty: fromPromise<unknown, void>(async (): Promise<Prepared> => {
      // read first: the renewal that follows is what fences the write at this revision
      const readRevision = (await kv.get(KEYS.classification))?.revision ?? 0;
      persisted ??= await loadStoredUsage();
      const records = await registry.records();
      const known = records.map((r) => r.record.id);
      // a usage report sent just after a gateway's removal re-adds its totals after the removed event
      usage.keepOnly(new Set(known));
      const enabled = records.filter((r) => r.record.enabled).map((r) => r.record.id);
      const snapshot = usage.snapshot(performance.now());
      const result = classify(enabled, (gid) => snapshot.get(gid));
      return { readRevision, result, computedAt: Date.now(), known, workersReporting: usage.workerCount() };
    }),
    commitDuty: fromPromise<boolean, { prepared: unknown; revision: number }>(async ({ input }) => {
      const p = input.prepared as Prepared;
      const value: Classification = {
        ...p.result,
        computedAt: new Date(p.computedAt).toISOString(),
        validUntil: new Date(p.computedAt + 2 * intervalMs).toISOString(),
        leader: me,
        leaseRevision: input.revision,
      };
      const revision = await cas(() => kv.put(KEYS.classification, encodeValue(value), { previousSeq: p.readRevision }));
      if (revision === null) {
        rejected("classification write", p.readRevision, "the key changed after it was read (a takeover's fence)");
        return false;
      }
      stats.classificationsWritten++;
      log.info({ revision, leaseRevision: input.revision, workersReporting: p.workersReporting, ...value.meta }, "classification written");
      await persistUsage(p.known);
      return true;
    }),
    },
  };
}

export async function startClassifierHost(ctx: WorkerContext): Promise<ClassifierHost> {
  const { config, nc, s, log } = ctx;
  const kv = ctx.stores.state;
  const reportWindowMs = config.intervals.usageReport;

  // Every worker keeps the picture, so whoever takes over already has it.
  const usage = new UsageAggregate(3 * reportWindowMs);
  const usageSub = listen(
    nc,
    s.evt.usage,
    (msg) => {
      try {
        const report = UsageReportSchema.safeParse(decodeJson(msg.data));
        if (report.success) usage.ingest(report.data, performance.now());
        else log.debug({ issues: report.error.issues.length }, "ignored a malformed usage report");
      } catch {
        log.debug("ignored a usage report that is not JSON");
      }
    },
    { log, refusals: ctx.refusals, expect: "message" },
  );
  // every worker forgets a removed gateway's totals, so whoever leads next does not carry them
  const events = await followEvents(
    ctx.stores.js,
    ctx.stores.streamName,
    [s.evt.gatewayAll],
    (subject, payload) => {
      const ev = GatewayEventSchema.safeParse(payload);
      if (!ev.success) return void log.warn({ subject }, "ignoring a malformed gateway event");
      if (ev.data.type === "removed") usage.forget(ev.data.gid);
    },
    { log, refusals: ctx.refusals },
  );
  const effects = createClassifierEffects(ctx, usage);
  const stats = effects.stats;
  const machine = leaderLeaseMachine.provide({ actors: effects.actors });

  const actor = createActor(machine, {
    input: { ttlMs: config.intervals.leaderTtl, dutyIntervalMs: config.intervals.classification, now: () => performance.now(), firstDutyAt: performance.now() + reportWindowMs },
  });
  actor.on("leader", (e) => {
    Object.assign(stats, { leader: true, leaseRevision: e.revision });
    ctx.metrics.classifierLeader.set(1);
    effects.newTerm();
    log.info({ revision: e.revision }, "classifier lease acquired: this worker classifies");
  });
  actor.on("steppedDown", (e) => {
    Object.assign(stats, { leader: false, leaseRevision: 0 });
    ctx.metrics.classifierLeader.set(0);
    log.warn({ revision: e.revision, reason: e.reason }, "classifier stepped down");
  });
  actor.start();

  ctx.admin.endpoint(
    s.admin.classificationGet,
    async (payload): Promise<ClassificationGetReply> => {
      parseRequest(ClassificationGetRequestSchema, payload, "classification request");
      const [lease, current] = await Promise.all([getLive(kv, KEYS.leaderClassifier), getLive(kv, KEYS.classification)]);
      const leader = parseEntry(LeaderLeaseSchema, lease);
      const c = parseEntry(ClassificationSchema, current);
      return {
        leader: lease && leader ? { ...leader, revision: lease.revision } : null,
        classification: c,
        valid: c !== null && isClassificationValid(c, Date.now()),
      };
    },
  );

  return {
    stats: () => ({ ...stats }),
    async stop() {
      usageSub.unsubscribe();
      await events.stop();
      actor.send({ type: "STOP" });
      await waitFor(actor, (snap) => snap.status === "done", { timeout: config.intervals.shutdownTimeout }).catch((err) =>
        log.warn({ err }, "classifier did not release its lease in time"),
      );
      actor.stop();
      stats.leader = false;
      ctx.metrics.classifierLeader.set(0);
    },
  };
}

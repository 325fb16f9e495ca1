// Hosts the classifier on every worker: the leader-lease machine with KV effects, the
// classification as the leader's fenced duty, cluster-wide usage from `evt.usage`, and
// `admin.classification.get` (answered from KV by any worker).
import { performance } from "node:perf_hooks";
import { createActor, fromCallback, fromPromise, waitFor } from "xstate";
import type { KV } from "@nats-io/kv";
import { classify, GatewayRoster, type ClassificationResult } from "../actors/classification.ts";
import { encodeValue, getLive, isCasConflict, listKeys, parseEntry } from "../actors/kvStore.ts";
import { leaderLeaseMachine, type LeaseEvent } from "../actors/leaderLease.machine.ts";
import { UsageAggregate } from "../actors/usageAggregate.ts";
import { parseRequest } from "../protocol/envelope.ts";
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
import type { GatewayRecords } from "./gatewayRecords.ts";
import { followKv, type KvFollower } from "./kvWatch.ts";
import type { Stores } from "./nats.ts";
import type { Hosted, WorkerContext } from "./worker.ts";

export type ClassifierStats = {
  leader: boolean;
  leaseRevision: number;
  classificationsWritten: number;
  /** lease or classification writes refused by compare-and-swap: this worker had been deposed */
  staleWritesRejected: number;
  /**
   * The last classification this worker wrote: time to compute it (its fence read included),
   * the CPU time of the classifying itself, KV reads and writes of the duty (prepare, commit, usage kept).
   */
  lastDuty: { computeMs: number; cpuMs: number; kvReads: number; kvWrites: number } | null;
};

export type ClassifierHost = Hosted & { stats(): ClassifierStats };

type Prepared = { readRevision: number; result: ClassificationResult; computedAt: number; computeMs: number; cpuMs: number; workersReporting: number };

/** What the classifier knows of the registered gateways: kept in memory, and whether the first full picture has arrived. */
export type RosterSource = { roster: GatewayRoster; loaded: Promise<void> };

type KvIo = { reads: number; writes: number };
const KV_WRITES = new Set(["put", "create", "update", "delete", "purge"]);

/** The bucket with its round trips counted: what a classification costs KV is a figure of its own. */
function countingKv(kv: KV, io: KvIo): KV {
  return new Proxy(kv, {
    get(target, prop) {
      const v = Reflect.get(target, prop);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        if (prop === "get" || prop === "keys") io.reads++;
        else if (typeof prop === "string" && KV_WRITES.has(prop)) io.writes++;
        return v.apply(target, args);
      };
    },
  });
}

/** KV round trips in flight at once when usage is loaded or kept */
const USAGE_LOAD_CONCURRENCY = 64;

/**
 * The lease and classification effects of one worker, against the state bucket. Exported
 * apart from the host so a test can interleave two workers' steps on a real server.
 */
export function createClassifierEffects(
  ctx: Pick<WorkerContext, "config" | "log"> & { stores: Pick<Stores, "state">; gateways: RosterSource },
  usage: UsageAggregate,
) {
  const { config, log } = ctx;
  const { roster } = ctx.gateways;
  const kv = ctx.stores.state;
  const dutyIo: KvIo = { reads: 0, writes: 0 };
  /** the same bucket, for the duty's own reads and writes (the lease's are not the classification's cost) */
  const dutyKv = countingKv(kv, dutyIo);
  const me = config.workerId;
  const ttlMs = config.intervals.leaderTtl;
  const intervalMs = config.intervals.classification;
  const stats: ClassifierStats = { leader: false, leaseRevision: 0, classificationsWritten: 0, staleWritesRejected: 0, lastDuty: null };

  /** what is in `usage.<gid>` as this leader last read or wrote it, with its revision; null until loaded at the start of a term */
  let persisted: Map<string, { value: StoredUsage; revision: number }> | null = null;
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

  async function loadStoredUsage(): Promise<Map<string, { value: StoredUsage; revision: number }>> {
    const loaded = new Map<string, { value: StoredUsage; revision: number }>();
    const keys = await listKeys(dutyKv, `${KEYS.usagePrefix}*`);
    for (let i = 0; i < keys.length; i += USAGE_LOAD_CONCURRENCY) {
      const entries = await Promise.all(keys.slice(i, i + USAGE_LOAD_CONCURRENCY).map((k) => getLive(dutyKv, k)));
      for (const e of entries) {
        const v = parseEntry(StoredUsageSchema, e);
        if (!e || !v) continue;
        const gid = e.key.slice(KEYS.usagePrefix.length);
        usage.adopt(gid, v);
        loaded.set(gid, { value: v, revision: e.revision });
      }
    }
    return loaded;
  }

  /**
   * Keeps `usage.<gid>` current for the gateways whose usage changed: a compare-and-swap at the
   * revision this leader last saw, so a steady leader writes once per changed gateway and reads
   * nothing; on a conflict (another writer) it reads, merges (a late writer never lowers it)
   * and tries once more. Runs while the lease is not being renewed, so gateways go in
   * parallel batches.
   */
  async function persistUsage(): Promise<void> {
    const last = persisted;
    if (!last) return;
    const changed = usage.gids().filter((gid) => {
      const mine = usage.stored(gid)!;
      const was = last.get(gid)?.value;
      return roster.has(gid) && !(was && was.lastUsedAt === mine.lastUsedAt && was.uses === mine.uses);
    });
    const write = async (gid: string, revision: number) => {
      const merged = usage.stored(gid)!;
      const written = await cas(() => dutyKv.put(KEYS.usage(gid), encodeValue(merged), { previousSeq: revision }));
      if (written !== null) last.set(gid, { value: merged, revision: written });
      return written !== null;
    };
    const persistOne = async (gid: string) => {
      if (await write(gid, last.get(gid)?.revision ?? 0)) return;
      const e = await dutyKv.get(KEYS.usage(gid));
      const theirs = e?.operation === "PUT" ? parseEntry(StoredUsageSchema, e) : null;
      if (theirs) usage.adopt(gid, theirs);
      await write(gid, e?.revision ?? 0);
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
      dutyIo.reads = dutyIo.writes = 0;
      // Renewals wait while this runs: a roster still loading (a worker just started) makes
      // this duty wait a little, then skip to the next one, never hold the lease past its term.
      const loaded = await Promise.race([ctx.gateways.loaded.then(() => true), new Promise<false>((r) => setTimeout(r, ttlMs / 5, false).unref())]);
      if (!loaded) throw new Error("the gateway roster is still loading; classifying at the next interval");
      persisted ??= await loadStoredUsage();
      const started = performance.now();
      // read first: the renewal that follows is what fences the write at this revision
      const readRevision = (await dutyKv.get(KEYS.classification))?.revision ?? 0;
      const cpu = process.cpuUsage();
      // a usage report sent just after a gateway's removal re-adds its totals after the removed event
      usage.keepOnly(roster);
      const snapshot = usage.snapshot(performance.now());
      const result = classify(roster.enabledIds(), (gid) => snapshot.get(gid));
      const { user, system } = process.cpuUsage(cpu);
      const computeMs = performance.now() - started;
      return { readRevision, result, computedAt: Date.now(), computeMs, cpuMs: (user + system) / 1000, workersReporting: usage.workerCount() };
    }),
    commitDuty: fromPromise<boolean, { prepared: unknown; revision: number }>(async ({ input }) => {
      const p = input.prepared as Prepared;
      const value: Classification = {
        ...p.result,
        meta: { ...p.result.meta, computeMs: Math.round(p.computeMs * 10) / 10 },
        computedAt: new Date(p.computedAt).toISOString(),
        validUntil: new Date(p.computedAt + 2 * intervalMs).toISOString(),
        leader: me,
        leaseRevision: input.revision,
      };
      const revision = await cas(() => dutyKv.put(KEYS.classification, encodeValue(value), { previousSeq: p.readRevision }));
      if (revision === null) {
        rejected("classification write", p.readRevision, "the key changed after it was read (a takeover's fence)");
        return false;
      }
      stats.classificationsWritten++;
      log.info({ revision, leaseRevision: input.revision, workersReporting: p.workersReporting, ...value.meta }, "classification written");
      await persistUsage();
      stats.lastDuty = { computeMs: p.computeMs, cpuMs: p.cpuMs, kvReads: dutyIo.reads, kvWrites: dutyIo.writes };
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
  const gateways = followRoster(ctx.gatewayRecords, (gid) => usage.forget(gid));
  const effects = createClassifierEffects({ ...ctx, gateways }, usage);
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
      gateways.stop();
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

/**
 * The roster of registered gateways, kept from the worker's gateway records (every worker keeps
 * it, so a new leader has it at once); complete from the start, as the records are. `onRemoved`
 * hears of each gateway whose record was deleted.
 */
export function followRoster(records: GatewayRecords, onRemoved: (gid: string) => void = () => {}): RosterSource & { stop(): void } {
  const roster = new GatewayRoster();
  // the records held now, and every change after them (same turn: nothing in between)
  const stop = records.onChange(({ gid, record }) => {
    if (record) return roster.set(gid, record.enabled);
    roster.remove(gid);
    onRemoved(gid);
  });
  for (const { record } of records.all()) roster.set(record.id, record.enabled);
  return { roster, loaded: Promise.resolve(), stop };
}

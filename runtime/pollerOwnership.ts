// Which worker polls a gateway: placement (actors/placement.ts, claims carried out by
// runtime/claims.ts) with the pollers' two parameters: the rendezvous winner among the live
// workers wants the gateway, and a claim's holder is alive while its heartbeat key
// (`worker.<id>` in the state bucket) changed within the owner TTL on this worker's own
// monotonic clock. Claims are long-lived (`owner.<gid>`), kept up to date by a watch. A dead
// worker's gateways move after the TTL; a worker that cannot renew its heartbeat steps down on
// its own before others take over. The poller host (pollerHost.ts) starts and stops the
// pollers it is told to.
import { performance } from "node:perf_hooks";
import type { KvEntry } from "@nats-io/kv";
import { encodeValue } from "../actors/kvStore.ts";
import { Liveness, mustStepDown } from "../actors/placement.ts";
import { KEYS } from "../protocol/subjects.ts";
import { Claims } from "./claims.ts";
import { ackedKv } from "./jetstreamAcks.ts";
import { followKv } from "./kvWatch.ts";
import type { Logger } from "./logger.ts";
import type { WorkerContext } from "./worker.ts";

/** What ownership needs of the poller host. */
export type PollerSeats = {
  /** enabled gateways this worker knows of */
  gateways(): Iterable<string>;
  exists(gid: string): boolean;
  /** starts the gateway's poller (this worker holds its claim now) */
  start(gid: string): Promise<void>;
  /** stops the gateway's poller, if it runs */
  stop(gid: string): void;
};

export type PollerOwnership = {
  /** whether this worker holds the gateway's claim (its poller runs, or is starting) */
  hosts(gid: string): boolean;
  /** places every gateway now */
  reconcile(): Promise<void>;
  /** places one gateway now (added or changed) */
  placeOne(gid: string): Promise<void>;
  /** stops polling and gives the claim back (compare-and-swap: only while it is still ours) */
  release(gid: string): Promise<void>;
  /** the gateway is gone: forget what was placed for it */
  forget(gid: string): void;
  /** no more ownership work (the connection closed for good) */
  halt(): void;
  /** hands every gateway over now rather than after the TTL, and removes this worker's heartbeat */
  stop(): Promise<void>;
};

export async function startPollerOwnership(ctx: WorkerContext, seats: PollerSeats, log: Logger): Promise<PollerOwnership> {
  const { config, stores } = ctx;
  const me = config.workerId;
  const ttl = config.poller.ownerTtl;
  /** the claim revision this worker polls each gateway under */
  const hosting = new Map<string, number>();
  const liveness = new Liveness(me, ttl);
  /** the live workers as of the current placement pass */
  let live = liveness.live(performance.now());
  // a claim per gateway added: its writes are acknowledged on the worker's one subscription, not a request each
  const claims = new Claims({ kv: ackedKv(stores.state, stores.names.state, ctx.acks), me, holderAlive: (_key: string, holder: string) => live.has(holder) });
  let lastHeartbeatOk = performance.now();
  let stopped = false;
  /**
   * The periodic pass is proportional to what changed, not to every gateway: it places all of them
   * only when the live workers differ from those of the last full pass (a worker joined, died or
   * this one stepped down), and otherwise only the gateways whose claim the watch reported or
   * whose claim attempt failed since.
   */
  let placedAmong: string | null = null;
  const dirty = new Set<string>();

  const stopHosting = (gid: string) => {
    hosting.delete(gid);
    seats.stop(gid);
  };

  const release = async (gid: string) => {
    const revision = hosting.get(gid);
    stopHosting(gid);
    if (revision !== undefined) await claims.release(KEYS.pollOwner(gid), revision);
  };

  const claim = async (gid: string, step: { create: boolean; revision: number }) => {
    try {
      const revision = await claims.take(KEYS.pollOwner(gid), step);
      // lost the race, or the watch delivered a newer claim of another worker meanwhile
      if (revision === null || claims.seen(KEYS.pollOwner(gid))?.holder !== me || stopped) return;
      hosting.set(gid, Math.max(revision, hosting.get(gid) ?? 0));
      await seats.start(gid);
    } catch (err) {
      dirty.add(gid);
      log.warn({ err, gid }, "could not claim a gateway");
    }
  };

  /** What the placement policy says about one gateway now; `work` collects the KV writes it starts. */
  const place = (gid: string, mine: (gid: string) => boolean, work: Promise<void>[]) => {
    const exists = seats.exists(gid);
    const step = claims.decide(KEYS.pollOwner(gid), { exists, wanted: exists && mine(gid), hosting: hosting.get(gid) });
    if (step.type === "claim") work.push(claim(gid, step));
    else if (step.type === "release") work.push(release(gid));
    else if (step.type === "adopt") hosting.set(gid, step.revision);
    else if (step.type === "yield") {
      log.info({ gid, by: claims.seen(KEYS.pollOwner(gid))?.holder }, "gateway taken over");
      stopHosting(gid);
    }
  };

  const placeOne = async (gid: string) => {
    const now = performance.now();
    live = liveness.live(now);
    if (stopped || mustStepDown(lastHeartbeatOk, now, ttl, live.size > 1)) return;
    const work: Promise<void>[] = [];
    place(gid, liveness.placedHere(now), work);
    await Promise.all(work);
  };

  let reconciling = false;
  /** `all`: place every gateway; otherwise only what changed (see `placedAmong`) */
  const reconcile = async (all = true) => {
    if (stopped || reconciling) return;
    reconciling = true;
    try {
      const now = performance.now();
      live = liveness.live(now);
      // a worker that could not renew its heartbeat may already be replaced: step down first
      if (mustStepDown(lastHeartbeatOk, now, ttl, live.size > 1)) {
        if (hosting.size > 0) log.warn({ gateways: hosting.size }, "heartbeat not renewed; stopping pollers");
        for (const gid of [...hosting.keys()]) stopHosting(gid);
        placedAmong = null;
        return;
      }
      const among = [...live].sort().join(" ");
      const mine = liveness.placedHere(now);
      const work: Promise<void>[] = [];
      if (all || among !== placedAmong) {
        placedAmong = among;
        dirty.clear();
        for (const gid of [...hosting.keys()]) place(gid, mine, work);
        for (const gid of seats.gateways()) if (!hosting.has(gid)) place(gid, mine, work);
      } else {
        const changed = [...dirty];
        dirty.clear();
        for (const gid of changed) place(gid, mine, work);
      }
      await Promise.all(work);
      // heartbeat keys of workers gone for a long time (CAS: unless they came back)
      for (const { worker, revision } of liveness.takeLongGone(performance.now())) {
        await stores.state.delete(KEYS.pollerWorker(worker), { previousSeq: revision }).catch(() => {});
      }
    } finally {
      reconciling = false;
    }
  };

  const heartbeat = async () => {
    try {
      await stores.state.put(KEYS.pollerWorker(me), encodeValue({ worker: me, at: new Date().toISOString() }));
      lastHeartbeatOk = performance.now();
    } catch (err) {
      log.warn({ err }, "poller heartbeat failed");
    }
  };

  const onOwnerEntry = (e: KvEntry) => {
    const gid = e.key.slice(KEYS.pollOwnerPrefix.length);
    // this worker's own claim may be known before the watch delivers older entries
    const { holder, revision: latest } = claims.heard(e);
    // this worker's own claim, at the revision it hosts the gateway under, is already placed (every add's poller claim)
    if (!(holder === me && hosting.get(gid) === e.revision)) dirty.add(gid);
    // a deleted claim of a gateway this worker does not poll is nothing to keep (a create takes a deleted key too)
    if (holder === null && !seats.exists(gid)) claims.forget(e.key);
    // a takeover stops this worker's poller at once; anything else waits for the next reconcile
    const revision = hosting.get(gid);
    if (revision !== undefined && latest === e.revision && e.revision > revision) {
      if (holder === me) hosting.set(gid, e.revision);
      else {
        log.info({ gid, by: holder }, "gateway taken over");
        stopHosting(gid);
      }
    }
  };

  const onHeartbeatEntry = (e: KvEntry) =>
    liveness.heard(e.key.slice(KEYS.pollerWorkerPrefix.length), e.operation === "PUT" ? e.revision : null, performance.now());

  await heartbeat();
  const watches = [
    await followKv(stores.state, `${KEYS.pollerWorkerPrefix}*`, onHeartbeatEntry, log, "poller heartbeat watch"),
    await followKv(stores.state, `${KEYS.pollOwnerPrefix}*`, onOwnerEntry, log, "poller owner watch"),
  ];
  const beat = setInterval(() => void heartbeat(), Math.max(100, Math.floor(ttl / 3)));
  const tick = setInterval(() => void reconcile(false).catch((err) => log.error({ err }, "ownership reconcile failed")), Math.max(100, Math.floor(ttl / 6)));

  const halt = () => {
    stopped = true;
    clearInterval(beat);
    clearInterval(tick);
  };

  return {
    hosts: (gid) => hosting.has(gid),
    placeOne,
    release,
    forget: (gid) => {
      liveness.forgetKey(gid);
      claims.forget(KEYS.pollOwner(gid));
    },
    halt,
    reconcile: () => reconcile(true),
    async stop() {
      halt();
      for (const w of watches) w.stop();
      await Promise.all([...hosting.keys()].map((gid) => release(gid)));
      await stores.state.delete(KEYS.pollerWorker(me)).catch(() => {});
    },
  };
}

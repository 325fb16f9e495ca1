// Hosts gateway pollers on this worker. Which worker polls a gateway is decided in
// pollerOwnership.ts; this host starts and stops the pollers it is given. Each poller answers
// at its own address, `mcpgw.poller.<gid>.{refresh,status}`, wherever it runs. The pollers
// themselves are records of one schedule (actors/pollScheduler.ts), not an actor each.
import { performance } from "node:perf_hooks";
import type { KvEntry } from "@nats-io/kv";
import type { Msg, Subscription } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { shortErrorText } from "../actors/errorText.ts";
import { encodeValue, entryJson, getLive } from "../actors/kvStore.ts";
import { tierOf } from "../actors/discovery.ts";
import { PollScheduler, type DiscoveryOutcome, type PollKind } from "../actors/pollScheduler.ts";
import { RefreshReplySchema } from "../protocol/catalog.ts";
import { ProtocolError, parseRequest } from "../protocol/envelope.ts";
import { connectChanged } from "../actors/registry.ts";
import {
  GatewayListChangedEventSchema,
  GatewayRefreshRequestSchema,
  type GatewayStatus,
  type GatewayRecord,
} from "../protocol/gateway.ts";
import { PollerRequestSchema, PollerStatusesRequestSchema, type PollStamp, type PollerStatusesReply, type PollerStatusReply } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { answerRequest, isNoResponders, request, serve } from "./bus.ts";
import { followEvents } from "./events.ts";
import type { GatewayChange } from "./gatewayRecords.ts";
import { followKv } from "./kvWatch.ts";
import { PollConnections } from "./pollConnections.ts";
import { startPollerOwnership, type PollerOwnership } from "./pollerOwnership.ts";
import { discoverOn, readDiscoveryStamp, readStoredStatus, type GatewayConnector, type ProbeConnection } from "./pollerEffects.ts";
import { gatewayScrubber, scrubbedError } from "./secretScrubber.ts";
import type { Hosted, WorkerContext } from "./worker.ts";

/**
 * At most `limit` polls at once on this worker; the rest wait their turn, health checks ahead of
 * discoveries: a check is one ping and is due at its slot, while a discovery (ten thousand of them
 * right after a bulk import) may wait without anyone noticing.
 */
class PollSlots {
  #free: number;
  #closed = false;
  readonly #queues: Record<PollKind, Array<() => void>> = { health: [], discovery: [] };
  constructor(limit: number) {
    this.#free = limit;
  }
  async run<T>(kind: PollKind, fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#queues[kind].push(resolve));
    try {
      if (this.#closed) throw new Error("the poller host is stopping");
      return await fn();
    } finally {
      const next = this.#queues.health.shift() ?? this.#queues.discovery.shift();
      if (next) next();
      else this.#free++;
    }
  }
  /** polls still waiting for a slot give up (the worker stops) */
  close(): void {
    this.#closed = true;
  }
}

/**
 * A token bucket on this worker's monotonic clock: up to `burst` takes at once, then `perSecond`
 * a second; untaken tokens build up again to `burst`.
 */
class TakeBudget {
  #tokens: number;
  #at = performance.now();
  constructor(
    readonly burst: number,
    readonly perSecond: number,
  ) {
    this.#tokens = burst;
  }
  take(): boolean {
    const now = performance.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#at) / 1000) * this.perSecond);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }
}

export async function startPollerHost(ctx: WorkerContext, connect: GatewayConnector): Promise<Hosted> {
  const { config, nc, s, stores, box } = ctx;
  const log = ctx.log.child({ actor: "poller" });
  const guard = { log, refusals: ctx.refusals };
  const me = config.workerId;
  const slots = new PollSlots(config.maxConcurrentPolls);
  const connections = new PollConnections(connect, config.poller.maxStdio);
  const open = (sealed: string, gid: string) => box.open(sealed, gid);
  const jsm = await jetstreamManager(nc);

  /**
   * A gateway added or changed is discovered at once: a script's burst of up to 32, then 8 a second.
   * Beyond that (an import of thousands) at its slot, spread over the discovery interval: a first
   * discovery (connect, four lists, catalog, event, stamp, status) costs the worker several adds'
   * worth of CPU, and at 32 a second one would fall on every 16th add of an import at 500 a second.
   */
  const immediateDiscoveries = new TakeBudget(32, 8);
  /** the enabled gateways are the worker's one copy of the records (gatewayRecords.ts), not a map of this host's */
  const enabledRecord = (gid: string): GatewayRecord | undefined => {
    const record = ctx.gatewayRecords.get(gid)?.record;
    return record?.enabled ? record : undefined;
  };
  function* enabledIds(): Iterable<string> {
    for (const { record } of ctx.gatewayRecords.all()) if (record.enabled) yield record.id;
  }
  /** gateways added or reconnected since this worker saw them: whoever claims them discovers at once (an added one has no state to read) */
  const fresh = new Map<string, "added" | "changed">();
  /** the pollers this worker runs: each one's address subscription */
  const running = new Map<string, Subscription>();
  /** the classification as last seen by this worker's watch (raw JSON; undefined when absent) */
  let classification: unknown;
  let stopped = false;

  // ---- one poller ----

  /**
   * `wanted`: false once the poller stopped (gateway moved, removed or changed): a poll still
   * waiting for a slot never starts. `keep`: the poll is its poller's, on the gateway's kept connection.
   */
  const probe = async <T>(gid: string, kind: PollKind, fn: (conn: ProbeConnection) => Promise<T>, wanted: () => boolean, keep = true): Promise<T> => {
    const record = enabledRecord(gid);
    if (!record) throw new Error("gateway is no longer registered");
    // logged when due, before the concurrency cap may hold it back
    log.debug({ gid, kind }, "poll");
    return slots.run(kind, async () => {
      if (!wanted()) throw new Error("poll cancelled: the poller stopped");
      const started = performance.now();
      let outcome: "ok" | "error" = "error";
      try {
        const result = await connections.use(record, config.poller.timeout, fn, keep);
        outcome = "ok";
        return result;
      } catch (err) {
        throw scrubbedError(err, gatewayScrubber(record, open));
      } finally {
        const tier = tierOf(classification, gid, Date.now());
        ctx.metrics.polls.inc({ kind, tier, outcome });
        ctx.metrics.pollDuration.observe({ kind, tier }, (performance.now() - started) / 1000);
      }
    });
  };

  const catalogStore = { catalog: stores.catalog, js: stores.js, s, now: () => new Date() };
  /** a discovery over a probe connection: list the upstream's catalog, reconcile it into KV */
  const discoverOver = (gid: string, signal?: AbortSignal) => (conn: ProbeConnection) => discoverOn(catalogStore, gid, conn, signal);

  const putJson = (key: string, value: unknown, what: string) =>
    void stores.state.put(key, encodeValue(value)).catch((err) => log.warn({ err, key }, `could not write ${what}`));

  const pollers: PollScheduler = new PollScheduler({
    timings: {
      health: config.intervals.health,
      discovery: config.intervals.discovery,
      listChangedDebounce: config.poller.listChangedDebounce,
      backoffMax: config.poller.backoffMax,
    },
    unhealthyThreshold: config.unhealthyThreshold,
    clock: { now: () => Date.now(), setTimeout: (fn, ms) => setTimeout(fn, ms), clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout) },
    random: Math.random,
    effects: {
      readDiscoveryStamp: (gid) => readDiscoveryStamp(stores.state, gid),
      classification: () => classification,
      checkHealth: (gid) => probe(gid, "health", (conn) => conn.check(), () => pollers.has(gid)),
      discover: (gid, signal) => probe(gid, "discovery", discoverOver(gid, signal), () => !signal.aborted),
      recordDiscovery: (gid, at, nextAt) => putJson(KEYS.pollDiscovery(gid), { at, nextAt, worker: me } satisfies PollStamp, "a poll stamp"),
      writeStatus: (gid, status) => putJson(KEYS.gatewayStatus(gid), status, "a gateway status"),
    },
  });

  /**
   * Whether the gateway's latest list_changed event came after its latest discovery: one that
   * arrived while nobody polled it (its owner had died) must not wait for the next slot. Both
   * times are the server's (stream message and KV write), not a worker's clock.
   */
  const missedPush = async (gid: string): Promise<boolean> => {
    const [notice, stamp] = await Promise.all([
      jsm.streams.getMessage(stores.streamName, { last_by_subj: s.evt.gateway(gid, "list_changed") }).catch(() => null),
      getLive(stores.state, KEYS.pollDiscovery(gid)).catch(() => null),
    ]);
    return notice !== null && (stamp === null || notice.time > stamp.created);
  };

  /** A request at a poller's address: the gateway and the operation are the subject's. */
  const answerAtAddress = async (payload: unknown, msg: { subject: string }) => {
    const { gid, op } = s.parsePoller(msg.subject) ?? { gid: "", op: "" };
    parseRequest(PollerRequestSchema, payload, `poller ${op} request`);
    const status = pollers.status(gid);
    if (!status) throw new ProtocolError("unavailable", "the gateway's poller stopped (gateway changed, removed or moved); try again");
    if (op === "status") return { gid, worker: me, status } satisfies PollerStatusReply;
    if (op === "refresh") return reply(gid, await refreshHere(gid).catch(asUnavailable));
    throw new ProtocolError("invalid_request", `unknown poller operation ${JSON.stringify(op)}`);
  };
  /** one callback for every poller address of this worker: a subscription per gateway holds no closure of its own */
  const onAddressMessage = (err: Error | null, msg: Msg) => {
    if (err) return void log.error({ err }, "a poller address subscription failed");
    void answerRequest(msg, answerAtAddress, guard);
  };
  /** The poller's own address, `mcpgw.poller.<gid>.<op>`: whoever asks reaches it on whichever worker polls the gateway. */
  const serveAddress = (gid: string) => nc.subscribe(s.poller.actor(gid), { callback: onAddressMessage });

  const startPoller = async (gid: string) => {
    const freshness = fresh.get(gid);
    // a gateway just added has no status and no missed notice to read (it is discovered at once)
    const [status, pushMissed] =
      freshness === "added"
        ? [undefined, false]
        : await Promise.all([readStoredStatus(stores.state, gid).catch(() => undefined), freshness ? false : missedPush(gid)]);
    // the claim may have moved while the status was read
    if (stopped || running.has(gid) || !enabledRecord(gid) || !ownership.hosts(gid)) return;
    fresh.delete(gid);
    running.set(gid, serveAddress(gid));
    pollers.start(gid, { status, discoverNow: (freshness !== undefined || pushMissed) && immediateDiscoveries.take() });
    log.info({ gid }, "polling gateway");
  };

  /** Stops a poller; manual refreshes it had not answered yet are told so rather than left waiting. */
  const stopPoller = (gid: string) => {
    const address = running.get(gid);
    if (!address) return;
    running.delete(gid);
    address.unsubscribe();
    const unanswered = pollers.stop(gid);
    connections.drop(gid);
    const gone = new ProtocolError("unavailable", "the gateway's poller stopped during the refresh (gateway changed, removed or moved); try again");
    for (const r of unanswered) r.reject(gone);
  };

  const ownership: PollerOwnership = await startPollerOwnership(
    ctx,
    { gateways: enabledIds, exists: (gid) => enabledRecord(gid) !== undefined, start: startPoller, stop: stopPoller },
    log,
  );

  // ---- gateways ----

  const removed = async (gid: string) => {
    ownership.forget(gid);
    fresh.delete(gid);
    if (ownership.hosts(gid)) {
      await ownership.release(gid);
      await stores.state.delete(KEYS.gatewayStatus(gid)).catch(() => {});
    }
  };

  /** A record added, changed or removed, as the worker's one watch of the records delivered it (no read of its own). */
  const onGatewayChange = async ({ gid, record, previous }: GatewayChange) => {
    if (!record) return removed(gid);
    const reconnect = !previous || !previous.enabled || connectChanged(previous, record);
    if (reconnect && record.enabled) {
      fresh.set(gid, previous ? "changed" : "added");
      // restart with the new connection settings, keeping the claim
      if (running.has(gid)) {
        stopPoller(gid);
        await startPoller(gid);
      }
    }
    // one gateway, not all of them: an import of 10,000 would otherwise place 10,000 × 10,000 times
    await ownership.placeOne(gid);
  };

  const onListChanged = (subject: string, payload: unknown) => {
    const parsed = GatewayListChangedEventSchema.safeParse(payload);
    if (!parsed.success) return void log.warn({ subject }, "ignoring a malformed gateway event");
    pollers.listChanged(parsed.data.gid);
  };

  // ---- manual refresh ----

  const refreshHere = (gid: string): Promise<DiscoveryOutcome> =>
    new Promise((resolve, reject) => {
      if (!pollers.refresh(gid, { resolve, reject })) reject(new ProtocolError("unavailable", "the gateway's poller stopped; try again"));
    });

  /** A discovery outside any poller (nobody polls the gateway right now); reconciles all the same. */
  const refreshOnce = (gid: string): Promise<DiscoveryOutcome> => probe(gid, "discovery", discoverOver(gid), () => true, false);

  const reply = (gid: string, o: DiscoveryOutcome) => ({ gid, changed: o.changed, hash: o.hash, diff: o.diff });
  const asUnavailable = (err: unknown): never => {
    if (err instanceof ProtocolError) throw err;
    throw new ProtocolError("unavailable", `discovery failed: ${shortErrorText(err)}`);
  };

  /** `gateway refresh`: asks the gateway's poller at its address, wherever it runs; with nobody polling it, discovers here. */
  const refresh = async (payload: unknown) => {
    const ref = parseRequest(GatewayRefreshRequestSchema, payload, "gateway reference");
    const view = await ctx.registry.get(ref);
    if (!view.enabled) throw new ProtocolError("conflict", `gateway ${view.name} is disabled`);
    const gid = view.id;
    try {
      return await request(nc, s.poller.op(gid, "refresh"), {}, RefreshReplySchema, config.poller.timeout + 5_000);
    } catch (err) {
      if (!isNoResponders(err)) throw err;
    }
    return reply(gid, await refreshOnce(gid).catch(asUnavailable));
  };

  // ---- start ----

  const onClassificationEntry = (e: KvEntry) => void (classification = e.operation === "PUT" ? entryJson(e) : undefined);
  const watches = [
    await followKv(stores.state, KEYS.classification, onClassificationEntry, log, "classification watch", { loadFirst: true }),
  ];
  // list_changed notices only: adds, changes and removals come with their records from the worker's watch
  const events = await followEvents(stores.js, stores.streamName, [s.evt.gatewayKind("list_changed")], onListChanged, guard);
  // the records held now, and every change after them (nothing comes in between: same turn)
  const stopFollowing = ctx.gatewayRecords.onChange((change) => void onGatewayChange(change).catch((err) => log.error({ err, gid: change.gid }, "gateway change failed")));

  ctx.admin.endpoint(s.admin.gateway("refresh"), refresh);
  // a list's page of statuses: every worker answers for the pollers it runs (one request per worker, not one per gateway)
  const statusesSub = serve(
    nc,
    s.poller.statuses,
    (payload) => {
      const { gids } = parseRequest(PollerStatusesRequestSchema, payload, "poller statuses request");
      const statuses: Record<string, GatewayStatus> = {};
      for (const gid of gids) {
        const status = running.has(gid) ? pollers.status(gid) : undefined;
        if (status) statuses[gid] = status;
      }
      return { worker: me, statuses } satisfies PollerStatusesReply;
    },
    guard,
  );
  await ownership.reconcile();

  // a worker that lost its NATS connection for good stops polling: it can record nothing
  void nc.closed().then(() => {
    stopped = true;
    slots.close();
    ownership.halt();
    for (const gid of [...running.keys()]) stopPoller(gid);
    pollers.stopAll();
    void connections.closeAll();
  });

  return {
    async stop() {
      stopped = true;
      slots.close();
      stopFollowing();
      statusesSub.unsubscribe();
      await events.stop();
      for (const w of watches) w.stop();
      await ownership.stop();
      pollers.stopAll();
      await connections.closeAll();
    },
  };
}

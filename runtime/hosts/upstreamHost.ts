// Hosts upstream session actors on this worker: each actor is the address
// `<p>.upstream.<sid>.<gid>.*`, activated on request (by this worker's own edge for a session
// nobody hosts, else a spawn through the queue group), owned through a
// claim in the sessions bucket (upstreamClaims.ts), evicted on events and admin requests on
// every worker (actors/upstreamSession/eviction.ts), drained and closed when the worker stops.
import type { Subscription } from "@nats-io/transport-node";
import { SpanKind, type Span } from "@opentelemetry/api";
import type { z } from "zod";
import { evicts, evictionOnGatewayEvent, evictionOnRequest, evictionOnSessionClosed, needsEnabledCheck, type Eviction } from "../../actors/upstreamSession/eviction.ts";
import { getLive, parseEntry } from "../../actors/kvStore.ts";
import { ProtocolError, parseRequest } from "../../protocol/envelope.ts";
import { GatewayEventSchema, GatewayRecordSchema, type GatewayRecord } from "../../protocol/gateway.ts";
import { KEYS, QUEUE } from "../../protocol/subjects.ts";
import {
  DrainRequestSchema,
  SessionClosedEventSchema,
  SessionEvictRequestSchema,
  SessionListRequestSchema,
  SpawnReplySchema,
  SpawnRequestSchema,
  WorkerEvictReplySchema,
  WorkerEvictRequestSchema,
  WorkerSnapshotReplySchema,
  WorkerSnapshotRequestSchema,
  type UpstreamSessionInfo,
} from "../../protocol/upstream.ts";
import type { GatewayUsage, UsageReport } from "../../protocol/usage.ts";
import { encodeJson, gather, isNoResponders, listen, natsHeadersOf, serve, unwrapReply } from "../bus.ts";
import { followEvents, publishCore } from "../events.ts";
import type { Logger } from "../logger.ts";
import type { LoadedSession } from "../sessionStore.ts";
import { endSpan, natsTraceHeaders, traceIdOf, type TraceHeaders } from "../tracing.ts";
import type { LocalUpstreams, Spawn } from "../upstreamClient.ts";
import type { Hosted, WorkerContext } from "../worker.ts";
import { listChangedEvents } from "./listChangedEvents.ts";
import { upstreamClaims } from "./upstreamClaims.ts";
import { createUpstreamActor, hostedGateway, type ActorStart, type HostedGateway, type UpstreamActor } from "./upstreamActor.ts";

/** How long a fan-out (session list, evict, drain) waits for one more worker to answer. */
const FANOUT_STALL_MS = 300;
const FANOUT_MAX_MS = 3_000;
/** How often each worker looks for claims left by dead workers (at a random phase). */
const CLAIM_SWEEP_MS = 10 * 60_000;

export type UpstreamHost = Hosted & {
  /** the actors of this worker as its own callers see them (in-process calls, local placement) */
  local: LocalUpstreams;
  /** live and closing actors of this worker */
  sessions(): UpstreamSessionInfo[];
  /** deletes claims no actor answers for (left by workers that died); how many */
  sweepStaleClaims(): Promise<number>;
  /** the worker stops: new calls go elsewhere, calls in flight get shutdownTimeout to finish (`stop` waits for the rest) */
  drain(): void;
};

export async function startUpstreamHost(ctx: WorkerContext): Promise<UpstreamHost> {
  const { nc, s, stores, config } = ctx;
  const log = ctx.log.child({ actor: "upstream" });
  const me = config.workerId;
  const claims = upstreamClaims({ nc, s, kv: stores.sessions, workerId: me });
  const sessions = ctx.sessions;
  const listChanged = listChangedEvents(stores.js, s, log);
  /** every actor of this worker, by `<sid>.<gid>`: the serving one, and those still closing */
  const actors = new Map<string, UpstreamActor>();
  const closing = new Set<UpstreamActor>();
  /** every actor of this worker (serving or closing) by its client session: session-wide messages go to them */
  const bySession = new Map<string, UpstreamActor[]>();
  const activating = new Map<string, Promise<{ worker: string; created: boolean }>>();
  const usage = new Map<string, { uses: number; lastUsedAt: number | null }>();
  let stopping = false;

  const keyOf = (sid: string, gid: string) => `${sid}.${gid}`;
  const label = (r: GatewayRecord) => `${r.name} (${r.id})`;
  const deps = {
    ctx,
    log,
    sessions,
    onListChanged: listChanged.notice,
    onUse: (gid: string) => {
      const u = usage.get(gid) ?? { uses: 0, lastUsedAt: null };
      usage.set(gid, { uses: u.uses + 1, lastUsedAt: Date.now() });
    },
  };

  /**
   * Each gateway's record by its KV revision: every session of a gateway shares one opened
   * record and one scrubber (made again only when the record changed).
   */
  const gateways = new Map<string, { revision: number; gateway: HostedGateway }>();

  /**
   * The revision a gateway event announced before the worker's watch brought it (the events and
   * the records are two streams, in no order between them): until the watch holds that revision,
   * the record is read from KV. Infinity for a removal.
   */
  const announced = new Map<string, number>();
  const stopCatchingUp = ctx.gatewayRecords.onChange((c) => {
    const floor = announced.get(c.gid);
    if (floor !== undefined && (c.record === null || c.revision >= floor)) announced.delete(c.gid);
  });

  /**
   * The gateway as the worker's watch holds it, with no KV read; read from KV when the watch holds
   * none (just after an add at another worker) or one older than an event announced (an actor
   * built from it after that event would never be evicted).
   */
  async function loadGateway(gid: string): Promise<HostedGateway> {
    const held = ctx.gatewayRecords.get(gid);
    const floor = announced.get(gid);
    const entry = held && (floor === undefined || held.revision >= floor) ? held : await readGateway(gid);
    const known = gateways.get(gid);
    let gateway = entry && known?.revision === entry.revision ? known.gateway : null;
    if (!gateway) {
      gateway = entry && hostedGateway(entry.record, (sealed, id) => ctx.box.open(sealed, id));
      if (entry && gateway) gateways.set(gid, { revision: entry.revision, gateway });
      else gateways.delete(gid);
    }
    if (!gateway) throw new ProtocolError("unavailable", `gateway ${gid} is not registered`);
    if (!gateway.record.enabled) throw new ProtocolError("unavailable", `gateway ${label(gateway.record)} is disabled`);
    return gateway;
  }
  async function readGateway(gid: string): Promise<{ record: GatewayRecord; revision: number } | null> {
    const entry = await getLive(stores.gateways, KEYS.gateway(gid));
    const record = parseEntry(GatewayRecordSchema, entry);
    return entry && record ? { record, revision: entry.revision } : null;
  }

  /**
   * Subscribes a new actor's address before its claim, so whoever sees the claim finds it: the
   * claim is written by a request on this same connection after the SUB, and a server handles
   * a connection's messages in order, so no flush (a round trip) is needed between them.
   */
  function host(sid: string, gid: string, gateway: HostedGateway, spawn: Spawn, start: ActorStart): UpstreamActor {
    const { record } = gateway;
    const a = createUpstreamActor(deps, sid, gid, gateway, spawn.headers, { ...(spawn.clientCapabilities ? { capabilities: spawn.clientCapabilities } : {}), ...start });
    actors.set(keyOf(sid, gid), a);
    bySession.set(sid, [...(bySession.get(sid) ?? []), a]);
    void a.done.then(async (how) => {
      if (actors.get(keyOf(sid, gid)) === a) actors.delete(keyOf(sid, gid));
      closing.delete(a);
      const others = bySession.get(sid)?.filter((x) => x !== a) ?? [];
      if (others.length) bySession.set(sid, others);
      else bySession.delete(sid);
      if (how === "abandoned") return;
      // every way into `closing` names its cause
      ctx.metrics.upstreamSessionClosed(record.name, a.actor.getSnapshot().context.closeCause!);
      await claims.release(sid, gid, a.claimRevision);
      log.debug({ sid, gid }, "upstream session closed");
    });
    a.actor.subscribe((snap) => {
      // its address is gone: a new actor of the key may be hosted here meanwhile
      if (!a.serving() && snap.value !== "claiming" && actors.get(keyOf(sid, gid)) === a) {
        actors.delete(keyOf(sid, gid));
        closing.add(a);
      }
    });
    return a;
  }

  /**
   * Hosts the actor for (sid, gid) here unless it is alive somewhere; exactly one wins.
   * `session`: the client session record when the caller has it in hand (it was just created).
   * `connectEarly`: the upstream handshake runs while the claim is made; for this worker's own
   * edge, whose activation almost never loses its claim (a spawn over the bus may be a retry, or
   * race another worker's: a lost claim would cost the upstream a session opened for nothing).
   */
  function activate(sid: string, gid: string, spawn: Spawn, trace: TraceHeaders = {}, opts: { session?: LoadedSession; connectEarly?: boolean } = {}): Promise<{ worker: string; created: boolean }> {
    const key = keyOf(sid, gid);
    if (actors.get(key)?.actor.getSnapshot().matches("open")) return Promise.resolve({ worker: me, created: false });
    const pending = activating.get(key);
    if (pending) return pending;
    // in the trace of the call that needs the actor: claiming and connecting are part of it
    const span = ctx.tracing.startSpan("session activate", { kind: SpanKind.SERVER, parent: trace });
    const p = claimAndStart(sid, gid, spawn, span, log.child({ traceId: traceIdOf(span) }), opts)
      .then(
        (r) => (endSpan(span), r),
        (err: unknown) => {
          endSpan(span, err instanceof Error ? err.message : String(err));
          throw err;
        },
      )
      .finally(() => activating.delete(key));
    activating.set(key, p);
    return p;
  }

  async function claimAndStart(sid: string, gid: string, spawn: Spawn, span: Span, log: Logger, opts: { session?: LoadedSession; connectEarly?: boolean }): Promise<{ worker: string; created: boolean }> {
    if (stopping) throw new ProtocolError("unavailable", `worker ${me} is shutting down`);
    // the client session record (log level, subscriptions) is read while the actor connects;
    // the gateway's record and the era discovery found are in memory
    const session = opts.session ? Promise.resolve(opts.session) : sessions.load(sid);
    session.catch(() => {});
    const gateway = await loadGateway(gid);
    const { record } = gateway;
    // with connectEarly the actor opens its upstream connection while the claim is made (a lost claim closes it unused)
    const start = { session, span, connectEarly: opts.connectEarly === true };
    let a = host(sid, gid, gateway, spawn, start);
    const claimSpan = ctx.tracing.startSpan("session claim", { kind: SpanKind.INTERNAL, parent: span });
    let revision = await claims.create(sid, gid).then(
      (r) => (endSpan(claimSpan), r),
      (err: unknown) => (endSpan(claimSpan, String(err)), a.actor.send({ type: "CLAIM_LOST" }), Promise.reject(err)),
    );
    if (revision === null) {
      // the loser drops its address and what it got (the holder got the same messages)
      const { closeReason, closeCause } = a.actor.getSnapshot().context;
      a.actor.send({ type: "CLAIM_LOST" });
      await a.done;
      const holder = await claims.holder(sid, gid);
      if (!holder.takeOver) return { worker: holder.worker ?? "unknown", created: false };
      a = host(sid, gid, gateway, spawn, start);
      if (closeCause) a.actor.send({ type: "CLOSE", reason: closeReason, cause: closeCause });
      revision = await holder.takeOver().catch((err: unknown) => (a.actor.send({ type: "CLAIM_LOST" }), Promise.reject(err)));
      if (revision === null) {
        a.actor.send({ type: "CLAIM_LOST" });
        return { worker: "unknown", created: false };
      }
      log.info({ sid, gid, previous: holder.worker }, "took over an upstream session claim whose owner is gone");
    }
    // Resolves once connected, so the spawner's call finds it serving. A failed connect is the
    // spawn's answer: every retry would meet the same refusal, and the caller gets the reason.
    a.claimRevision = revision;
    ctx.metrics.upstreamSessionStarted(record.name);
    a.actor.send({ type: "CLAIMED" });
    if (stopping) a.actor.send({ type: "DRAIN" });
    log.debug({ sid, gid }, "upstream session actor started");
    await a.whenReady().catch((err: Error) => Promise.reject(new ProtocolError("unavailable", `gateway ${label(record)}: ${err.message}`)));
    return { worker: me, created: true };
  }

  function evict(e: Eviction): number {
    const picked = [...actors.values()].filter((a) => a.serving() && evicts(e, a));
    for (const a of picked) a.actor.send({ type: "CLOSE", reason: e.reason, cause: e.cause });
    if (picked.length) log.info({ count: picked.length, reason: e.reason }, "evicting upstream sessions");
    return picked.length;
  }

  async function onEvent(subject: string, payload: unknown): Promise<void> {
    if (s.parseGatewayEvent(subject)) {
      const e = GatewayEventSchema.safeParse(payload);
      if (!e.success) return;
      // a removed gateway's opened secrets are not kept (an update is seen by its revision at the next spawn)
      if (e.data.type === "removed") gateways.delete(e.data.gid);
      if (e.data.type === "removed" || e.data.type === "updated") {
        const revision = e.data.type === "removed" ? Infinity : e.data.revision;
        const held = ctx.gatewayRecords.get(e.data.gid);
        if (held && held.revision < revision) announced.set(e.data.gid, Math.max(revision, announced.get(e.data.gid) ?? 0));
      }
      const enabledNow = needsEnabledCheck(e.data) ? await loadGateway(e.data.gid).then(() => true, () => false) : undefined;
      const eviction = evictionOnGatewayEvent(e.data, enabledNow);
      if (eviction) evict(eviction);
      return;
    }
    const closed = SessionClosedEventSchema.safeParse(payload);
    if (subject.endsWith(".closed") && closed.success) evict(evictionOnSessionClosed(closed.data));
  }

  function usageReport(): UsageReport | null {
    const liveBy = new Map<string, number>();
    for (const a of actors.values()) if (a.actor.getSnapshot().matches("open")) liveBy.set(a.gid, (liveBy.get(a.gid) ?? 0) + 1);
    const gids = new Set([...usage.keys(), ...liveBy.keys()]);
    if (gids.size === 0) return null;
    const gateways: GatewayUsage[] = [...gids].sort().map((gid) => ({
      gid,
      lastUsedAt: usage.get(gid)?.lastUsedAt ?? null,
      uses: usage.get(gid)?.uses ?? 0,
      liveSessions: liveBy.get(gid) ?? 0,
    }));
    usage.clear();
    return { worker: me, at: Date.now(), gateways };
  }
  const usageTimer = setInterval(() => {
    const report = usageReport();
    if (report) publishCore(nc, s.evt.usage, report);
  }, config.intervals.usageReport);
  usageTimer.unref();

  async function sweepStaleClaims(): Promise<number> {
    const removed = await claims.sweepStale((sid, gid) => actors.has(keyOf(sid, gid)), () => stopping);
    if (removed > 0) log.info({ removed }, "removed upstream session claims left by workers that are gone");
    return removed;
  }
  const sweep = () => void sweepStaleClaims().catch((err) => log.warn({ err }, "sweep of stale upstream session claims failed"));
  let sweepTimer: NodeJS.Timeout = setTimeout(function again() {
    sweep();
    sweepTimer = setTimeout(again, CLAIM_SWEEP_MS).unref();
  }, Math.random() * CLAIM_SWEEP_MS).unref();

  const snapshot = (filter: { sid?: string | undefined; gid?: string | undefined }) =>
    [...actors.values(), ...closing]
      .filter((a) => !a.actor.getSnapshot().matches("claiming") && (!filter.sid || a.sid === filter.sid) && (!filter.gid || a.gid === filter.gid))
      .map((a) => a.info());

  /** Asks every worker; gathers answers until none has come for a short while. */
  const fanOut = <T extends z.ZodType>(subject: string, payload: unknown, schema: T) =>
    gather(nc, subject, payload, schema, { stallMs: FANOUT_STALL_MS, maxMs: FANOUT_MAX_MS });

  const opts = { log, refusals: ctx.refusals };
  const spawns = serve(
    nc,
    s.upstream.spawn,
    async (p, msg) => {
      const req = parseRequest(SpawnRequestSchema, p, "spawn request");
      return activateOrHandOver(req.sid, req.gid, { headers: req.headers ?? {}, clientCapabilities: req.clientCapabilities }, natsTraceHeaders(msg.headers), {});
    },
    { ...opts, queue: QUEUE.spawn },
  );
  async function activateOrHandOver(sid: string, gid: string, spawn: Spawn, trace: TraceHeaders, opts: { connectEarly?: boolean }): Promise<{ worker: string; created: boolean }> {
    try {
      return await activate(sid, gid, spawn, trace, opts);
    } catch (err) {
      // this worker began stopping under the activation (its drain closed the actor before a
      // call reached it): another worker hosts it; this one no longer takes spawns
      if (!stopping) throw err;
      return handOver({ sid, gid, ...spawn }, trace);
    }
  }
  async function handOver(req: z.infer<typeof SpawnRequestSchema>, trace: TraceHeaders): Promise<{ worker: string; created: boolean }> {
    try {
      const reply = await nc.request(s.upstream.spawn, encodeJson(req), { timeout: config.intervals.callTimeout, headers: natsHeadersOf(trace) });
      return unwrapReply(reply.data, SpawnReplySchema);
    } catch (err) {
      if (isNoResponders(err)) throw new ProtocolError("unavailable", `worker ${me} is shutting down and no other worker can host a session for gateway ${req.gid}`);
      throw err;
    }
  }
  const subs: Subscription[] = [
    spawns,
    // one subscription for every session's session-wide messages, not one per actor (they are
    // messages, not requests: a worker with no actor of that session drops them)
    listen(
      nc,
      s.upstream.sessionWideAll,
      (msg) => {
        const sid = s.parseSessionWide(msg.subject);
        for (const a of (sid && bySession.get(sid)) || []) a.sessionWide(msg.data);
      },
      { ...opts, expect: "message" },
    ),
    serve(nc, s.upstream.snapshot, (p) => ({ worker: me, sessions: snapshot(parseRequest(WorkerSnapshotRequestSchema, p, "snapshot request")) }), opts),
    serve(nc, s.upstream.evict, (p) => ({ worker: me, evicted: evict(evictionOnRequest(parseRequest(WorkerEvictRequestSchema, p, "evict request"))) }), opts),
  ];
  ctx.admin.endpoint(s.admin.sessionList, async (p) => {
    const req = parseRequest(SessionListRequestSchema, p ?? {}, "session list request");
    const replies = await fanOut(s.upstream.snapshot, req, WorkerSnapshotReplySchema);
    const list = replies.flatMap((r) => r.sessions).sort((a, b) => a.gatewayName.localeCompare(b.gatewayName) || a.sid.localeCompare(b.sid));
    return { workers: replies.map((r) => r.worker).sort(), sessions: list };
  });
  ctx.admin.endpoint(s.admin.sessionEvict, async (p) => {
    const req = parseRequest(SessionEvictRequestSchema, p, "session evict request");
    const replies = await fanOut(s.upstream.evict, req, WorkerEvictReplySchema);
    return { evicted: replies.reduce((n, r) => n + r.evicted, 0), workers: replies.map((r) => r.worker).sort() };
  });
  ctx.admin.endpoint(s.admin.drain, async (p) => {
    const req = parseRequest(DrainRequestSchema, p ?? {}, "drain request");
    const replies = await fanOut(s.upstream.evict, { all: true, reason: req.reason ? `drain: ${req.reason}` : "drain" }, WorkerEvictReplySchema);
    return { evicted: replies.reduce((n, r) => n + r.evicted, 0), workers: replies.map((r) => r.worker).sort() };
  });
  // the events that can evict a session: an add or a list_changed never does, so they are not sent here
  const events = await followEvents(stores.js, stores.streamName, [s.evt.gatewayKind("updated"), s.evt.gatewayKind("removed"), s.evt.sessionAll], onEvent, opts);

  /**
   * For this worker's own edge: an actor that holds its claim here takes calls in process; a
   * session nobody hosts is placed here while this worker takes spawns (the same activation
   * and claim as a spawn: a key hosted elsewhere is served there).
   */
  const local: LocalUpstreams = {
    actor(sid, gid) {
      const a = actors.get(keyOf(sid, gid));
      return a && a.claimRevision > 0 && a.serving() ? a.local : undefined;
    },
    activate: (sid, gid, spawn, trace) => (stopping ? null : activateOrHandOver(sid, gid, spawn, trace, { connectEarly: true })),
    prepare(session, gid, spawn, trace) {
      const sid = session.record.sid;
      if (stopping || actors.has(keyOf(sid, gid))) return;
      // best effort: should it fail, the first call activates the session again and reports why
      activate(sid, gid, spawn, trace, { session, connectEarly: true }).catch((err: unknown) => log.debug({ sid, gid, err: err instanceof Error ? err.message : String(err) }, "upstream session not opened early"));
    },
  };

  function drain(): void {
    stopping = true;
    // the queue group sends new sessions to the other workers
    spawns.unsubscribe();
    for (const a of [...actors.values(), ...closing]) a.actor.send({ type: "DRAIN" });
  }

  return {
    local,
    sessions: () => snapshot({}),
    sweepStaleClaims,
    drain,
    async stop() {
      stopping = true;
      stopCatchingUp();
      subs.forEach((sub) => sub.unsubscribe());
      clearInterval(usageTimer);
      clearTimeout(sweepTimer);
      listChanged.flush();
      await events.stop();
      await Promise.allSettled([...activating.values()]);
      const all = [...actors.values(), ...closing];
      // calls in flight finish within shutdownTimeout, then each session closes (bounded by its machine)
      drain();
      const bound = new Promise<void>((r) => setTimeout(r, 3 * config.intervals.shutdownTimeout + 250).unref());
      await Promise.race([Promise.allSettled(all.map((a) => a.done)), bound]);
      const report = usageReport();
      if (report) publishCore(nc, s.evt.usage, report);
      log.info({ closed: all.length }, "upstream sessions closed");
    },
  };
}

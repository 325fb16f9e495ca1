// Hosts upstream session actors on this worker: each actor is the address
// `<p>.upstream.<sid>.<gid>.*`, activated on request (spawn, queue group), owned through a
// claim in the sessions bucket, evicted on events and admin requests on every worker, and
// closed in parallel when the worker stops.
import type { Subscription } from "@nats-io/transport-node";
import { ErrorCode, type Notification } from "@modelcontextprotocol/sdk/types.js";
import { SpanKind, type Span } from "@opentelemetry/api";
import { createActor, fromPromise, type Actor } from "xstate";
import { z } from "zod";
import { encodeValue, getLive, isCasConflict, parseEntry } from "../actors/kvStore.ts";
import { stateName, upstreamSessionMachine, type CloseCause, type ProbeMethod, type ProbeOutcome, type UpstreamSessionMachine } from "../actors/upstreamSession.machine.ts";
import { ProtocolError, fail, ok, parseRequest, type Envelope } from "../protocol/envelope.ts";
import { GatewayEventSchema, GatewayRecordSchema, type GatewayRecord } from "../protocol/gateway.ts";
import {
  ClientNotificationSchema,
  DrainRequestSchema,
  SessionClosedEventSchema,
  SessionEvictRequestSchema,
  SessionListRequestSchema,
  SpawnRequestSchema,
  UpstreamCallRequestSchema,
  UpstreamClaimSchema,
  UpstreamNotifyRequestSchema,
  WorkerEvictReplySchema,
  WorkerEvictRequestSchema,
  WorkerSnapshotReplySchema,
  WorkerSnapshotRequestSchema,
  type ClientNotification,
  type UpstreamCallReply,
  type UpstreamSessionInfo,
} from "../protocol/upstream.ts";
import type { GatewayUsage, UsageReport } from "../protocol/usage.ts";
import { KEYS, QUEUE } from "../protocol/subjects.ts";
import { decodeJson, encodeJson, errorReply, gather, isNoResponders, listen, serve } from "./bus.ts";
import { followEvents, publishCore, publishEvent } from "./events.ts";
import { callMessageLimit, publishWhole, wholeRequests, type WholeRequest } from "./largeMessages.ts";
import type { Logger } from "./logger.ts";
import { AnswerTooLargeError, closeWithin, connectUpstream, UpstreamRequestError, type UpstreamConnection } from "./mcpClient.ts";
import { gatewayScrubber, scrubbedError, type Scrubber } from "./secretScrubber.ts";
import { endSpan, natsTraceHeaders, traceHeadersOf, traceIdOf, type TraceHeaders } from "./tracing.ts";
import type { Hosted, WorkerContext } from "./worker.ts";

/** How long a fan-out (session list, evict, drain) waits for one more worker to answer. */
const FANOUT_STALL_MS = 300;
const FANOUT_MAX_MS = 3_000;
const LIVENESS_TIMEOUT_MS = 1_000;
/**
 * Upstream list_changed notices of one gateway list: the first is published at once, any
 * more within this window become one event at its end (a change right after the first is not lost).
 */
const LIST_CHANGED_COALESCE_MS = 1_000;

type Call = {
  id: string;
  req: z.infer<typeof UpstreamCallRequestSchema>;
  msg: WholeRequest;
  timer: NodeJS.Timeout;
  abort: AbortController;
  cancelled: boolean;
  settled: boolean;
  /** the session actor's span of this call, a child of the caller's (NATS headers) */
  span: Span;
  /** logs with the call's trace id */
  log: Logger;
};

type Session = {
  sid: string;
  gid: string;
  key: string;
  record: GatewayRecord;
  createdAt: number;
  lastUsedAt: number | null;
  useCount: number;
  /** claiming: subscribed, buffering; live: serving; closing: address gone */
  phase: "claiming" | "live" | "closing";
  /** an eviction matched while claiming (its record may already be stale): closed as soon as it starts */
  evictedWhileClaiming: { reason: string; cause: CloseCause } | null;
  buffered: WholeRequest[];
  sub: Subscription;
  claimRevision: number;
  conn: UpstreamConnection | null;
  calls: Map<string, Call>;
  latestHeaders: Record<string, string>;
  /** masks this gateway's secrets in everything the upstream answers or fails with */
  scrub: Scrubber;
  actor: Actor<UpstreamSessionMachine>;
  done: Promise<void>;
};

export type UpstreamHost = Hosted & {
  /** live and closing actors of this worker */
  sessions(): UpstreamSessionInfo[];
  /** deletes claims no actor answers for (left by workers that died); how many */
  sweepStaleClaims(): Promise<number>;
};

/** How often each worker looks for claims left by dead workers (at a random phase). */
const CLAIM_SWEEP_MS = 10 * 60_000;

export async function startUpstreamHost(ctx: WorkerContext): Promise<UpstreamHost> {
  const { nc, s, stores, config } = ctx;
  const log = ctx.log.child({ actor: "upstream" });
  const me = config.workerId;
  const shutdownMs = config.intervals.shutdownTimeout;
  /** an upstream's answer is held to the edge's body limit; the call's request, with what wraps it, to a little more */
  const answerLimit = config.edge.maxBodyBytes;
  const requestLimit = callMessageLimit(config.edge.maxBodyBytes);
  /** the one live (or claiming) actor per key on this worker */
  const live = new Map<string, Session>();
  const closing = new Set<Session>();
  const activating = new Map<string, Promise<{ worker: string; created: boolean }>>();
  const usage = new Map<string, { uses: number; lastUsedAt: number | null }>();
  /** open coalescing windows per `<gid>.<list>`; `again` when a notice came during the window */
  const listChangedWindows = new Map<string, { timer: NodeJS.Timeout; again: boolean; publish: () => void }>();
  let stopping = false;
  let callSeq = 0;

  const keyOf = (sid: string, gid: string) => `${sid}.${gid}`;
  const gatewayLabel = (r: GatewayRecord) => `${r.name} (${r.id})`;

  function infoOf(x: Session): UpstreamSessionInfo {
    const snap = x.actor.getSnapshot();
    return {
      sid: x.sid,
      gid: x.gid,
      gatewayName: x.record.name,
      state: x.phase === "claiming" ? "activating" : snap.status === "done" ? "closed" : stateName(snap.value),
      worker: me,
      createdAt: new Date(x.createdAt).toISOString(),
      lastUsedAt: x.lastUsedAt === null ? null : new Date(x.lastUsedAt).toISOString(),
      useCount: x.useCount,
      ageMs: Math.max(0, Date.now() - x.createdAt),
    };
  }

  function respond(msg: WholeRequest, env: Envelope<unknown>): void {
    if (msg.reply) publishWhole(nc, msg.reply, encodeJson(env));
  }

  // ---- one actor ----

  async function loadGateway(gid: string): Promise<GatewayRecord> {
    const e = await getLive(stores.gateways, KEYS.gateway(gid));
    const record = parseEntry(GatewayRecordSchema, e);
    if (!record) throw new ProtocolError("unavailable", `gateway ${gid} is not registered`);
    if (!record.enabled) throw new ProtocolError("unavailable", `gateway ${gatewayLabel(record)} is disabled`);
    return record;
  }

  function createSession(sid: string, gid: string, record: GatewayRecord, headers: Record<string, string>): Session {
    const x = { sid, gid, key: keyOf(sid, gid), record, createdAt: Date.now(), lastUsedAt: null, useCount: 0 } as Session;
    x.phase = "claiming";
    x.evictedWhileClaiming = null;
    x.buffered = [];
    x.claimRevision = 0;
    x.conn = null;
    x.calls = new Map();
    x.latestHeaders = headers;
    x.scrub = gatewayScrubber(record, (sealed, id) => ctx.box.open(sealed, id));
    const receive = wholeRequests(nc, requestLimit, (req) => onActorMessage(x, req));
    // every part of a request carries its requester's inbox, so the guard sees each part
    x.sub = listen(nc, s.upstream.actor(sid, gid), (msg) => receive(null, msg), { log, refusals: ctx.refusals, expect: "request" });
    x.actor = createActor(provideEffects(x));
    x.done = new Promise<void>((resolve) => x.actor.subscribe({ complete: () => resolve(), error: () => resolve() }));
    return x;
  }

  function provideEffects(x: Session) {
    return upstreamSessionMachine.provide({
      actors: {
        connect: fromPromise<void>(async ({ signal }) => {
          const previous = x.conn;
          x.conn = null;
          // grace, then force, for a connection replaced after a failed probe
          if (previous) void closeWithin(previous, shutdownMs);
          // declared before the connect: the transport may report a close while it is still connecting
          let conn: Awaited<ReturnType<typeof connectUpstream>> | null = null;
          const open = (sealed: string, gid: string) => ctx.box.open(sealed, gid);
          conn = await connectUpstream({
            record: x.record,
            open,
            initialHeaders: () => x.latestHeaders,
            timeoutMs: config.intervals.callTimeout,
            outbound: config.outbound,
            // the raw answer (SSE framing, JSON-RPC envelope) may be a little larger than the result it carries
            maxAnswerBytes: requestLimit,
            signal,
            onNotification: (n) => onUpstreamNotification(x, n),
            onClosed: () => {
              if (conn !== null && x.conn === conn) x.actor.send({ type: "CLOSE", reason: "the upstream closed the connection", cause: "upstream_closed" });
            },
            onError: (err) => log.debug({ gid: x.gid, err: x.scrub.text(err.message) }, "upstream transport reported an error"),
          }).catch((err: unknown) => {
            // its text becomes the close reason, which the spawner answers with
            throw scrubbedError(err, x.scrub);
          });
          if (signal.aborted) {
            conn.forceClose();
            throw new Error("closed while connecting");
          }
          x.conn = conn;
          log.debug({ sid: x.sid, gid: x.gid }, "upstream session connected");
        }),
        probe: fromPromise<ProbeOutcome, { method: ProbeMethod }>(async ({ input }) => {
          const outcome = await x.conn!.request({ method: input.method }, { headers: x.latestHeaders, signal: AbortSignal.timeout(config.intervals.probeTimeout) });
          // any answer, even an error, shows the session alive
          return "rpcError" in outcome && outcome.rpcError.code === ErrorCode.MethodNotFound ? "method_not_found" : "ok";
        }),
        closeGracefully: fromPromise<void>(async () => {
          await x.conn?.close();
        }),
        forceClose: fromPromise<void>(async () => {
          x.conn?.forceClose();
        }),
      },
      actions: {
        startCalls: (_, p) => p.callIds.forEach((id) => void runCall(x, id)),
        failCalls: (_, p) => p.callIds.forEach((id) => failCall(x, id, p.reason)),
        stopAccepting: () => retire(x),
        giveUp: (_, p) => log.error({ sid: x.sid, gid: x.gid, reason: p.reason }, "upstream session did not close within 2× shutdownTimeout; abandoned"),
      },
      delays: {
        idleValidation: config.intervals.idleValidation,
        sessionIdleTtl: config.intervals.sessionIdleTtl,
        probeTimeout: config.intervals.probeTimeout,
        shutdownTimeout: shutdownMs,
      },
    });
  }

  /** The address goes away at once; the close runs on. */
  function retire(x: Session): void {
    if (x.phase === "closing") return;
    x.phase = "closing";
    x.sub.unsubscribe();
    if (live.get(x.key) === x) live.delete(x.key);
    closing.add(x);
  }

  async function afterClosed(x: Session): Promise<void> {
    retire(x);
    for (const call of x.calls.values()) settle(x, call, fail("unavailable", `upstream session to gateway ${gatewayLabel(x.record)} closed`));
    closing.delete(x);
    // every way into `closing` names its cause
    ctx.metrics.upstreamSessionClosed(x.record.name, x.actor.getSnapshot().context.closeCause!);
    x.actor.stop();
    // only our own claim: a successor may already hold the key
    await stores.sessions.delete(KEYS.upstreamClaim(x.sid, x.gid), { previousSeq: x.claimRevision }).catch(() => {});
    log.debug({ sid: x.sid, gid: x.gid }, "upstream session closed");
  }

  function onActorMessage(x: Session, msg: WholeRequest): void {
    const op = s.parseUpstream(msg.subject)?.op;
    if (op === "status") return respond(msg, ok(infoOf(x)));
    if (x.phase === "claiming") return void x.buffered.push(msg);
    if (x.phase === "closing") {
      // Sent before the address went away: answered here, or it would wait out its timeout.
      // It never reached the upstream, so the caller may try again.
      if (op === "call") respond(msg, fail("unavailable", `gateway ${gatewayLabel(x.record)}: ${closeReasonOf(x)}`));
      return;
    }
    try {
      const payload = decodeJson(msg.data);
      if (op === "call") return receiveCall(x, msg, parseRequest(UpstreamCallRequestSchema, payload, "upstream call"));
      if (op === "notify") {
        const n = parseRequest(UpstreamNotifyRequestSchema, payload, "upstream notification");
        for (const call of x.calls.values()) {
          if (call.req.requestId === n.params.requestId && !call.cancelled) {
            call.cancelled = true;
            call.abort.abort(n.params.reason ?? "cancelled by the client");
          }
        }
        return respond(msg, ok({}));
      }
      if (op === "close") {
        x.actor.send({ type: "CLOSE", reason: "closed on request", cause: "requested" });
        void x.done.then(() => respond(msg, ok({ closed: true })));
        return;
      }
      respond(msg, fail("invalid_request", `unknown upstream operation ${String(op)}`));
    } catch (err) {
      respond(msg, errorReply(err, log, msg.subject));
    }
  }

  function receiveCall(x: Session, msg: WholeRequest, req: z.infer<typeof UpstreamCallRequestSchema>): void {
    const id = String(++callSeq);
    const timeoutMs = req.timeoutMs ?? config.intervals.callTimeout;
    const span = ctx.tracing.startSpan(`session ${req.method}`, {
      kind: SpanKind.SERVER,
      parent: natsTraceHeaders(msg.headers),
      attributes: { "mcp.method.name": req.method, "mcpgw.gateway": x.record.name },
    });
    const call = { id, req, msg, abort: new AbortController(), cancelled: false, settled: false, span } as Call;
    call.log = log.child({ traceId: traceIdOf(span) });
    // Every call is answered by its deadline, whatever the upstream does, and its upstream
    // request is released then (the SDK forgets it and tells the upstream; its HTTP request ends).
    call.timer = setTimeout(() => {
      try {
        settle(x, call, timeoutReply(x, req.method, timeoutMs));
      } finally {
        call.abort.abort(`timed out after ${timeoutMs} ms`);
      }
    }, timeoutMs);
    x.calls.set(id, call);
    x.useCount += 1;
    x.lastUsedAt = Date.now();
    x.latestHeaders = req.headers;
    const u = usage.get(x.gid) ?? { uses: 0, lastUsedAt: null };
    usage.set(x.gid, { uses: u.uses + 1, lastUsedAt: x.lastUsedAt });
    x.actor.send({ type: "CALL", callId: id });
  }

  function timeoutReply(x: Session, method: string, ms: number): Envelope<never> {
    return fail("timeout", `gateway ${gatewayLabel(x.record)} did not answer ${method} within ${ms} ms`);
  }

  function settle(x: Session, call: Call, env: Envelope<UpstreamCallReply>): void {
    if (call.settled) return;
    call.settled = true;
    clearTimeout(call.timer);
    x.calls.delete(call.id);
    const outcome = !env.ok ? env.error.code : "rpcError" in env.data ? "upstream_error" : "ok";
    endSpan(call.span, !env.ok ? env.error.message : "rpcError" in env.data ? env.data.rpcError.message : undefined);
    call.log.debug({ sid: x.sid, gid: x.gid, method: call.req.method, outcome }, "upstream call answered");
    if (!call.msg.reply) return;
    let data: Uint8Array;
    try {
      data = encodeJson(env);
    } catch (err) {
      // a value JSON cannot write (nested past the stack): the upstream's, not ours
      data = encodeJson(fail("unavailable", `gateway ${gatewayLabel(x.record)} answered ${call.req.method} with a value that cannot be forwarded: ${(err as Error).message}`));
    }
    if (data.length > answerLimit) {
      data = encodeJson(fail("too_large", `gateway ${gatewayLabel(x.record)} answered ${call.req.method} with ${data.length} bytes, over the limit of ${answerLimit} bytes`));
    }
    publishWhole(nc, call.msg.reply, data);
  }

  function failCall(x: Session, id: string, reason: string): void {
    const call = x.calls.get(id);
    if (call) settle(x, call, fail("unavailable", `gateway ${gatewayLabel(x.record)}: ${reason}`));
  }

  async function runCall(x: Session, id: string): Promise<void> {
    const call = x.calls.get(id);
    let transportFailed = false;
    try {
      if (!call || call.settled) return;
      if (call.cancelled) return settle(x, call, fail("unavailable", "cancelled by the client"));
      const conn = x.conn;
      if (!conn) return settle(x, call, fail("unavailable", `gateway ${gatewayLabel(x.record)}: not connected`));
      const { params, progressToken } = splitProgressToken(call.req.params);
      const upstreamSpan = ctx.tracing.startSpan(`upstream ${call.req.method}`, { kind: SpanKind.CLIENT, parent: call.span, attributes: { "mcp.method.name": call.req.method } });
      try {
        const outcome = await conn.request(
          { method: call.req.method, params },
          {
            headers: call.req.headers,
            trace: traceHeadersOf(upstreamSpan),
            signal: call.abort.signal,
            onprogress:
              progressToken === undefined
                ? undefined
                : (p) =>
                    publishClientNotification(x.sid, {
                      gid: x.gid,
                      requestId: call.req.requestId,
                      notification: { method: "notifications/progress", params: { ...p, progressToken } },
                    }),
          },
        );
        // the code only: the message may echo a secret (the client's copy is scrubbed below)
        endSpan(upstreamSpan, "rpcError" in outcome ? `JSON-RPC error ${outcome.rpcError.code}` : undefined);
        // an upstream's error (JSON-RPC or tool error) goes back as it came, its echo of our secrets masked
        if ("rpcError" in outcome) return settle(x, call, ok({ rpcError: x.scrub.value(outcome.rpcError) }));
        settle(x, call, ok({ result: outcome.result.isError === true ? x.scrub.value(outcome.result) : outcome.result }));
      } catch (err) {
        endSpan(upstreamSpan, scrubbedError(err, x.scrub).message);
        // timed out (answered already) or cancelled
        if (call.abort.signal.aborted) return settle(x, call, fail("unavailable", "cancelled by the client"));
        if (err instanceof AnswerTooLargeError) {
          return settle(x, call, fail("too_large", `gateway ${gatewayLabel(x.record)} answered ${call.req.method} with more than ${err.bytesRead} bytes, over the limit of ${answerLimit} bytes`));
        }
        const reason = scrubbedError(err, x.scrub).message;
        // Only a failure of the current connection evicts: one replaced after a failed idle
        // probe fails its leftover calls, and must not take the fresh connection down with it.
        transportFailed = err instanceof UpstreamRequestError && err.transport && x.conn === conn;
        if (transportFailed) call.log.warn({ sid: x.sid, gid: x.gid, err: reason }, "upstream transport error; the session will be recreated");
        const what = err instanceof UpstreamRequestError && err.transport ? "upstream transport error" : `invalid answer to ${call.req.method}`;
        settle(x, call, fail("unavailable", `gateway ${gatewayLabel(x.record)}: ${what}: ${reason}`));
      }
    } catch (err) {
      // nothing an upstream sends may throw out of a call (an unhandled rejection ends the worker)
      log.error({ sid: x.sid, gid: x.gid, err: scrubbedError(err, x.scrub).message }, "upstream call failed");
      if (call) settle(x, call, fail("internal", "internal error; see the worker's log"));
    } finally {
      x.actor.send({ type: "CALL_DONE", callId: id, transportFailed });
    }
  }

  function publishClientNotification(sid: string, n: ClientNotification): void {
    try {
      publishCore(nc, s.upstream.clientNotification(sid), ClientNotificationSchema.parse(n));
    } catch (err) {
      // a notification is not worth parts (progress and logs are loss-tolerant); one over max_payload is dropped
      log.warn({ sid, gid: n.gid, method: n.notification.method, err: (err as Error).message }, "upstream notification not relayed");
    }
  }

  function onUpstreamNotification(x: Session, n: Notification): void {
    const listChanged = /^notifications\/(tools|prompts|resources)\/list_changed$/.exec(n.method);
    if (listChanged) {
      const list = listChanged[1] as "tools" | "prompts" | "resources";
      const key = `${x.gid}.${list}`;
      const open = listChangedWindows.get(key);
      if (open) return void (open.again = true);
      const gid = x.gid;
      const publish = () => {
        const event = { type: "list_changed", gid, at: new Date().toISOString(), lists: [list] };
        publishEvent(stores.js, s.evt.gateway(gid, "list_changed"), event).catch((err) => log.warn({ err, gid }, "cannot publish list_changed"));
      };
      const openWindow = () => {
        const w = {
          again: false,
          publish,
          timer: setTimeout(() => {
            listChangedWindows.delete(key);
            if (!w.again) return;
            publish();
            openWindow();
          }, LIST_CHANGED_COALESCE_MS),
        };
        listChangedWindows.set(key, w);
      };
      publish();
      openWindow();
      return;
    }
    if (n.method === "notifications/message" || n.method === "notifications/resources/updated") {
      publishClientNotification(x.sid, { gid: x.gid, notification: { method: n.method, params: n.params as Record<string, unknown> | undefined } });
    }
  }

  // ---- activation and ownership ----

  /** Hosts the actor for (sid, gid) here unless it is alive somewhere; exactly one wins. */
  function activate(sid: string, gid: string, headers: Record<string, string>, trace: TraceHeaders = {}): Promise<{ worker: string; created: boolean }> {
    const key = keyOf(sid, gid);
    const existing = live.get(key);
    if (existing && existing.phase === "live") return Promise.resolve({ worker: me, created: false });
    const pending = activating.get(key);
    if (pending) return pending;
    // in the trace of the call that needs the actor: claiming and connecting are part of it
    const span = ctx.tracing.startSpan("session activate", { kind: SpanKind.SERVER, parent: trace });
    const p = claimAndStart(sid, gid, headers, log.child({ traceId: traceIdOf(span) }))
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

  async function claimAndStart(sid: string, gid: string, headers: Record<string, string>, log: Logger): Promise<{ worker: string; created: boolean }> {
    if (stopping) throw new ProtocolError("unavailable", `worker ${me} is shutting down`);
    const record = await loadGateway(gid);
    const claimKey = KEYS.upstreamClaim(sid, gid);
    const claim = () => encodeValue(UpstreamClaimSchema.parse({ worker: me, since: new Date().toISOString() }));

    // Subscribe before claiming, so whoever sees the claim also finds the address.
    let x = createSession(sid, gid, record, headers);
    live.set(x.key, x);
    await nc.flush();
    try {
      x.claimRevision = await stores.sessions.create(claimKey, claim());
      return start(x, log);
    } catch (err) {
      abandon(x);
      if (!isCasConflict(err)) throw err;
    }
    // Claimed by someone: alive (answers status) or gone (no responders → take over by CAS).
    const entry = await stores.sessions.get(claimKey);
    const holder = entry?.operation === "PUT" ? UpstreamClaimSchema.safeParse(entry.json()) : null;
    const alive = await isAlive(sid, gid);
    if (alive) return { worker: holder?.success ? holder.data.worker : "unknown", created: false };
    const evicted = x.evictedWhileClaiming;
    x = createSession(sid, gid, record, headers);
    x.evictedWhileClaiming = evicted;
    live.set(x.key, x);
    await nc.flush();
    try {
      x.claimRevision =
        entry && entry.operation === "PUT"
          ? await stores.sessions.update(claimKey, claim(), entry.revision)
          : await stores.sessions.create(claimKey, claim()).catch(async (e) => {
              // a deleted key is re-created by update at its delete revision
              if (entry && isCasConflict(e)) return stores.sessions.update(claimKey, claim(), entry.revision);
              throw e;
            });
      log.info({ sid, gid, previous: holder?.success ? holder.data.worker : null }, "took over an upstream session claim whose owner is gone");
      return start(x, log);
    } catch (err) {
      abandon(x);
      if (isCasConflict(err)) return { worker: "unknown", created: false };
      throw err;
    }
  }

  /**
   * A claim whose worker died stays in KV until a spawn for its key takes it over, for good
   * when that client never comes back (nats-server 2.9 has no per-key TTL). Any worker may
   * delete a claim nobody answers for; the compare-and-swap spares one taken over meanwhile.
   */
  async function sweepStaleClaims(): Promise<number> {
    const keys: string[] = [];
    for await (const k of await stores.sessions.keys(`${KEYS.upstreamClaimPrefix}>`)) keys.push(k);
    let removed = 0;
    for (const key of keys) {
      if (stopping) break;
      const claim = KEYS.parseUpstreamClaim(key);
      if (!claim || live.has(keyOf(claim.sid, claim.gid))) continue;
      const e = await getLive(stores.sessions, key);
      if (!e || (await isAlive(claim.sid, claim.gid))) continue;
      try {
        await stores.sessions.delete(key, { previousSeq: e.revision });
        removed++;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    if (removed > 0) log.info({ removed }, "removed upstream session claims left by workers that are gone");
    return removed;
  }

  async function isAlive(sid: string, gid: string): Promise<boolean> {
    try {
      await nc.request(s.upstream.op(sid, gid, "status"), encodeJson({}), { timeout: LIVENESS_TIMEOUT_MS });
      return true;
    } catch (err) {
      // a timeout means someone is subscribed (activating): treat as alive, never steal
      return !isNoResponders(err);
    }
  }

  /** A losing claimant drops its address and whatever it buffered (the winner got the same messages). */
  function abandon(x: Session): void {
    x.sub.unsubscribe();
    if (live.get(x.key) === x) live.delete(x.key);
  }

  /**
   * Starts the actor; resolves once it is connected, so the spawner's call finds it serving.
   * A failed connect is the spawn's answer: every retry would meet the same refusal, and the
   * caller gets the reason instead of a lost call or a run of fresh actors failing one by one.
   */
  async function start(x: Session, log: Logger): Promise<{ worker: string; created: boolean }> {
    x.phase = "live";
    x.actor.start();
    void x.done.then(() => afterClosed(x));
    for (const msg of x.buffered.splice(0)) onActorMessage(x, msg);
    ctx.metrics.upstreamSessionStarted(x.record.name);
    if (stopping) x.actor.send({ type: "CLOSE", reason: "worker shutting down", cause: "shutdown" });
    else if (x.evictedWhileClaiming !== null) x.actor.send({ type: "CLOSE", ...x.evictedWhileClaiming });
    log.debug({ sid: x.sid, gid: x.gid }, "upstream session actor started");
    await connected(x);
    return { worker: me, created: true };
  }

  function connected(x: Session): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const snap = x.actor.getSnapshot();
        if (snap.status === "active" && snap.matches({ open: "ready" })) resolve();
        else if (snap.status !== "active" || !snap.matches("open")) reject(new ProtocolError("unavailable", `gateway ${gatewayLabel(x.record)}: ${closeReasonOf(x)}`));
        else return false;
        return true;
      };
      if (check()) return;
      const sub = x.actor.subscribe({ next: () => void (check() && sub.unsubscribe()), complete: () => void (check() && sub.unsubscribe()) });
    });
  }

  const closeReasonOf = (x: Session) => x.actor.getSnapshot().context.closeReason || "session closing";

  // ---- eviction ----

  function evictWhere(match: (x: Session) => boolean, cause: CloseCause, reason: string): Session[] {
    const picked = [...live.values()].filter((x) => x.phase !== "closing" && match(x));
    for (const x of picked) {
      if (x.phase === "live") x.actor.send({ type: "CLOSE", reason, cause });
      else x.evictedWhileClaiming = { reason, cause };
    }
    if (picked.length) log.info({ count: picked.length, reason }, "evicting upstream sessions");
    return picked;
  }

  async function onEvent(subject: string, payload: unknown): Promise<void> {
    if (s.parseGatewayEvent(subject)) {
      const e = GatewayEventSchema.safeParse(payload);
      if (!e.success) return;
      const ev = e.data;
      if (ev.type === "removed") evictWhere((x) => x.gid === ev.gid, "gateway_removed", "gateway removed");
      if (ev.type === "updated" && ev.connectChanged) evictWhere((x) => x.gid === ev.gid, "gateway_changed", `gateway connection changed (${ev.changedFields.join(", ")})`);
      if (ev.type === "updated" && !ev.connectChanged && ev.changedFields.includes("enabled")) {
        const disabled = await loadGateway(ev.gid).then(
          () => false,
          () => true,
        );
        if (disabled) evictWhere((x) => x.gid === ev.gid, "gateway_disabled", "gateway disabled");
      }
      return;
    }
    if (subject.endsWith(".closed")) {
      const e = SessionClosedEventSchema.safeParse(payload);
      if (e.success) evictWhere((x) => x.sid === e.data.sid, "client_session_ended", `downstream session closed (${e.data.reason})`);
    }
  }

  // ---- usage ----

  function usageReport(): UsageReport | null {
    const liveBy = new Map<string, number>();
    for (const x of live.values()) if (x.phase === "live") liveBy.set(x.gid, (liveBy.get(x.gid) ?? 0) + 1);
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
  const sweep = () => void sweepStaleClaims().catch((err) => log.warn({ err }, "sweep of stale upstream session claims failed"));
  let sweepTimer: NodeJS.Timeout = setTimeout(function again() {
    sweep();
    sweepTimer = setTimeout(again, CLAIM_SWEEP_MS).unref();
  }, Math.random() * CLAIM_SWEEP_MS).unref();

  // ---- subscriptions ----

  const snapshot = (filter: { sid?: string | undefined; gid?: string | undefined }) =>
    [...live.values(), ...closing]
      .filter((x) => x.phase !== "claiming" && (!filter.sid || x.sid === filter.sid) && (!filter.gid || x.gid === filter.gid))
      .map(infoOf);

  /** Asks every worker; gathers answers until none has come for a short while. */
  const fanOut = <T extends z.ZodType>(subject: string, payload: unknown, schema: T) =>
    gather(nc, subject, payload, schema, { stallMs: FANOUT_STALL_MS, maxMs: FANOUT_MAX_MS });

  const opts = { log, refusals: ctx.refusals };
  const subs: Subscription[] = [
    serve(nc, s.upstream.spawn, (p, msg) => {
      const req = parseRequest(SpawnRequestSchema, p, "spawn request");
      return activate(req.sid, req.gid, req.headers ?? {}, natsTraceHeaders(msg.headers));
    }, { ...opts, queue: QUEUE.spawn }),
    serve(nc, s.upstream.snapshot, (p) => ({ worker: me, sessions: snapshot(parseRequest(WorkerSnapshotRequestSchema, p, "snapshot request")) }), opts),
    serve(nc, s.upstream.evict, (p) => {
      const req = parseRequest(WorkerEvictRequestSchema, p, "evict request");
      const picked = evictWhere(
        (x) => req.all === true || ((!req.sid || x.sid === req.sid) && (!req.gid || x.gid === req.gid)),
        req.all ? "drain" : "evicted",
        req.reason ?? (req.all ? "drain" : "evicted by an operator"),
      );
      return { worker: me, evicted: picked.length };
    }, opts),
  ];
  ctx.admin.endpoint(s.admin.sessionList, async (p) => {
    const req = parseRequest(SessionListRequestSchema, p ?? {}, "session list request");
    const replies = await fanOut(s.upstream.snapshot, req, WorkerSnapshotReplySchema);
    const sessions = replies.flatMap((r) => r.sessions).sort((a, b) => a.gatewayName.localeCompare(b.gatewayName) || a.sid.localeCompare(b.sid));
    return { workers: replies.map((r) => r.worker).sort(), sessions };
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
  const events = await followEvents(stores.js, stores.streamName, [s.evt.gatewayAll, s.evt.sessionAll], onEvent, opts);

  return {
    sessions: () => snapshot({}),
    sweepStaleClaims,
    async stop() {
      stopping = true;
      subs.forEach((sub) => sub.unsubscribe());
      clearInterval(usageTimer);
      clearTimeout(sweepTimer);
      for (const w of listChangedWindows.values()) {
        clearTimeout(w.timer);
        if (w.again) w.publish();
      }
      listChangedWindows.clear();
      await events.stop();
      await Promise.allSettled([...activating.values()]);
      const all = [...live.values(), ...closing];
      for (const x of live.values()) if (x.phase === "live") x.actor.send({ type: "CLOSE", reason: "worker shutting down", cause: "shutdown" });
      // Every close is bounded by the machine (2× shutdownTimeout); this only guards against a bug.
      const bound = new Promise<void>((r) => setTimeout(r, 2 * shutdownMs + 250).unref());
      await Promise.race([Promise.allSettled(all.map((x) => x.done)), bound]);
      const report = usageReport();
      if (report) publishCore(nc, s.evt.usage, report);
      log.info({ closed: all.length }, "upstream sessions closed");
    },
  };
}

/**
 * Takes the downstream progress token out of a request's `_meta`: the SDK puts its own
 * there, and progress is re-labelled with the downstream token on the way back.
 */
export function splitProgressToken(params: Record<string, unknown> | undefined): { params: Record<string, unknown> | undefined; progressToken: string | number | undefined } {
  const meta = params?._meta as Record<string, unknown> | undefined;
  const token = meta?.progressToken;
  if (!params || (typeof token !== "string" && typeof token !== "number")) return { params, progressToken: undefined };
  const { progressToken: _dropped, ...restMeta } = meta!;
  const { _meta: _old, ...rest } = params;
  return { params: Object.keys(restMeta).length ? { ...rest, _meta: restMeta } : rest, progressToken: token };
}

// One upstream session actor on this worker: its machine (actors/upstreamSession/machine.ts,
// one for the process) with this actor's effects in its input (connect, probe, close, calls), its address on the bus, and the
// relay of what its upstream says to the client (clientChannel.ts); its calls: upstreamCalls.ts.
import type { Subscription } from "@nats-io/transport-node";
import { ErrorCode, type Notification } from "@modelcontextprotocol/sdk/types.js";
import { SpanKind, type Span } from "@opentelemetry/api";
import { createActor, type Actor } from "xstate";
import { endsCallAtOnce, stateName, takesCallAtOnce, upstreamSessionMachine, type ProbeMethod, type ProbeOutcome, type UpstreamSessionEffects, type UpstreamSessionMachine } from "../../actors/upstreamSession/machine.ts";
import type { LoggingLevel } from "../../protocol/edge.ts";
import { fail, ok, parseRequest, type Envelope } from "../../protocol/envelope.ts";
import type { GatewayRecord } from "../../protocol/gateway.ts";
import {
  SessionWideMessageSchema,
  UpstreamAnswerRequestSchema,
  UpstreamCallRequestSchema,
  UpstreamNotifyRequestSchema,
  type UpstreamCallReply,
  type UpstreamSessionInfo,
} from "../../protocol/upstream.ts";
import { decodeJson, encodeJson, errorReply, listen } from "../bus.ts";
import { callMessageLimit, publishWhole, wholeRequests, type WholeRequest } from "../largeMessages.ts";
import { endSpan, natsTraceHeaders, type TraceHeaders } from "../tracing.ts";
import type { LocalActor } from "../upstreamClient.ts";
import type { Logger } from "../logger.ts";
import { closeWithin, type UpstreamConnection } from "../mcpClient.ts";
import { connectEitherEra, type EraConnection } from "../revision2026Upstream.ts";
import { gatewayScrubber, scrubbedError, type Scrubber } from "../secretScrubber.ts";
import type { LoadedSession, SessionStore } from "../sessionStore.ts";
import type { WorkerContext } from "../worker.ts";
import { clientChannel } from "./clientChannel.ts";
import { natsReplyTarget, upstreamCalls, type CallReplyTarget, type CallRequest } from "./upstreamCalls.ts";

export type UpstreamActor = {
  sid: string;
  gid: string;
  record: GatewayRecord;
  /** revision of this actor's claim (0 until won) */
  claimRevision: number;
  actor: Actor<UpstreamSessionMachine>;
  /** resolves when the machine stops: `closed` after a close, `abandoned` when its claim was lost */
  done: Promise<"closed" | "abandoned">;
  /** resolves once connected, rejects with the close reason when it closes first */
  whenReady(): Promise<void>;
  info(): UpstreamSessionInfo;
  /** what the client said to all of its upstream sessions (`upstream.sessionWide`), handed over by the host */
  sessionWide(data: Uint8Array): void;
  /** claiming or open: it serves (or will serve) calls */
  serving(): boolean;
  /** its calls from this worker's own edge, in process */
  local: LocalActor;
  closeReason(): string;
};

/** A gateway as its actors use it: its record, and the scrubber of its opened secrets (one per gateway revision, shared by its sessions). */
export type HostedGateway = { record: GatewayRecord; scrub: Scrubber };

/** Builds the shared part of a gateway for its actors. */
export function hostedGateway(record: GatewayRecord, open: (sealed: string, gid: string) => string): HostedGateway {
  return { record, scrub: gatewayScrubber(record, open) };
}

export type ActorDeps = {
  ctx: WorkerContext;
  log: Logger;
  sessions: SessionStore;
  /** an upstream's list_changed (the gateway-wide event) */
  onListChanged(gid: string, list: "tools" | "prompts" | "resources"): void;
  /** a call arrived (usage reports) */
  onUse(gid: string): void;
};

const LIST_CHANGED = /^notifications\/(tools|prompts|resources)\/list_changed$/;

/** The client session record the host has begun reading for a new actor's first connect, and the activation's span (its parent). */
export type ActorStart = { session?: Promise<LoadedSession | null>; span?: Span; connectEarly?: boolean };

/**
 * `start.capabilities`: what a stateless client declared (it has no `ds.<sid>`; a session's
 * record, as this worker recalls it, wins). `start.session`: the client session record, already
 * being read; the first connect waits for it only when this worker recalls no capabilities of the
 * session; a reconnect reads it again. The era discovery found and the gateway's record are the
 * worker's in-memory copies. `start.connectEarly`: the first connect begins now, while the host
 * claims the key.
 */
export function createUpstreamActor(
  deps: ActorDeps,
  sid: string,
  gid: string,
  gateway: HostedGateway,
  headers: Record<string, string>,
  start: ActorStart & { capabilities?: Record<string, unknown> } = {},
): UpstreamActor {
  const { ctx, log } = deps;
  const { nc, s, config } = ctx;
  const shutdownMs = config.intervals.shutdownTimeout;
  /** a call's request, with what wraps it, is held to a little more than the edge's body limit */
  const requestLimit = callMessageLimit(config.edge.maxBodyBytes);
  const { record, scrub } = gateway;
  const label = `${record.name} (${record.id})`;
  const channel = clientChannel({
    nc,
    s,
    sid,
    gid,
    log,
    answerTimeoutMs: config.intervals.callTimeout,
    onRelayed: (method) => ctx.metrics.relayedRequests.inc({ gateway: record.name, method }),
  });
  const createdAt = Date.now();
  let lastUsedAt: number | null = null;
  let useCount = 0;
  let latestHeaders = headers;
  let conn: EraConnection["conn"] | null = null;
  let preloaded = start.session;
  /** the activation's span: the first connect's handshake is part of it */
  let firstSpan = start.span;
  /** the first connection, opened while the host claims the key (see the end of this function) */
  let early: Promise<Opened> | undefined;
  const earlyAbort = new AbortController();
  /** a level the client set after this actor read its session record */
  let levelSet: LoggingLevel | undefined;
  let clientCanListRoots = false;
  /** this session recorded a list of its own in the client session (`views`): withdrawn when it closes */
  let ownView = false;

  const respond = (msg: WholeRequest, env: Envelope<unknown>) => {
    if (msg.reply) publishWhole(nc, msg.reply, encodeJson(env));
  };

  const calls = upstreamCalls({
    ctx,
    log,
    sid,
    gid,
    record,
    scrub,
    channel,
    connection: () => conn,
    onDone: (callId, transportFailed) => {
      const snap = actor.getSnapshot();
      if (endsCallAtOnce(snap, transportFailed)) snap.context.calls.inflight.delete(callId);
      else actor.send({ type: "CALL_DONE", callId, transportFailed });
    },
  });

  /** One way in for every call, from the bus or from this worker's edge. */
  function receiveCall(target: CallReplyTarget, req: CallRequest, trace: TraceHeaders): void {
    useCount += 1;
    lastUsedAt = Date.now();
    latestHeaders = req.headers;
    deps.onUse(gid);
    const call = calls.receive(target, req, trace);
    const snap = actor.getSnapshot();
    // a ready session's call is a table update: the machine's transitions are for its lifecycle
    if (!takesCallAtOnce(snap)) return actor.send({ type: "CALL", call });
    snap.context.calls.admit([call], snap.context.now());
    void calls.run(call);
  }

  /** A call from this worker's edge: the request as built (validated where it crosses a worker), the answer as an object. */
  const local: LocalActor = {
    call: (req, trace, delivery) =>
      new Promise((resolve) => {
        // as on the bus: a call that finds the actor closing never reached the upstream
        if (!self.serving()) return resolve(fail("unavailable", `gateway ${label}: ${closeReason()}`));
        const handOver = (env: Envelope<UpstreamCallReply>) => {
          resolve(env);
          // the edge writes the answer before it yields: kept on the stream unless its response delivers it
          return !delivery || !delivery.streamOpen() || delivery.delivered.then((delivered) => !delivered);
        };
        // Its progress travels over NATS to the edge holding the stream (on this connection): a
        // round trip to the server brings it in first, so the answer does not overtake it.
        const answer = (env: Envelope<UpstreamCallReply>, _json: unknown, afterEvents: boolean) =>
          afterEvents ? nc.flush().then(() => handOver(env), () => handOver(env)) : handOver(env);
        receiveCall({ answer }, req.headers ? (req as CallRequest) : { ...req, headers: {} }, trace);
      }),
    cancel: (requestId) => actor.send({ type: "CANCEL", requestId, reason: "cancelled by the client" }),
  };

  // ---- what the upstream says to its client ----

  function onUpstreamNotification(n: Notification): void {
    const params = n.params as Record<string, unknown> | undefined;
    // progress no call claimed names a token the client never gave
    if (n.method === "notifications/progress") return;
    channel.notify(channel.streamOf(undefined), { method: n.method, params });
    const list = LIST_CHANGED.exec(n.method)?.[1] as "tools" | "prompts" | "resources" | undefined;
    if (!list) return;
    deps.onListChanged(gid, list);
    // from now on this client's view of that list is its upstream session's own
    ownView = true;
    deps.sessions
      .update(sid, (r) => (r.views?.[gid]?.includes(list) ? null : { ...r, views: { ...r.views, [gid]: [...(r.views?.[gid] ?? []), list] } }))
      .catch((err) => log.warn({ sid, gid, err: (err as Error).message }, "cannot record the session's own list view"));
  }

  // ---- what the client says to all of its upstream sessions ----

  async function applyLevel(c: EraConnection["conn"], level: LoggingLevel): Promise<void> {
    // a stateless upstream has no session to set a level on
    if (!("client" in c) || !c.client.getServerCapabilities()?.logging) return;
    await c.client.setLoggingLevel(level, { timeout: config.intervals.probeTimeout });
  }

  function onSessionWide(data: Uint8Array): void {
    if (!accepting) return;
    const m = SessionWideMessageSchema.safeParse(safeJson(data));
    if (!m.success) return void log.debug({ sid, gid }, "malformed session-wide message ignored");
    const c = conn;
    const failed = (err: unknown) => log.debug({ sid, gid, method: m.data.method, err: scrubbedError(err, scrub).message }, "session-wide message not applied");
    if (m.data.method === "logging/setLevel") {
      levelSet = m.data.params.level;
      if (c) applyLevel(c, levelSet).catch(failed);
    } else if (c && "client" in c && clientCanListRoots) {
      c.client.sendRootsListChanged().catch(failed);
    }
  }

  /** At connect: what the client session already asked for (its log level, its subscriptions to this gateway). */
  async function restoreSessionState(c: UpstreamConnection, level: LoggingLevel | undefined, uris: string[]): Promise<void> {
    const failed = (what: string) => (err: unknown) => log.debug({ sid, gid, err: scrubbedError(err, scrub).message }, `${what} not restored`);
    const wanted = levelSet ?? level;
    if (wanted) await applyLevel(c, wanted).catch(failed("log level"));
    if (!c.client.getServerCapabilities()?.resources?.subscribe) return;
    for (const uri of uris) await c.client.subscribeResource({ uri }, { timeout: config.intervals.probeTimeout }).catch(failed("resource subscription"));
  }

  type Opened = { opened: EraConnection; session: LoadedSession | null; lost(): boolean };

  /**
   * Opens an upstream connection with what the client session declared: not yet the actor's
   * (`conn`) until the connect effect takes it. `lost()`: the upstream closed it before then.
   */
  async function openConnection(signal: AbortSignal, span: Span | undefined): Promise<Opened> {
    // The client session record as KV has it now (its log level and subscriptions are restored
    // after the handshake); its capabilities never change after initialize, so what this worker
    // recalls of it (its edge created or read it) lets the handshake start without that read.
    const reading = (preloaded ?? deps.sessions.load(sid)).catch(() => null);
    // the era discovery found: a session connect then probes server/discover only while it is unknown
    const era = record.transport === "streamable-http" ? ctx.catalogs.era(gid) : undefined;
    preloaded = undefined;
    const recalled = deps.sessions.recall(sid)?.record.capabilities;
    const capabilities = recalled ?? start.capabilities ?? (await reading)?.record.capabilities ?? {};
    clientCanListRoots = Boolean((capabilities.roots as { listChanged?: boolean } | undefined)?.listChanged);
    // declared before the connect: the transport may report a close while it is still connecting
    let opened: EraConnection | null = null;
    let lost = false;
    const connectSpan = span && ctx.tracing.startSpan("upstream connect", { kind: SpanKind.CLIENT, parent: span });
    opened = await connectEitherEra({
      record,
      open: (sealed, id) => ctx.box.open(sealed, id),
      initialHeaders: () => latestHeaders,
      timeoutMs: config.intervals.connectTimeout,
      outbound: config.outbound,
      dispatcher: ctx.upstreamAgent,
      // the raw answer (SSE framing, JSON-RPC envelope) may be a little larger than the result it carries
      maxAnswerBytes: requestLimit,
      signal,
      // exactly what the client declared: the upstream offers through mcpgw what it offers the client directly
      capabilities,
      onNotification: onUpstreamNotification,
      onRequest: (req, { related, signal }) => channel.ask(channel.streamOf(related as CallRequest | undefined), req, signal),
      onClosed: () => {
        if (opened !== null && conn === opened.conn) actor.send({ type: "CLOSE", reason: "the upstream closed the connection", cause: "upstream_closed" });
        else lost = true;
      },
      onError: (err) => log.debug({ gid, err: scrub.text(err.message) }, "upstream transport reported an error"),
    }, era).then(
      (c) => (connectSpan && endSpan(connectSpan), c),
      (err: unknown) => {
        // its text becomes the close reason, which the spawner answers with
        const scrubbed = scrubbedError(err, scrub);
        if (connectSpan) endSpan(connectSpan, scrubbed.message);
        throw scrubbed;
      },
    );
    return { opened, session: await reading, lost: () => lost };
  }

  // ---- the machine ----

  const effects: UpstreamSessionEffects = {
    async connect(signal) {
      const previous = conn;
      conn = null;
      // grace, then force, for a connection replaced after a failed probe
      if (previous) void closeWithin(previous, shutdownMs);
      const pending = early;
      early = undefined;
      let o: Opened;
      if (pending) {
        // the connection opened while the host claimed the key: closing meanwhile aborts it too
        const onAbort = () => earlyAbort.abort();
        signal.addEventListener("abort", onAbort, { once: true });
        o = await pending.finally(() => signal.removeEventListener("abort", onAbort));
      } else o = await openConnection(signal, firstSpan);
      firstSpan = undefined;
      if (signal.aborted) {
        o.opened.conn.forceClose();
        throw new Error("closed while connecting");
      }
      if (o.lost()) throw new Error("the upstream closed the connection");
      // a stateless upstream keeps nothing between requests: no level or subscription to restore
      if (o.opened.era === "session") await restoreSessionState(o.opened.conn, o.session?.record.logLevel, o.session?.record.subscriptions?.[gid] ?? []);
      conn = o.opened.conn;
      log.debug({ sid, gid, era: o.opened.era }, "upstream session connected");
    },
    async probe(method: ProbeMethod): Promise<ProbeOutcome> {
      // the revision removed ping: the probe goes on to its next method without asking
      if (method === "ping" && !("client" in conn!)) return "method_not_found";
      const outcome = await conn!.request({ method }, { headers: latestHeaders, signal: AbortSignal.timeout(config.intervals.probeTimeout) });
      // any answer, even an error, shows the session alive
      return "rpcError" in outcome && outcome.rpcError.code === ErrorCode.MethodNotFound ? "method_not_found" : "ok";
    },
    async closeGracefully() {
      await conn?.close();
    },
    async forceClose() {
      conn?.forceClose();
    },
    startCalls: (list) => list.forEach((c) => void calls.run(c)),
    failCalls: (list, reason) => list.forEach((c) => calls.fail(c, reason)),
    abortCalls: (list, reason) => list.forEach((c) => calls.abort(c, reason)),
    stopTakingCalls: () => {
      // calls go to a new actor elsewhere; the client's answers and cancellations still come here
      address.unsubscribe();
      address = listen(nc, s.upstream.op(sid, gid, "answer"), (msg) => receive(null, msg), guard);
      extra = listen(nc, s.upstream.op(sid, gid, "notify"), (msg) => receive(null, msg), guard);
    },
    stopAccepting: () => {
      address.unsubscribe();
      extra?.unsubscribe();
      accepting = false;
    },
    giveUp: (reason) => log.error({ sid, gid, reason }, "upstream session did not close within 2× shutdownTimeout; abandoned"),
  };
  const actor = createActor(upstreamSessionMachine, {
    input: {
      effects,
      idleValidationMs: config.intervals.idleValidation,
      sessionIdleTtlMs: config.intervals.sessionIdleTtl,
      probeTimeoutMs: config.intervals.probeTimeout,
      shutdownTimeoutMs: shutdownMs,
    },
  });
  const closeReason = () => actor.getSnapshot().context.closeReason || "session closing";

  // ---- its address ----

  function onMessage(msg: WholeRequest): void {
    const op = s.parseUpstream(msg.subject)?.op;
    if (op === "status") return respond(msg, ok(info()));
    try {
      const payload = decodeJson(msg.data);
      if (op === "call") {
        // Sent before the address went away: answered here, or it would wait out its timeout.
        // It never reached the upstream, so the caller may try again.
        if (!self.serving()) return respond(msg, fail("unavailable", `gateway ${label}: ${closeReason()}`));
        const req = parseRequest(UpstreamCallRequestSchema, payload, "upstream call");
        return receiveCall(natsReplyTarget(nc, msg.reply, req.answerCopy), req, natsTraceHeaders(msg.headers));
      }
      if (op === "answer") {
        const a = parseRequest(UpstreamAnswerRequestSchema, payload, "answer");
        const outcome = channel.answer(a);
        // a draining actor shares the subject with its successor, which answers for every other id
        if (outcome === "foreign" && actor.getSnapshot().matches("draining")) return;
        return respond(msg, outcome === "answered" ? ok({}) : fail("not_found", `no request ${a.id} is waiting for an answer`));
      }
      if (op === "notify") {
        const n = parseRequest(UpstreamNotifyRequestSchema, payload, "upstream notification");
        actor.send({ type: "CANCEL", requestId: n.params.requestId, reason: "cancelled by the client" });
        return respond(msg, ok({}));
      }
      if (op === "close") {
        actor.send({ type: "CLOSE", reason: "closed on request", cause: "requested" });
        void done.then((how) => how === "closed" && respond(msg, ok({ closed: true })));
        return;
      }
      respond(msg, fail("invalid_request", `unknown upstream operation ${String(op)}`));
    } catch (err) {
      respond(msg, errorReply(err, log, msg.subject));
    }
  }

  const guard = { log, refusals: ctx.refusals, expect: "request" as const };
  const receive = wholeRequests(nc, requestLimit, onMessage);
  // every part of a request carries its requester's inbox, so the guard sees each part
  let address: Subscription = listen(nc, s.upstream.actor(sid, gid), (msg) => receive(null, msg), guard);
  let extra: Subscription | undefined;
  /** takes session-wide messages until it closes (the host's one subscription hands them over) */
  let accepting = true;

  const done = new Promise<"closed" | "abandoned">((resolve) => {
    const end = () => {
      // an upstream session opened for a claim this actor lost (or a close before its connect):
      // its handshake ends (bounded by the connect's timeout), then a polite close ends it upstream too
      if (early) {
        void early.then((o) => closeWithin(o.opened.conn, shutdownMs), () => {});
        early = undefined;
      }
      address.unsubscribe();
      extra?.unsubscribe();
      accepting = false;
      const snap = actor.getSnapshot();
      // calls a lost claim held are the holder's to answer
      if (snap.value === "abandoned") snap.context.queued.forEach(calls.forget);
      resolve(snap.value === "abandoned" ? "abandoned" : "closed");
      // its lists were this session's own: the shared catalog serves the client again
      if (ownView) {
        deps.sessions
          .update(sid, (r) => {
            if (!r.views?.[gid]) return null;
            const { [gid]: _mine, ...views } = r.views;
            return { ...r, views };
          })
          .catch((err) => log.debug({ sid, gid, err: (err as Error).message }, "cannot withdraw the session's own list view"));
      }
    };
    actor.subscribe({ complete: end, error: end });
  });

  function info(): UpstreamSessionInfo {
    const snap = actor.getSnapshot();
    return {
      sid,
      gid,
      gatewayName: record.name,
      state: snap.value === "claiming" ? "activating" : snap.status === "done" ? "closed" : stateName(snap.value),
      worker: config.workerId,
      createdAt: new Date(createdAt).toISOString(),
      lastUsedAt: lastUsedAt === null ? null : new Date(lastUsedAt).toISOString(),
      useCount,
      ageMs: Math.max(0, Date.now() - createdAt),
    };
  }

  const self: UpstreamActor = {
    sid,
    gid,
    record,
    claimRevision: 0,
    actor,
    done,
    info,
    closeReason,
    sessionWide: onSessionWide,
    local,
    serving: () => {
      const snap = actor.getSnapshot();
      return snap.status === "active" && (snap.matches("claiming") || snap.matches("open"));
    },
    whenReady: () =>
      new Promise<void>((resolve, reject) => {
        const snap = actor.getSnapshot();
        if (snap.matches({ open: "ready" })) return resolve();
        if (!self.serving()) return reject(new Error(closeReason()));
        const ready = actor.on("ready", () => (ready.unsubscribe(), closing.unsubscribe(), resolve()));
        const closing = actor.on("closing", (e) => (ready.unsubscribe(), closing.unsubscribe(), reject(new Error(e.reason))));
      }),
  };
  actor.start();
  // With connectEarly the first connection is opened at once, while the host claims the key (the
  // claim's round trip and the upstream's handshake at the same time); the connect effect takes it
  // once the claim is won. A lost claim, or a close before the connect, closes it unused: no call was sent on it.
  if (start.connectEarly) {
    early = openConnection(earlyAbort.signal, firstSpan);
    early.catch(() => {});
    firstSpan = undefined;
  }
  return self;
}

function safeJson(data: Uint8Array): unknown {
  try {
    return decodeJson(data);
  } catch {
    return null;
  }
}

// One upstream session actor on this worker: its machine (actors/upstreamSession/machine.ts)
// with the effects provided (connect, probe, close, calls), its address on the bus, and the
// relay of what its upstream says to the client (clientChannel.ts).
import type { Subscription } from "@nats-io/transport-node";
import { ErrorCode, type Notification } from "@modelcontextprotocol/sdk/types.js";
import { SpanKind, type Span } from "@opentelemetry/api";
import { createActor, fromPromise, type Actor } from "xstate";
import type { z } from "zod";
import { stateName, upstreamSessionMachine, type ProbeMethod, type ProbeOutcome, type SessionCall, type UpstreamSessionMachine } from "../../actors/upstreamSession/machine.ts";
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
import type { Logger } from "../logger.ts";
import { AnswerTooLargeError, closeWithin, connectUpstream, UpstreamRequestError, type UpstreamConnection } from "../mcpClient.ts";
import { gatewayScrubber, scrubbedError } from "../secretScrubber.ts";
import type { SessionStore } from "../sessionStore.ts";
import { endSpan, natsTraceHeaders, traceHeadersOf, traceIdOf } from "../tracing.ts";
import type { WorkerContext } from "../worker.ts";
import { clientChannel } from "./clientChannel.ts";

type CallRequest = z.infer<typeof UpstreamCallRequestSchema>;

/** A call's own effects: its reply address, deadline, abort and span. */
type Call = {
  req: CallRequest;
  msg: WholeRequest;
  abort: AbortController;
  timer: NodeJS.Timeout;
  settled: boolean;
  span: Span;
  log: Logger;
};

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
  /** claiming or open: it serves (or will serve) calls */
  serving(): boolean;
  closeReason(): string;
};

export type ActorDeps = {
  ctx: WorkerContext;
  log: Logger;
  sessions: SessionStore;
  /** an upstream's list_changed (the gateway-wide event) */
  onListChanged(gid: string, list: "tools" | "prompts" | "resources"): void;
  /** a call arrived (usage reports) */
  onUse(gid: string): void;
};

let callSeq = 0;
const LIST_CHANGED = /^notifications\/(tools|prompts|resources)\/list_changed$/;

export function createUpstreamActor(deps: ActorDeps, sid: string, gid: string, record: GatewayRecord, headers: Record<string, string>): UpstreamActor {
  const { ctx, log } = deps;
  const { nc, s, config } = ctx;
  const shutdownMs = config.intervals.shutdownTimeout;
  /** an upstream's answer is held to the edge's body limit; the call's request, with what wraps it, to a little more */
  const answerLimit = config.edge.maxBodyBytes;
  const requestLimit = callMessageLimit(config.edge.maxBodyBytes);
  const label = `${record.name} (${record.id})`;
  const scrub = gatewayScrubber(record, (sealed, id) => ctx.box.open(sealed, id));
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
  let conn: UpstreamConnection | null = null;
  /** a level the client set after this actor read its session record */
  let levelSet: LoggingLevel | undefined;
  let clientCanListRoots = false;
  /** this session recorded a list of its own in the client session (`views`): withdrawn when it closes */
  let ownView = false;

  const respond = (msg: WholeRequest, env: Envelope<unknown>) => {
    if (msg.reply) publishWhole(nc, msg.reply, encodeJson(env));
  };

  // ---- calls ----

  function settle(call: Call, env: Envelope<UpstreamCallReply>): void {
    if (call.settled) return;
    call.settled = true;
    clearTimeout(call.timer);
    const outcome = !env.ok ? env.error.code : "rpcError" in env.data ? "upstream_error" : "ok";
    endSpan(call.span, !env.ok ? env.error.message : "rpcError" in env.data ? env.data.rpcError.message : undefined);
    call.log.debug({ sid, gid, method: call.req.method, outcome }, "upstream call answered");
    let data: Uint8Array;
    try {
      data = encodeJson(env);
    } catch (err) {
      // a value JSON cannot write (nested past the stack): the upstream's, not ours
      env = fail("unavailable", `gateway ${label} answered ${call.req.method} with a value that cannot be forwarded: ${(err as Error).message}`);
      data = encodeJson(env);
    }
    if (data.length > answerLimit) {
      env = fail("too_large", `gateway ${label} answered ${call.req.method} with ${data.length} bytes, over the limit of ${answerLimit} bytes`);
      data = encodeJson(env);
    }
    if (call.msg.reply) publishWhole(nc, call.msg.reply, data);
    // then on the call's stream, for a client that lost it and resumes
    if (call.req.stream) channel.reply(call.req.stream, call.req.requestId, env);
  }

  const callOf = (c: SessionCall) => c.payload as Call;

  async function runCall(c: SessionCall): Promise<void> {
    const call = callOf(c);
    let transportFailed = false;
    try {
      if (call.settled) return;
      if (call.abort.signal.aborted) return settle(call, fail("unavailable", String(call.abort.signal.reason)));
      const current = conn;
      if (!current) return settle(call, fail("unavailable", `gateway ${label}: not connected`));
      const { params, progressToken } = splitProgressToken(call.req.params);
      const stream = channel.streamOf(call.req);
      const upstreamSpan = ctx.tracing.startSpan(`upstream ${call.req.method}`, { kind: SpanKind.CLIENT, parent: call.span, attributes: { "mcp.method.name": call.req.method } });
      try {
        const outcome = await current.request(
          { method: call.req.method, params },
          {
            headers: call.req.headers,
            trace: traceHeadersOf(upstreamSpan),
            signal: call.abort.signal,
            related: call.req,
            onprogress: progressToken === undefined ? undefined : (p) => channel.notify(stream, { method: "notifications/progress", params: { ...p, progressToken } }),
          },
        );
        // the code only: the message may echo a secret (the client's copy is scrubbed below)
        endSpan(upstreamSpan, "rpcError" in outcome ? `JSON-RPC error ${outcome.rpcError.code}` : undefined);
        // an upstream's error (JSON-RPC or tool error) goes back as it came, its echo of our secrets masked
        if ("rpcError" in outcome) return settle(call, ok({ rpcError: scrub.value(outcome.rpcError) }));
        settle(call, ok({ result: outcome.result.isError === true ? scrub.value(outcome.result) : outcome.result }));
      } catch (err) {
        endSpan(upstreamSpan, scrubbedError(err, scrub).message);
        // timed out (answered already), cancelled, or cut off by a close: the abort says which
        if (call.abort.signal.aborted) return settle(call, fail("unavailable", String(call.abort.signal.reason)));
        if (err instanceof AnswerTooLargeError) {
          return settle(call, fail("too_large", `gateway ${label} answered ${call.req.method} with more than ${err.bytesRead} bytes, over the limit of ${answerLimit} bytes`));
        }
        const reason = scrubbedError(err, scrub).message;
        // Only a failure of the current connection evicts: one replaced after a failed idle
        // probe fails its leftover calls, and must not take the fresh connection down with it.
        transportFailed = err instanceof UpstreamRequestError && err.transport && conn === current;
        if (transportFailed) call.log.warn({ sid, gid, err: reason }, "upstream transport error; the session will be recreated");
        const what = err instanceof UpstreamRequestError && err.transport ? "upstream transport error" : `invalid answer to ${call.req.method}`;
        settle(call, fail("unavailable", `gateway ${label}: ${what}: ${reason}`));
      }
    } catch (err) {
      // nothing an upstream sends may throw out of a call (an unhandled rejection ends the worker)
      log.error({ sid, gid, err: scrubbedError(err, scrub).message }, "upstream call failed");
      settle(call, fail("internal", "internal error; see the worker's log"));
    } finally {
      actor.send({ type: "CALL_DONE", callId: c.id, transportFailed });
    }
  }

  function receiveCall(msg: WholeRequest, req: CallRequest): void {
    const timeoutMs = req.timeoutMs ?? config.intervals.callTimeout;
    const span = ctx.tracing.startSpan(`session ${req.method}`, {
      kind: SpanKind.SERVER,
      parent: natsTraceHeaders(msg.headers),
      attributes: { "mcp.method.name": req.method, "mcpgw.gateway": record.name },
    });
    const call: Call = { req, msg, abort: new AbortController(), settled: false, span, log: log.child({ traceId: traceIdOf(span) }), timer: undefined as never };
    // Every call is answered by its deadline, whatever the upstream does, and its upstream
    // request is released then (the SDK forgets it and tells the upstream; its HTTP request ends).
    call.timer = setTimeout(() => {
      settle(call, fail("timeout", `gateway ${label} did not answer ${req.method} within ${timeoutMs} ms`));
      call.abort.abort(`timed out after ${timeoutMs} ms`);
    }, timeoutMs);
    useCount += 1;
    lastUsedAt = Date.now();
    latestHeaders = req.headers;
    deps.onUse(gid);
    actor.send({ type: "CALL", call: { id: String(++callSeq), requestId: req.requestId, payload: call } });
  }

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

  async function applyLevel(c: UpstreamConnection, level: LoggingLevel): Promise<void> {
    if (!c.client.getServerCapabilities()?.logging) return;
    await c.client.setLoggingLevel(level, { timeout: config.intervals.probeTimeout });
  }

  function onSessionWide(data: Uint8Array): void {
    const m = SessionWideMessageSchema.safeParse(safeJson(data));
    if (!m.success) return void log.debug({ sid, gid }, "malformed session-wide message ignored");
    const c = conn;
    const failed = (err: unknown) => log.debug({ sid, gid, method: m.data.method, err: scrubbedError(err, scrub).message }, "session-wide message not applied");
    if (m.data.method === "logging/setLevel") {
      levelSet = m.data.params.level;
      if (c) applyLevel(c, levelSet).catch(failed);
    } else if (c && clientCanListRoots) {
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

  // ---- the machine ----

  const machine = upstreamSessionMachine.provide({
    actors: {
      connect: fromPromise<void>(async ({ signal }) => {
        const previous = conn;
        conn = null;
        // grace, then force, for a connection replaced after a failed probe
        if (previous) void closeWithin(previous, shutdownMs);
        const session = await deps.sessions.load(sid).catch(() => null);
        const capabilities = session?.record.capabilities ?? {};
        clientCanListRoots = Boolean((capabilities.roots as { listChanged?: boolean } | undefined)?.listChanged);
        // declared before the connect: the transport may report a close while it is still connecting
        let opened: UpstreamConnection | null = null;
        opened = await connectUpstream({
          record,
          open: (sealed, id) => ctx.box.open(sealed, id),
          initialHeaders: () => latestHeaders,
          timeoutMs: config.intervals.callTimeout,
          outbound: config.outbound,
          // the raw answer (SSE framing, JSON-RPC envelope) may be a little larger than the result it carries
          maxAnswerBytes: requestLimit,
          signal,
          // exactly what the client declared: the upstream offers through mcpgw what it offers the client directly
          capabilities,
          onNotification: onUpstreamNotification,
          onRequest: (req, { related, signal }) => channel.ask(channel.streamOf(related as CallRequest | undefined), req, signal),
          onClosed: () => {
            if (opened !== null && conn === opened) actor.send({ type: "CLOSE", reason: "the upstream closed the connection", cause: "upstream_closed" });
          },
          onError: (err) => log.debug({ gid, err: scrub.text(err.message) }, "upstream transport reported an error"),
        }).catch((err: unknown) => {
          // its text becomes the close reason, which the spawner answers with
          throw scrubbedError(err, scrub);
        });
        if (signal.aborted) {
          opened.forceClose();
          throw new Error("closed while connecting");
        }
        await restoreSessionState(opened, session?.record.logLevel, session?.record.subscriptions?.[gid] ?? []);
        conn = opened;
        log.debug({ sid, gid }, "upstream session connected");
      }),
      probe: fromPromise<ProbeOutcome, { method: ProbeMethod }>(async ({ input }) => {
        const outcome = await conn!.request({ method: input.method }, { headers: latestHeaders, signal: AbortSignal.timeout(config.intervals.probeTimeout) });
        // any answer, even an error, shows the session alive
        return "rpcError" in outcome && outcome.rpcError.code === ErrorCode.MethodNotFound ? "method_not_found" : "ok";
      }),
      closeGracefully: fromPromise<void>(async () => {
        await conn?.close();
      }),
      forceClose: fromPromise<void>(async () => {
        conn?.forceClose();
      }),
    },
    actions: {
      startCalls: (_, p) => p.calls.forEach((c) => void runCall(c)),
      failCalls: (_, p) => p.calls.forEach((c) => settle(callOf(c), fail("unavailable", `gateway ${label}: ${p.reason}`))),
      abortCalls: (_, p) => p.calls.forEach((c) => callOf(c).abort.abort(`gateway ${label}: ${p.reason}`)),
      stopTakingCalls: () => {
        // calls go to a new actor elsewhere; the client's answers and cancellations still come here
        address.unsubscribe();
        address = listen(nc, s.upstream.op(sid, gid, "answer"), (msg) => receive(null, msg), guard);
        extra = listen(nc, s.upstream.op(sid, gid, "notify"), (msg) => receive(null, msg), guard);
      },
      stopAccepting: () => {
        address.unsubscribe();
        extra?.unsubscribe();
        sessionWide.unsubscribe();
      },
      giveUp: (_, p) => log.error({ sid, gid, reason: p.reason }, "upstream session did not close within 2× shutdownTimeout; abandoned"),
    },
    delays: {
      idleValidation: config.intervals.idleValidation,
      sessionIdleTtl: config.intervals.sessionIdleTtl,
      probeTimeout: config.intervals.probeTimeout,
      shutdownTimeout: shutdownMs,
    },
  });
  const actor = createActor(machine);
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
        return receiveCall(msg, parseRequest(UpstreamCallRequestSchema, payload, "upstream call"));
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
  const sessionWide = listen(nc, s.upstream.sessionWide(sid), (msg) => onSessionWide(msg.data), { log, refusals: ctx.refusals, expect: "message" });

  const done = new Promise<"closed" | "abandoned">((resolve) => {
    const end = () => {
      address.unsubscribe();
      extra?.unsubscribe();
      sessionWide.unsubscribe();
      const snap = actor.getSnapshot();
      // calls a lost claim held are the holder's to answer
      if (snap.value === "abandoned") for (const c of snap.context.queued) (callOf(c).settled = true), clearTimeout(callOf(c).timer);
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
  return self;
}

function safeJson(data: Uint8Array): unknown {
  try {
    return decodeJson(data);
  } catch {
    return null;
  }
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

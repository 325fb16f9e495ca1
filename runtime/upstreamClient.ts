// How anyone (the edge) talks to an upstream session actor: by its address. "No responders"
// means nobody hosts it: ask a worker to, then retry (a spawn nobody received or answered is
// asked again within the call's budget). A call that timed out has an unknown outcome, so it
// is reported, never retried.
import { randomBytes } from "node:crypto";
import type { NatsConnection } from "@nats-io/transport-node";
import { ProtocolError, type Envelope } from "../protocol/envelope.ts";
import { SpawnReplySchema, UpstreamCallEnvelopeSchema, type UpstreamCallReply, type UpstreamCallRequest } from "../protocol/upstream.ts";
import type { Subjects } from "../protocol/subjects.ts";
import { DEFAULT_MAX_BODY_BYTES } from "./config.ts";
import { decodeJson, encodeJson, isNoResponders, isTimeout, natsHeadersOf, unwrapReply } from "./bus.ts";
import { DEFAULT_RETRY, retryTransient } from "./jetstreamRetry.ts";
import { callMessageLimit, requestWhole } from "./largeMessages.ts";
import type { Logger } from "./logger.ts";
import type { LoadedSession } from "./sessionStore.ts";
import { publishStreamEvent } from "./streamLog.ts";
import type { TraceHeaders } from "./tracing.ts";

/**
 * How the caller's client gets a call's answer when the caller writes it to a client stream it
 * holds: `streamOpen()` when the answer is handed over (the caller writes it before it yields to
 * I/O), `delivered` true once that response finished with all it wrote handed to the OS, false
 * when it closed before. An in-process actor keeps the answer off the stream log when delivered.
 */
export type AnswerDelivery = {
  streamOpen(): boolean;
  delivered: Promise<boolean>;
};

/** An actor hosted by this worker, holding its claim: a call handed to it in process. */
export type LocalActor = {
  /** the actor's envelope, as its NATS reply would carry it */
  call(req: UpstreamCallRequest, trace: TraceHeaders, delivery: AnswerDelivery | undefined): Promise<Envelope<UpstreamCallReply>>;
  /** the client cancelled `requestId` (the actor aborts its upstream request) */
  cancel(requestId: string): void;
};

/** What a spawn brings the new actor: the downstream request's headers, a stateless client's capabilities. */
export type Spawn = { headers: Record<string, string>; clientCapabilities?: Record<string, unknown> | undefined };

/** This worker's upstream host, as a caller on the same worker sees it. */
export type LocalUpstreams = {
  actor(sid: string, gid: string): LocalActor | undefined;
  /** hosts the actor here unless it lives elsewhere (the claim decides); null when this worker takes no spawns now */
  activate(sid: string, gid: string, spawn: Spawn, trace: TraceHeaders): Promise<{ worker: string; created: boolean }> | null;
  /**
   * A client session just created here that will almost surely call `gid`: its upstream session
   * is opened now (the same activation and claim), best effort; the session's record as created.
   */
  prepare(session: LoadedSession, gid: string, spawn: Spawn, trace: TraceHeaders): void;
};

export type UpstreamCaller = {
  /**
   * `trace`: the caller's span as W3C trace context, carried in the NATS headers of its call and
   * spawn requests; `delivery`: how the answer reaches the client (absent: the answer is kept on its stream)
   */
  call(sid: string, gid: string, req: UpstreamCallRequest, signal?: AbortSignal, trace?: TraceHeaders, delivery?: AnswerDelivery): Promise<UpstreamCallReply>;
  /** forwards a client's cancellation of `requestId` to the actor (which aborts the upstream request) */
  notify(sid: string, gid: string, requestId: string, reason?: string): Promise<void>;
  /** opens the upstream session of a client session just created, ahead of its first call, on this worker (`LocalUpstreams.prepare`); no-op without one */
  prepare(session: LoadedSession, gid: string, spawn: Spawn, trace: TraceHeaders): void;
  /** `sid` was just created by this worker's edge: no actor of it lives anywhere yet (see `call`) */
  created(sid: string): void;
};

/** How many sessions created here `call` remembers (the oldest go first). */
const RECENTLY_CREATED = 4_096;

/** Spawn-and-retry rounds before giving up (each round is a no-responders answer, well under a millisecond). */
const MAX_ATTEMPTS = 5;
/** Beyond the call's own timeout: the actor answers a timed-out call itself, so this is only for a lost worker. */
const REPLY_MARGIN_MS = 2_000;
const NOTIFY_TIMEOUT_MS = 2_000;
/**
 * How long one spawn request waits before it is asked again. A spawn that a NATS node loss
 * dropped (routed to a worker's subscription through the node in the instant it died) is never
 * answered; asking again is safe, since the key's claim lets at most one actor start: a
 * repeated spawn joins the activation under way on the same worker, or finds its claim held by
 * a live actor elsewhere and answers once that claim is settled. Shorter than a leader election
 * (4-9 s on nats-server 2.9), so a lost spawn costs its call 2 s, not 5.
 */
export const SPAWN_ATTEMPT_MS = 2_000;

export function createUpstreamCaller(
  nc: NatsConnection,
  s: Subjects,
  opts: { callTimeoutMs: number; maxBodyBytes?: number; log: Logger; spawnAttemptMs?: number; local?: LocalUpstreams },
): UpstreamCaller {
  const { local } = opts;
  const spawnAttemptMs = opts.spawnAttemptMs ?? SPAWN_ATTEMPT_MS;
  const messageLimit = callMessageLimit(opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES);
  /** Asks a worker to host the actor; it answers once the actor is connected, or with why it could not connect. */
  async function spawn(sid: string, gid: string, req: UpstreamCallRequest, timeoutMs: number, trace: TraceHeaders): Promise<void> {
    const what: Spawn = { headers: req.headers ?? {}, ...(req.clientCapabilities ? { clientCapabilities: req.clientCapabilities } : {}) };
    // placed here when this worker takes spawns: its first call then stays in this process
    const placing = local?.activate(sid, gid, what, trace);
    if (placing) return void (await withinBudget(placing, timeoutMs, () => new ProtocolError("timeout", `no worker started a session for gateway ${gid} in time`)));
    const body = encodeJson({ sid, gid, ...what });
    const traceContext = natsHeadersOf(trace);
    const deadline = performance.now() + timeoutMs;
    // No responders: no worker is subscribed right now, as in the instant every worker is
    // moving off a lost NATS node; no answer within SPAWN_ATTEMPT_MS: the request may have been
    // lost with a node. Both are asked again within the call's budget (safe: see SPAWN_ATTEMPT_MS).
    const ask = async () => {
      const left = Math.max(1, Math.round(deadline - performance.now()));
      const reply = await nc.request(s.upstream.spawn, body, { timeout: Math.min(left, spawnAttemptMs), headers: traceContext });
      unwrapReply(reply.data, SpawnReplySchema);
    };
    try {
      await retryTransient(`spawn a session for gateway ${gid}`, ask, { ...DEFAULT_RETRY, budgetMs: timeoutMs });
    } catch (err) {
      // only when nobody answered: a worker's own refusal (gateway unknown, connect failed) is the answer
      if (err instanceof ProtocolError && err.code === "unavailable" && isNoResponders(err.cause)) throw new ProtocolError("unavailable", `no worker can host a session for gateway ${gid}`);
      if (err instanceof ProtocolError && err.code === "unavailable" && isTimeout(err.cause)) throw new ProtocolError("timeout", `no worker started a session for gateway ${gid} in time`);
      throw err;
    }
  }

  async function notify(sid: string, gid: string, requestId: string, reason?: string): Promise<void> {
    const here = local?.actor(sid, gid);
    if (here) return here.cancel(requestId);
    const body = { method: "notifications/cancelled", params: reason === undefined ? { requestId } : { requestId, reason } };
    try {
      await nc.request(s.upstream.op(sid, gid, "notify"), encodeJson(body), { timeout: NOTIFY_TIMEOUT_MS });
    } catch (err) {
      // nobody hosts the session: nothing to cancel
      if (!isNoResponders(err)) opts.log.debug({ sid, gid, err }, "cancellation not confirmed");
    }
  }

  /** tells this caller's copies of answers on a stream from the actors' (`<nonce>-<n>`) */
  const nonce = randomBytes(9).toString("base64url");
  let copies = 0;
  /**
   * A call answered over the bus whose client may not have received it: kept on its stream for
   * resumption, as the actor keeps an in-process call's (checked when the answer is handed over:
   * the caller writes it before it yields to I/O).
   */
  function keepUnlessDelivered(sid: string, gid: string, stream: string, requestId: string, env: Envelope<UpstreamCallReply>, delivery: AnswerDelivery): void {
    const keep = () => {
      try {
        if (!publishStreamEvent(nc, s, sid, stream, { uid: `${nonce}-${++copies}`, gid, requestId, reply: env })) opts.log.debug({ sid, gid, requestId }, "call answer over max_payload: not kept on its stream");
      } catch (err) {
        opts.log.warn({ sid, gid, requestId, err: (err as Error).message }, "call answer not published on its stream");
      }
    };
    if (!delivery.streamOpen()) return keep();
    void delivery.delivered.then((delivered) => delivered || keep());
  }

  // The request is built by the caller (typed) and validated where it arrives (the actor, a
  // boundary between workers): validating it here as well cost every call ~7 µs of CPU.
  async function call(sid: string, gid: string, req: UpstreamCallRequest, signal?: AbortSignal, trace: TraceHeaders = {}, delivery?: AnswerDelivery): Promise<UpstreamCallReply> {
    const subject = s.upstream.op(sid, gid, "call");
    // one budget for the whole call: connecting a new session spends from it
    const budgetMs = req.timeoutMs ?? opts.callTimeoutMs;
    const deadline = Date.now() + budgetMs;
    signal?.throwIfAborted();
    // a call over the bus tells the actor of a cancellation by its address (an in-process one, in `callHere`)
    let listening = false;
    const onAbort = () => void notify(sid, gid, req.requestId, String(signal?.reason ?? "cancelled"));
    // over the bus, the answer's copy on the stream is this caller's to keep when it writes the answer to its client
    const keeps = delivery !== undefined && req.stream !== undefined;
    try {
      let sent = req;
      // A session this worker created moments ago has no actor anywhere yet: it is placed here at
      // once, without first asking the bus for one (a round trip that finds no responders). The
      // claim still decides: an actor another worker started meanwhile is found and called there.
      if (local && recentlyCreated.has(sid) && !local.actor(sid, gid)) {
        const spawning = spawn(sid, gid, req, budgetMs, trace);
        await (signal ? raceAbort(spawning, signal) : spawning);
        sent = { ...req, timeoutMs: Math.max(1, deadline - Date.now()) };
      }
      for (let attempt = 1; ; attempt++) {
        let data: Uint8Array;
        const leftMs = deadline - Date.now();
        if (leftMs <= 0) throw new ProtocolError("timeout", `gateway ${gid} did not answer ${req.method} within ${budgetMs} ms`);
        const here = local?.actor(sid, gid);
        if (here) return await callHere(here, sent, trace, delivery, listening ? undefined : signal);
        if (signal && !listening) {
          signal.addEventListener("abort", onAbort, { once: true });
          listening = true;
        }
        try {
          // requests and answers over the server's max_payload travel in parts
          const pending = requestWhole(nc, subject, encodeJson(keeps ? { ...sent, answerCopy: "caller" } : sent), { timeoutMs: leftMs + REPLY_MARGIN_MS, limit: messageLimit, headers: trace });
          data = await (signal ? raceAbort(pending, signal) : pending);
        } catch (err) {
          if (isNoResponders(err) && attempt < MAX_ATTEMPTS) {
            const spawning = spawn(sid, gid, req, leftMs + REPLY_MARGIN_MS, trace);
            await (signal ? raceAbort(spawning, signal) : spawning);
            // the actor times the call from its arrival: only what is left of the budget
            sent = { ...req, timeoutMs: Math.max(1, deadline - Date.now()) };
            continue;
          }
          if (isNoResponders(err)) throw new ProtocolError("unavailable", `no upstream session for gateway ${gid} could be started`);
          if (isTimeout(err)) throw new ProtocolError("timeout", `gateway ${gid} did not answer ${req.method} within ${budgetMs} ms`);
          throw err;
        }
        const env = UpstreamCallEnvelopeSchema.parse(decodeJson(data));
        if (keeps) keepUnlessDelivered(sid, gid, req.stream!, req.requestId, env, delivery!);
        if (!env.ok) throw new ProtocolError(env.error.code, env.error.message, env.error.issues);
        return env.data;
      }
    } finally {
      if (listening) signal?.removeEventListener("abort", onAbort);
    }
  }

  const recentlyCreated = new Set<string>();
  const created = (sid: string) => {
    if (!local) return;
    recentlyCreated.add(sid);
    if (recentlyCreated.size > RECENTLY_CREATED) recentlyCreated.delete(recentlyCreated.values().next().value!);
  };

  return { call, notify, prepare: (session, gid, spawn, trace) => local?.prepare(session, gid, spawn, trace), created };
}

/**
 * A call handed to an actor of this worker. The actor answers by the deadline itself, as it does
 * over the bus (a worker cannot be lost in between). `signal`: a cancellation goes to the actor
 * and the caller stops waiting, both from one listener (a signal's listeners cost more than the rest
 * of the hand-over).
 */
function callHere(here: LocalActor, req: UpstreamCallRequest, trace: TraceHeaders, delivery: AnswerDelivery | undefined, signal: AbortSignal | undefined): Promise<UpstreamCallReply> {
  const answered = (env: Envelope<UpstreamCallReply>) => {
    if (!env.ok) throw new ProtocolError(env.error.code, env.error.message, env.error.issues);
    return env.data;
  };
  const pending = here.call(req, trace, delivery);
  if (!signal) return pending.then(answered);
  return new Promise<UpstreamCallReply>((resolve, reject) => {
    const onAbort = () => {
      here.cancel(req.requestId);
      reject(abortError(signal));
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    pending.then(
      (env) => {
        signal.removeEventListener("abort", onAbort);
        try {
          resolve(answered(env));
        } catch (err) {
          reject(err);
        }
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

const abortError = (signal: AbortSignal) => (signal.reason instanceof Error ? signal.reason : new DOMException(String(signal.reason ?? "aborted"), "AbortError"));

function withinBudget<T>(p: Promise<T>, ms: number, timedOut: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expiry = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(timedOut()), ms)));
  return Promise.race([p, expiry]).finally(() => clearTimeout(timer));
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

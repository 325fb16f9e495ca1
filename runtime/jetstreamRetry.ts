// Riding out a NATS node loss. While a stream elects a new leader (seconds on nats-server
// 2.9), JetStream requests meet "no responders" or a JetStream "temporarily unavailable"
// error, and requests sent on a connection to the node that died time out. This module is
// the one place that retries them, wrapped around the KV buckets and the JetStream client
// that openStores hands out, so no caller changes: a bounded retry with backoff, only for
// those errors, never for a conflict or a bad request. What still fails is `unavailable`.
import { randomUUID } from "node:crypto";
import { JetStreamApiError, type JetStreamClient } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { errors, type NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import { isCasConflict } from "../actors/kvStore.ts";
import { ProtocolError } from "../protocol/envelope.ts";
import { request } from "./bus.ts";

export type RetryPolicy = {
  /** give up once this long has passed since the first attempt (a leader election takes seconds) */
  budgetMs: number;
  /** first pause; each next one doubles, up to `maxDelayMs` */
  firstDelayMs: number;
  maxDelayMs: number;
  /** no attempt begins with less of the budget left than this (it could only time out, leaving the outcome unknown) */
  minAttemptMs?: number;
};

/**
 * The pause between attempts stays short: a "no leader" answer costs the server one round trip,
 * and the new leader should be found within a quarter second of its election, not a second.
 */
export const DEFAULT_RETRY: RetryPolicy = { budgetMs: 20_000, firstDelayMs: 50, maxDelayMs: 250 };

/** JetStream API codes that mean "no leader / not available right now" (nats-server errors.json). */
const UNAVAILABLE_API_CODES = new Set([
  10008, // JetStream system temporarily unavailable
  10009, // JetStream cluster can not handle request
]);

type Transience = "nobody-answered" | "outcome-unknown" | null;

/**
 * Whether `err` means JetStream could not answer for now: nobody answered (no responders:
 * nothing was done, safe to repeat) or the request timed out (it may have been done).
 */
export function transience(err: unknown): Transience {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    // nats.js reports a JetStream request nobody answered as "jetstream is not enabled", caused by no responders
    if (e instanceof errors.NoRespondersError) return "nobody-answered";
    if (e instanceof JetStreamApiError && (UNAVAILABLE_API_CODES.has(e.code) || e.status === 503)) return "nobody-answered";
    if (e instanceof errors.TimeoutError) return "outcome-unknown";
  }
  return null;
}

/**
 * Runs `op` until it succeeds, fails for a reason that is not transient, or the budget is
 * spent (then `unavailable`). `onAmbiguousFailure` gets the error of an attempt that followed
 * one whose outcome is unknown; it may decide that the earlier attempt did the work.
 */
export async function retryTransient<T>(
  what: string,
  op: () => Promise<T>,
  policy: RetryPolicy = DEFAULT_RETRY,
  onAmbiguousFailure?: (err: unknown) => Promise<{ result: T } | null>,
): Promise<T> {
  const start = performance.now();
  let ambiguous = false;
  for (let attempt = 0; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      const kind = transience(err);
      if (!kind) {
        if (ambiguous && onAmbiguousFailure) {
          const landed = await onAmbiguousFailure(err);
          if (landed) return landed.result;
        }
        throw err;
      }
      ambiguous ||= kind === "outcome-unknown";
      // jittered (half to all of the backoff): the requests a node loss held up do not come back in step
      const delay = Math.min(policy.maxDelayMs, policy.firstDelayMs * 2 ** attempt) * (0.5 + Math.random() / 2);
      if (performance.now() - start + delay + (policy.minAttemptMs ?? 0) > policy.budgetMs) {
        throw new ProtocolError("unavailable", `NATS is unavailable (${what}); try again`, undefined, { cause: err });
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

const encoder = new TextEncoder();
const bytesOf = (data: unknown) => (typeof data === "string" ? encoder.encode(data) : (data as Uint8Array));
const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The KV methods that make one request each (watch and keys: the request that opens them). */
const RETRIED = new Set(["get", "history", "watch", "status", "keys", "create", "update", "put", "delete", "purge"]);
/** The ones that open a consumer (reads: safe to repeat). */
const OPENS_CONSUMER = new Set(["watch", "keys", "history"]);
/** The reads nats-server may leave unanswered through a node loss (`status`: stream info; `get`: a direct get a dead replica took). */
const HEDGED_READS = new Set(["get", "status"]);

/**
 * A read of a stream whose leader died is met with silence, not an error, until its followers'
 * raft election timer fires (nats-server 2.9: 4-9 s after the leader's last heartbeat; then a
 * leaderless follower answers a stream info itself): asked once, it would wait out the client's
 * whole 5 s timeout. A copy is asked every READ_HEDGE_MS while none has answered, so a read
 * answers within that of the first moment anyone can answer it. Reads change nothing: copies are safe.
 */
export const READ_HEDGE_MS = 750;
const READ_COPIES = 6;

/**
 * A write a stream's new leader takes in the moment it is elected may be dropped without an answer
 * (nats-server 2.9 `processClusteredInboundMsg`: not yet leader, no reply); asked once, it would wait
 * out the client's 5 s timeout (measured: a new session's first call 4.9 s after its stream's new
 * leader). An attempt of a write ends after WRITE_ATTEMPT_MS as timed out (outcome unknown), and
 * the retry's own rules make a repeat safe: a compare-and-swap that meets its own value counts as
 * done, an event carries a message id, a put or delete repeated leaves what one would.
 */
export const WRITE_ATTEMPT_MS = 2_000;
/** The KV methods that write (each is one request). */
const WRITES = new Set(["create", "update", "put", "delete", "purge"]);

/** `op`, or a timeout (outcome unknown) when it has not answered within `ms`; a late answer is dropped. */
export function bounded<T>(op: () => Promise<T>, ms = WRITE_ATTEMPT_MS): Promise<T> {
  return hedged(op, { hedgeMs: ms, ms, copies: 1 });
}

/** Runs a read, asking again every READ_HEDGE_MS while none has answered; the first answer is used. */
export function readHedged<T>(read: () => Promise<T>, hedgeMs = READ_HEDGE_MS): Promise<T> {
  return hedged(read, { hedgeMs, ms: hedgeMs * READ_COPIES + CONSUMER_OPEN_MS, copies: READ_COPIES });
}

/**
 * nats-server 2.9 may place a new consumer on a replica whose node is dead; that creation is
 * never answered (about every other one, measured, for as long as the node is down), and none
 * is answered while the JetStream meta group has no leader. A second creation is asked for
 * when the first has not answered within CONSUMER_HEDGE_MS (it is placed anew), the first to
 * open is used and the other stopped; when neither has opened within CONSUMER_OPEN_MS the
 * attempt fails as timed out and is tried again. Not more copies: one every 0.5 s, tried with
 * every listing under load (bench/cluster.bench.ts), recovered no sooner and added requests.
 */
export const CONSUMER_OPEN_MS = 2_000;
export const CONSUMER_HEDGE_MS = 500;

export function openHedged<T extends { stop(): void }>(open: () => Promise<T>, hedgeMs = CONSUMER_HEDGE_MS, ms = CONSUMER_OPEN_MS): Promise<T> {
  return hedged(open, { hedgeMs, ms, copies: 2, discard: (it) => it.stop() });
}

/**
 * Runs `op`, and again every `hedgeMs` while none has answered (at most `copies` in all); the
 * first answer is used and `discard` gets any later one. Every copy refused: the last refusal.
 * None answered within `ms`: a timeout (outcome unknown, for retryTransient to repeat).
 */
async function hedged<T>(op: () => Promise<T>, o: { hedgeMs: number; ms: number; copies: number; discard?: (late: T) => void }): Promise<T> {
  // one timer at a time (the next copy's, else the deadline's): a read on the hot path pays for one
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<T>((resolve, reject) => {
      let settled = false;
      let started = 0;
      let failed = 0;
      const settle = (f: () => void) => {
        if (settled) return false;
        settled = true;
        f();
        return true;
      };
      const attempt = () => {
        started++;
        op().then(
          // an answer after another won, or after the attempt gave up, is discarded
          (it) => void (settle(() => resolve(it)) || o.discard?.(it)),
          // a refusal of every copy asked so far (no leader yet) is the answer: the others would meet the same
          (err: unknown) => void (++failed === started && settle(() => reject(err))),
        );
      };
      const next = (k: number) => {
        const copy = k < o.copies && k * o.hedgeMs < o.ms;
        timer = setTimeout(() => {
          if (settled) return;
          if (!copy) return void settle(() => reject(new errors.TimeoutError()));
          attempt();
          next(k + 1);
        }, (copy ? o.hedgeMs : o.ms - (k - 1) * o.hedgeMs));
      };
      attempt();
      next(1);
    });
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The bucket with every request retried through node losses. A compare-and-swap (create,
 * update, delete with a previous revision) repeated after a timeout may meet its own earlier
 * write as a conflict: when the key holds exactly what the call meant to leave there, the
 * earlier attempt landed and the call succeeds.
 */
export function retryingKv(kv: KV, bucket: string, policy: RetryPolicy = DEFAULT_RETRY): KV {
  const landed = (method: string, args: unknown[]) => async (err: unknown): Promise<{ result: unknown } | null> => {
    if (!isCasConflict(err)) return null;
    const e = await retryTransient(`get ${bucket}`, () => kv.get(args[0] as string), policy);
    if (method === "delete") return e?.operation === "DEL" ? { result: undefined } : null;
    return e?.operation === "PUT" && sameBytes(e.value, bytesOf(args[1])) ? { result: e.revision } : null;
  };
  return new Proxy(kv, {
    get(target, prop) {
      const v = Reflect.get(target, prop);
      if (typeof v !== "function") return v;
      if (typeof prop !== "string" || !RETRIED.has(prop)) return v.bind(target);
      const attempt = attemptOf(prop);
      return (...args: unknown[]) => retryTransient(`${prop} ${bucket}`, () => attempt(() => v.apply(target, args) as Promise<unknown>), policy, landed(prop, args));
    },
  });
}

/** How one attempt of a retried KV method runs: a consumer opened hedged, a read asked again while silent, a write bounded. */
function attemptOf(method: string): (op: () => Promise<unknown>) => Promise<unknown> {
  if (OPENS_CONSUMER.has(method)) return (op) => openHedged(op as () => Promise<{ stop(): void }>);
  if (HEDGED_READS.has(method)) return (op) => readHedged(op);
  if (WRITES.has(method)) return (op) => bounded(op);
  return (op) => op();
}

/**
 * The JetStream client with `publish` retried through node losses. Each publish carries a
 * message id, so the stream drops the copy a retry after a timeout may add.
 */
export function retryingJs(js: JetStreamClient, policy: RetryPolicy = DEFAULT_RETRY): JetStreamClient {
  const publish: JetStreamClient["publish"] = (subject, data, opts) => {
    const withId = { ...opts, msgID: opts?.msgID ?? randomUUID() };
    return retryTransient(`publish ${subject}`, () => bounded(() => js.publish(subject, data, withId)), policy);
  };
  return new Proxy(js, {
    get(target, prop) {
      if (prop === "publish") return publish;
      const v = Reflect.get(target, prop);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** How long one attempt of a read-only request waits before it is asked again (a node loss may have dropped it). */
export const READ_ATTEMPT_MS = 5_000;

/**
 * A request/reply (an admin request, for one) that rides out a NATS node loss: "no responders"
 * (nobody received it: the responders are still moving to a surviving node) is asked again,
 * with backoff, within `timeoutMs`; a timeout is asked again only when `readOnly` (repeating
 * a read changes nothing), each attempt then waiting at most READ_ATTEMPT_MS. A write that
 * timed out has an unknown outcome and is reported as `timeout`, never repeated.
 */
export async function requestThroughNodeLoss<T extends z.ZodType>(
  nc: NatsConnection,
  subject: string,
  payload: unknown,
  schema: T,
  opts: { timeoutMs: number; readOnly: boolean },
): Promise<z.infer<T>> {
  const deadline = performance.now() + opts.timeoutMs;
  const attempt = async () => {
    const left = Math.max(1, Math.round(deadline - performance.now()));
    try {
      return await request(nc, subject, payload, schema, opts.readOnly ? Math.min(left, READ_ATTEMPT_MS) : left);
    } catch (err) {
      // not transient for retryTransient: no cause that says "timed out"
      if (!opts.readOnly && transience(err) === "outcome-unknown") throw new ProtocolError("timeout", `no answer to ${subject} within ${opts.timeoutMs} ms; it may have been done`);
      throw err;
    }
  };
  try {
    // a last attempt with a few ms left would time out and turn "nobody answers" into "it may have been done"
    const minAttemptMs = Math.min(DEFAULT_RETRY.maxDelayMs, opts.timeoutMs / 4);
    return await retryTransient(`request ${subject}`, attempt, { ...DEFAULT_RETRY, budgetMs: opts.timeoutMs, minAttemptMs });
  } catch (err) {
    if (err instanceof ProtocolError && err.code === "unavailable" && transience(err.cause) === "nobody-answered") {
      throw new ProtocolError("unavailable", `nobody answers ${subject}: no worker is connected to NATS`);
    }
    throw err;
  }
}

import type { Msg, MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import { errors, headers } from "@nats-io/transport-node";
import type { z } from "zod";
import { AnyEnvelopeSchema, ProtocolError, fail, ok, type Envelope } from "../protocol/envelope.ts";
import { isInbox } from "../protocol/subjects.ts";
import type { Logger } from "./logger.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** Parses a message body as JSON; an empty body is `{}`. Throws `invalid_request` on bad JSON. */
export function decodeJson(data: Uint8Array): unknown {
  if (data.length === 0) return {};
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    throw new ProtocolError("invalid_request", "request body is not valid JSON");
  }
}

/** NATS message headers holding `entries` (a call's trace context, for one). */
export function natsHeadersOf(entries: Record<string, string>): MsgHdrs {
  const h = headers();
  for (const [k, v] of Object.entries(entries)) h.set(k, v);
  return h;
}

export type Handler = (payload: unknown, msg: Msg) => Promise<unknown> | unknown;

/** What answering needs of a request: a core `Msg`, or an `@nats-io/services` endpoint's message. */
export type RequestMsg = { subject: string; data: Uint8Array; reply?: string; headers?: MsgHdrs; respond(data: Uint8Array): boolean };

export const REFUSAL_REASONS = ["no_reply", "reply_not_inbox", "jetstream_status", "stored_copy", "not_a_runtime_event"] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/**
 * Deliveries a worker refused, by reason. Counted rather than logged one by one: whoever
 * can make the server deliver into runtime subjects could otherwise flood the log.
 */
export class Refusals {
  readonly counts = Object.fromEntries(REFUSAL_REASONS.map((r) => [r, 0])) as Record<RefusalReason, number>;

  refuse(reason: RefusalReason, subject: string, log: Logger): void {
    this.counts[reason] += 1;
    log.debug({ subject, reason }, "refused a delivery");
  }

  total(): number {
    return REFUSAL_REASONS.reduce((n, r) => n + this.counts[r], 0);
  }
}

/** What every guarded subscription needs. */
export type Guard = { log: Logger; refusals: Refusals };

/**
 * Why the runtime must not act on `msg`, or null when it may. nats-server delivers into any
 * subject on behalf of JetStream (a push consumer's deliver_subject, a pull request's reply
 * subject, a JetStream API answer's reply subject), whoever created the consumer or sent the
 * request; none of those is a message a runtime peer published:
 * - a consumer delivery carries a `$JS.ACK.…` reply, flow control a `$JS.FC.…` reply, and
 *   only a core inbox (`_INBOX.…`, `_INBOX_<user>.…`) is where a requester waits;
 * - heartbeats and pull-request endings carry a status header;
 * - a direct get's answer is a stored copy (`Nats-Stream` header);
 * - a request (`expect: "request"`) always has a reply; a JetStream API answer has none.
 * Refusing a request also means never answering it: the reply subject is not to be trusted.
 */
export function refusal(msg: { reply?: string; headers?: MsgHdrs }, expect: "request" | "message"): RefusalReason | null {
  if (msg.headers && msg.headers.code > 0) return "jetstream_status";
  if (msg.headers?.has("Nats-Stream")) return "stored_copy";
  if (msg.reply) return isInbox(msg.reply) ? null : "reply_not_inbox";
  return expect === "request" ? "no_reply" : null;
}

/**
 * Subscribes `onMessage` to `subject` behind `refusal`. Every core subscription the runtime
 * acts on goes through here or through `answerRequest`, so no route around the guard exists.
 */
export function listen(
  nc: NatsConnection,
  subject: string,
  onMessage: (msg: Msg) => void,
  opts: Guard & { expect: "request" | "message"; queue?: string },
): Subscription {
  return nc.subscribe(subject, {
    queue: opts.queue,
    callback: (err, msg) => {
      if (err) return void opts.log.error({ err, subject }, "subscription failed");
      const reason = refusal(msg, opts.expect);
      if (reason) return opts.refusals.refuse(reason, msg.subject, opts.log);
      onMessage(msg);
    },
  });
}

/**
 * Answers requests on `subject` with the reply envelope. Every failure becomes an
 * error envelope; nothing a client sends can throw out of the handler.
 */
export function serve(nc: NatsConnection, subject: string, handler: Handler, opts: Guard & { queue?: string }): Subscription {
  return nc.subscribe(subject, {
    queue: opts.queue,
    callback: (err, msg) => {
      if (err) return void opts.log.error({ err, subject }, "subscription failed");
      void answerRequest(msg, handler, opts);
    },
  });
}

/**
 * The one path every served request takes, `serve`'s subscriptions and the admin service's
 * endpoints alike: refuse what is no request (`refusal`), decode, handle, reply with the
 * envelope. Returns the envelope it sent, or null when it refused the message.
 */
export async function answerRequest<M extends RequestMsg>(
  msg: M,
  handler: (payload: unknown, msg: M) => Promise<unknown> | unknown,
  guard: Guard,
): Promise<Envelope<unknown> | null> {
  const reason = refusal(msg, "request");
  if (reason) {
    guard.refusals.refuse(reason, msg.subject, guard.log);
    return null;
  }
  let reply: Envelope<unknown>;
  try {
    reply = ok(await handler(decodeJson(msg.data), msg));
  } catch (err) {
    reply = errorReply(err, guard.log, msg.subject);
  }
  try {
    msg.respond(encodeJson(reply));
  } catch (err) {
    // a reply past the connection's max_payload: the caller hears why instead of waiting out its timeout
    guard.log.warn({ err, subject: msg.subject }, "reply could not be sent");
    reply = fail("too_large", "the reply is larger than NATS carries in one message");
    msg.respond(encodeJson(reply));
  }
  return reply;
}

/** The reply to a failed request: a `ProtocolError` as it is; anything else is logged and answered as `internal`. */
export function errorReply(err: unknown, log: Logger, subject: string): Envelope<never> {
  if (err instanceof ProtocolError) return { ok: false, error: err.toBody() };
  log.error({ err, subject }, "request handler failed");
  return fail("internal", "internal error; see the worker's log");
}

export function isNoResponders(err: unknown): boolean {
  return (
    err instanceof errors.NoRespondersError ||
    (err instanceof errors.RequestError && err.isNoResponders()) ||
    (err instanceof Error && err.cause instanceof errors.NoRespondersError)
  );
}

export function isTimeout(err: unknown): boolean {
  return err instanceof errors.TimeoutError || (err instanceof Error && err.cause instanceof errors.TimeoutError);
}

/**
 * Whether an error means NATS or JetStream could not be reached in time (disconnected,
 * reconnecting, draining, closed, no responders, a request timing out; JetStream's "not
 * enabled" is no responders underneath): a transient outage, to be answered "unavailable,
 * retry later", not a bug.
 */
export function isNatsUnavailable(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof errors.PermissionViolationError) return false;
    if (
      e instanceof errors.TimeoutError ||
      e instanceof errors.NoRespondersError ||
      e instanceof errors.ConnectionError ||
      e instanceof errors.ClosedConnectionError ||
      e instanceof errors.DrainingConnectionError ||
      // "connection disconnected" / "connection closed" carry no cause of their own
      (e instanceof errors.RequestError && !(e.cause instanceof Error))
    ) {
      return true;
    }
  }
  return false;
}

/**
 * Sends a request and returns the envelope's data parsed with `schema`; an error
 * envelope becomes a `ProtocolError`. NATS errors (no responders, timeout) pass through.
 */
export async function request<T extends z.ZodType>(
  nc: NatsConnection,
  subject: string,
  payload: unknown,
  schema: T,
  timeoutMs: number,
): Promise<z.infer<T>> {
  const msg = await nc.request(subject, encodeJson(payload), { timeout: timeoutMs });
  return unwrapReply(msg.data, schema);
}

/** A reply envelope's data parsed with `schema`; an error envelope becomes a `ProtocolError`. */
export function unwrapReply<T extends z.ZodType>(data: Uint8Array, schema: T): z.infer<T> {
  const env = AnyEnvelopeSchema.parse(decodeJson(data));
  if (!env.ok) throw new ProtocolError(env.error.code, env.error.message, env.error.issues);
  return schema.parse(env.data);
}

/**
 * Asks every subscriber of `subject` (no queue group) and gathers the answers that parse,
 * until none has come for `stallMs` (at most `maxMs` in all).
 */
export async function gather<T extends z.ZodType>(
  nc: NatsConnection,
  subject: string,
  payload: unknown,
  schema: T,
  opts: { stallMs?: number; maxMs?: number } = {},
): Promise<z.infer<T>[]> {
  const out: z.infer<T>[] = [];
  const replies = await nc.requestMany(subject, encodeJson(payload), { strategy: "stall", stall: opts.stallMs ?? 300, maxWait: opts.maxMs ?? 3_000 });
  for await (const m of replies) {
    try {
      out.push(unwrapReply(m.data, schema));
    } catch {
      // an error envelope or a reply that does not parse: that worker is left out
    }
  }
  return out;
}

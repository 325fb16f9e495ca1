import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { errors } from "@nats-io/transport-node";
import type { z } from "zod";
import { AnyEnvelopeSchema, ProtocolError, fail, ok, type Envelope } from "../protocol/envelope.ts";
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

export type Handler = (payload: unknown, msg: Msg) => Promise<unknown> | unknown;

/** What answering needs of a request: a core `Msg`, or an `@nats-io/services` endpoint's message. */
export type RequestMsg = { subject: string; data: Uint8Array; reply?: string; respond(data: Uint8Array): boolean };

/**
 * Answers requests on `subject` with the reply envelope. Every failure becomes an
 * error envelope; nothing a client sends can throw out of the handler.
 */
export function serve(nc: NatsConnection, subject: string, handler: Handler, opts: { queue?: string; log: Logger }): Subscription {
  return nc.subscribe(subject, {
    queue: opts.queue,
    callback: (err, msg) => {
      if (err) {
        opts.log.error({ err, subject }, "subscription failed");
        return;
      }
      void answerRequest(msg, handler, opts.log);
    },
  });
}

/**
 * The one path every served request takes, `serve`'s subscriptions and the admin service's
 * endpoints alike: decode, handle, reply with the envelope. Returns the envelope it sent.
 * A check of which messages count as genuine requests belongs here, so it covers both.
 */
export async function answerRequest<M extends RequestMsg>(msg: M, handler: (payload: unknown, msg: M) => Promise<unknown> | unknown, log: Logger): Promise<Envelope<unknown>> {
  let reply: Envelope<unknown>;
  try {
    reply = ok(await handler(decodeJson(msg.data), msg));
  } catch (err) {
    reply = errorReply(err, log, msg.subject);
  }
  if (msg.reply) msg.respond(encodeJson(reply));
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

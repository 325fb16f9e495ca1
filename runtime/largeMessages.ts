// Requests and replies larger than the server's max_payload (1 MB by default) on core NATS.
// A large message travels as numbered parts, in order from one connection, to the subject
// (request) or to the requester's own inbox (reply), and is reassembled on the other side,
// bounded by a limit that is checked on the first part. Nothing is stored: a JetStream
// object store would let the `viewer` user read tool results.
import { createInbox, errors, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { ProtocolError, fail } from "../protocol/envelope.ts";
import { encodeJson, natsHeadersOf } from "./bus.ts";

const PARTS = "Mcpgw-Parts";
const PART = "Mcpgw-Part";
const SIZE = "Mcpgw-Size";
/** Room left in each part for its headers. */
const HEADER_ROOM = 1024;
/** How long a responder keeps the parts of a request whose rest never comes (its sender died). */
const ASSEMBLY_TTL_MS = 60_000;

/** A request as its responder sees it: whole, with the reply subject to answer on. */
export type WholeRequest = { subject: string; data: Uint8Array; reply?: string | undefined; headers?: MsgHdrs | undefined };

type PartHeader = { index: number; count: number; size: number };

function partHeader(h: MsgHdrs | undefined): PartHeader | null {
  if (!h?.has(PARTS)) return null;
  const count = Number(h.get(PARTS));
  const index = Number(h.get(PART));
  const size = Number(h.get(SIZE));
  const valid = Number.isSafeInteger(count) && Number.isSafeInteger(index) && Number.isSafeInteger(size) && count > 1 && index >= 0 && index < count && size >= 0;
  if (!valid) throw new ProtocolError("invalid_request", "malformed message part headers");
  return { count, index, size };
}

const sizeText = (what: string, size: number, limit: number) => `${what} of ${size} bytes exceeds the limit of ${limit} bytes`;

/**
 * Publishes `data` to `subject` in one message, or in parts when it is larger than the server
 * takes; `extra` headers (trace context) go on the message, or on every part.
 */
export function publishWhole(nc: NatsConnection, subject: string, data: Uint8Array, reply?: string, extra: Record<string, string> = {}): void {
  const max = (nc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM;
  if (data.length <= max) return nc.publish(subject, data, { ...(reply && { reply }), ...(Object.keys(extra).length > 0 && { headers: natsHeadersOf(extra) }) });
  const count = Math.ceil(data.length / max);
  for (let index = 0; index < count; index++) {
    const h = natsHeadersOf(extra);
    h.set(PARTS, String(count));
    h.set(PART, String(index));
    h.set(SIZE, String(data.length));
    nc.publish(subject, data.subarray(index * max, (index + 1) * max), reply ? { reply, headers: h } : { headers: h });
  }
}

/** The parts of one message, joined when the last one is in. */
class Assembly {
  readonly #chunks: Uint8Array[] = [];
  #bytes = 0;
  constructor(readonly first: PartHeader) {}

  /** the whole message once complete; throws when the parts do not fit together */
  add(p: PartHeader, data: Uint8Array): Uint8Array | null {
    if (p.count !== this.first.count || p.size !== this.first.size || p.index !== this.#chunks.length) throw new ProtocolError("invalid_request", "message parts out of order");
    this.#chunks.push(data);
    this.#bytes += data.length;
    if (this.#bytes > this.first.size) throw new ProtocolError("invalid_request", "message parts larger than announced");
    if (this.#chunks.length < p.count) return null;
    if (this.#bytes !== this.first.size) throw new ProtocolError("invalid_request", "message parts smaller than announced");
    return Buffer.concat(this.#chunks);
  }
}

/**
 * A subscription callback that hands `onRequest` whole requests. A request announced
 * larger than `limit` is answered `too_large` on its first part and never buffered.
 */
export function wholeRequests(nc: NatsConnection, limit: number, onRequest: (req: WholeRequest) => void): (err: Error | null, msg: Msg) => void {
  /** by the requester's inbox: unique per request */
  const pending = new Map<string, { assembly: Assembly; timer: NodeJS.Timeout }>();
  const refuse = (reply: string | undefined, err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    if (reply) publishWhole(nc, reply, encodeJson(fail(err instanceof ProtocolError ? err.code : "invalid_request", message)));
  };
  return (err, msg) => {
    if (err) return;
    let part: PartHeader | null;
    try {
      part = partHeader(msg.headers);
    } catch (e) {
      return refuse(msg.reply, e);
    }
    if (!part) return onRequest({ subject: msg.subject, data: msg.data, reply: msg.reply, headers: msg.headers });
    // parts without a reply subject cannot be told apart from another sender's
    if (!msg.reply) return;
    const key = msg.reply;
    let entry = pending.get(key);
    if (!entry) {
      // the rest of a refused (or expired) request
      if (part.index !== 0) return;
      if (part.size > limit) return refuse(key, new ProtocolError("too_large", sizeText("request", part.size, limit)));
      entry = { assembly: new Assembly(part), timer: setTimeout(() => pending.delete(key), ASSEMBLY_TTL_MS).unref() };
      pending.set(key, entry);
    }
    try {
      const whole = entry.assembly.add(part, msg.data);
      if (!whole) return;
      clearTimeout(entry.timer);
      pending.delete(key);
      onRequest({ subject: msg.subject, data: whole, reply: key, headers: msg.headers });
    } catch (e) {
      clearTimeout(entry.timer);
      pending.delete(key);
      refuse(key, e);
    }
  };
}

/**
 * At most one PING per this time confirms watched replies: one calling in at a time sends its
 * PING in its reply's own socket write; many share one (a write and a PONG read each would cost
 * the worker more than the copy saves the server). A watched reply holds its answer (for the
 * copy) that long at most, plus a round trip.
 */
const CONFIRM_MS = 50;

/** A request waiting on the connection's reply subscription: its parts, by its reply token. */
type Waiting = { limit: number; subject: string; assembly: Assembly | null; resolve(data: Uint8Array): void; reject(err: unknown): void };

/**
 * One reply subscription per connection (`<inbox>.*`), as `nc.request` keeps its own: a request
 * costs no `SUB` and `UNSUB` of an inbox of its own (a socket write and server work each).
 * Each request's reply subject is unique (`<inbox>.<n>`), which responders key parts by.
 * It also hears the server's "no responders" for replies this connection published
 * (`watchedReply`).
 */
class ReplyInbox {
  readonly #prefix: string;
  readonly #waiting = new Map<string, Waiting>();
  #n = 0;
  readonly #sub: Subscription;
  /** watched replies published since the last PING went out: the next PING's PONG clears them */
  #unconfirmed: Array<(undelivered: boolean) => void> = [];
  /** a PING is due (`#pingTimer`) or on its way: at most one of each */
  #pingTimer: NodeJS.Timeout | undefined;
  #pinging = false;
  #lastPingAt = -Infinity;

  constructor(readonly nc: NatsConnection) {
    // the connection's own inbox prefix, as nc.request would use (not on the public interface)
    this.#prefix = createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
    this.#sub = nc.subscribe(`${this.#prefix}.*`, { callback: (err, msg) => this.#deliver(err, msg) });
    // the connection closed (or the subscription failed): nothing more can come
    void this.#sub.closed.then(() => this.#failAll(new errors.ClosedConnectionError()));
  }

  get closed(): boolean {
    return this.#sub.isClosed();
  }

  /** a reply subject for one request, and its removal */
  open(w: Waiting): { reply: string; done(): void } {
    const token = String(++this.#n);
    this.#waiting.set(token, w);
    return { reply: `${this.#prefix}.${token}`, done: () => this.#waiting.delete(token) };
  }

  /**
   * Publishes one message to `subject` carrying a reply subject of this inbox, to which the
   * server answers "no responders" at once when no subscription took the message. The server
   * handles a connection's commands in order, so a PONG for a PING sent after it means it was
   * taken: a PING (at most one per CONFIRM_MS) confirms every watched reply published before it.
   */
  watchedReply(subject: string, data: Uint8Array): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const token = String(++this.#n);
      let settled = false;
      const settle = (undelivered: boolean) => {
        if (settled) return;
        settled = true;
        this.#waiting.delete(token);
        resolve(undelivered);
      };
      // no responders, or the connection closed under it: nobody is known to have taken it
      this.#waiting.set(token, { limit: 0, subject, assembly: null, resolve: () => settle(false), reject: () => settle(true) });
      try {
        this.nc.publish(subject, data, { reply: `${this.#prefix}.${token}` });
      } catch {
        return settle(true);
      }
      this.#unconfirmed.push(settle);
      this.#pingSoon();
    });
  }

  /** at once (the PING then leaves in the reply's own gathered write) unless one went out within CONFIRM_MS */
  #pingSoon(): void {
    if (this.#pingTimer || this.#pinging) return;
    const wait = this.#lastPingAt + CONFIRM_MS - performance.now();
    if (wait <= 0) return this.#ping();
    this.#pingTimer = setTimeout(() => {
      this.#pingTimer = undefined;
      this.#ping();
    }, wait);
  }

  #ping(): void {
    const batch = this.#unconfirmed;
    this.#unconfirmed = [];
    this.#pinging = true;
    this.#lastPingAt = performance.now();
    this.nc
      .flush()
      .then(
        () => batch.forEach((settle) => settle(false)),
        () => batch.forEach((settle) => settle(true)),
      )
      .finally(() => {
        this.#pinging = false;
        if (this.#unconfirmed.length > 0) this.#pingSoon();
      });
  }

  #failAll(err: unknown): void {
    for (const w of [...this.#waiting.values()]) w.reject(err);
    this.#waiting.clear();
  }

  #deliver(err: Error | null, msg: Msg): void {
    if (err) return this.#failAll(err);
    const w = this.#waiting.get(msg.subject.slice(this.#prefix.length + 1));
    if (!w) return;
    if (msg.data.length === 0 && msg.headers?.code === 503) return w.reject(new errors.NoRespondersError(w.subject));
    try {
      const part = partHeader(msg.headers);
      if (!part) return w.resolve(msg.data);
      if (!w.assembly) {
        if (part.size > w.limit) throw new ProtocolError("too_large", sizeText("reply", part.size, w.limit));
        w.assembly = new Assembly(part);
      }
      const whole = w.assembly.add(part, msg.data);
      if (whole) w.resolve(whole);
    } catch (e) {
      w.reject(e);
    }
  }
}

const replyInboxes = new WeakMap<NatsConnection, ReplyInbox>();
function replyInboxOf(nc: NatsConnection): ReplyInbox {
  let inbox = replyInboxes.get(nc);
  if (!inbox || inbox.closed) replyInboxes.set(nc, (inbox = new ReplyInbox(nc)));
  return inbox;
}

/**
 * Publishes a reply (one message, within the server's max_payload) to a requester's inbox and
 * tells whether nobody took it: true when no subscription matched (the requester's connection
 * is gone, or was away) or this connection closed first; false once the server has passed it on.
 */
export function publishReplyNoticingLoss(nc: NatsConnection, inbox: string, data: Uint8Array): Promise<boolean> {
  return replyInboxOf(nc).watchedReply(inbox, data);
}

/**
 * Sends a request of any size up to `limit` and returns its whole reply (up to `limit`).
 * Errors are those of `nc.request`: no responders (nobody subscribes to `subject`) and
 * timeout; a message over the limit is `too_large`, at once, naming its size.
 */
export async function requestWhole(
  nc: NatsConnection,
  subject: string,
  data: Uint8Array,
  opts: { timeoutMs: number; limit: number; headers?: Record<string, string> },
): Promise<Uint8Array> {
  if (data.length > opts.limit) throw new ProtocolError("too_large", sizeText("request", data.length, opts.limit));
  let timer: NodeJS.Timeout | undefined;
  let waiting: { reply: string; done(): void } | undefined;
  try {
    return await new Promise<Uint8Array>((resolve, reject) => {
      waiting = replyInboxOf(nc).open({ limit: opts.limit, subject, assembly: null, resolve, reject });
      timer = setTimeout(() => reject(new errors.TimeoutError()), opts.timeoutMs);
      publishWhole(nc, subject, data, waiting.reply, opts.headers);
    });
  } finally {
    clearTimeout(timer);
    waiting?.done();
  }
}

/**
 * The bus limit of a call's request and of its answer: the body limit (of a client's request,
 * and of an upstream's result) plus room for what wraps it (method, ids, headers, envelope).
 */
export function callMessageLimit(maxBodyBytes: number): number {
  return maxBodyBytes + 64 * 1024;
}

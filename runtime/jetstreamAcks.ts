// JetStream publishes whose acknowledgements come back on one subscription of the connection
// (`<inbox>.<n>`) instead of a request each: nats.js's request takes a token, a timer and a
// promise of its own, and builds an Error with its stack ("cancelled") for every request that
// was answered (2.3% of a worker's CPU during admin adds, profiled). Failures are nats.js's own
// error classes, so jetstreamRetry.ts's retries and isCasConflict read them as before.
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { createInbox, errors, headers as natsHeaders, type Msg, type NatsConnection, type NatsConnectionImpl, type Subscription } from "@nats-io/transport-node";
import { JetStreamApiError, PubHeaders, type PubAck } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { isCasConflict, type KvStore } from "../actors/kvStore.ts";
import { kvSubject } from "../protocol/subjects.ts";
import { publishEvent } from "./events.ts";
import { DEFAULT_RETRY, retryTransient, WRITE_ATTEMPT_MS } from "./jetstreamRetry.ts";

type Pending = { resolve: (ack: PubAck) => void; reject: (err: Error) => void; deadline: number; subject: string };

/** How often publishes that were never acknowledged are failed as timed out. */
const SWEEP_MS = 250;
const decoder = new TextDecoder();
const encoder = new TextEncoder();

export class AckedPublisher {
  readonly #prefix: string;
  readonly #sub: Subscription;
  readonly #pending = new Map<string, Pending>();
  readonly #sweep: NodeJS.Timeout;
  #next = 0;

  constructor(
    private readonly nc: NatsConnection,
    /** each publish waits this long for its acknowledgement (jetstreamRetry.ts: a new leader may drop one unanswered) */
    private readonly timeoutMs = WRITE_ATTEMPT_MS,
  ) {
    // under the connection's own inbox prefix: the one its user may subscribe to (nats.conf)
    this.#prefix = `${createInbox((nc as NatsConnectionImpl).options.inboxPrefix)}.`;
    this.#sub = nc.subscribe(`${this.#prefix}*`, { callback: (err, msg) => void (err || this.#acknowledged(msg)) });
    this.#sweep = setInterval(() => this.#expire(), SWEEP_MS).unref();
  }

  /** Publishes into a stream and resolves with the stream's acknowledgement. */
  publish(subject: string, data: Uint8Array, opts: { msgID?: string; expectedLastSubjectSequence?: number } = {}): Promise<PubAck> {
    return new Promise<PubAck>((resolve, reject) => {
      const token = String(this.#next++);
      const h = natsHeaders();
      if (opts.msgID !== undefined) h.set(PubHeaders.MsgIdHdr, opts.msgID);
      if (opts.expectedLastSubjectSequence !== undefined) h.set(PubHeaders.ExpectedLastSubjectSequenceHdr, String(opts.expectedLastSubjectSequence));
      this.#pending.set(token, { resolve, reject, deadline: performance.now() + this.timeoutMs, subject });
      try {
        this.nc.publish(subject, data, { reply: this.#prefix + token, headers: h });
      } catch (err) {
        this.#pending.delete(token);
        reject(err as Error);
      }
    });
  }

  stop(): void {
    clearInterval(this.#sweep);
    this.#sub.unsubscribe();
    for (const p of this.#pending.values()) p.reject(new errors.RequestError("the publisher stopped"));
    this.#pending.clear();
  }

  #acknowledged(msg: Msg): void {
    const token = msg.subject.slice(this.#prefix.length);
    const p = this.#pending.get(token);
    if (!p) return;
    this.#pending.delete(token);
    // no stream takes the subject (or none has a leader right now): as nats.js reports it
    if (msg.data.length === 0 && msg.headers?.code === 503) return p.reject(new errors.NoRespondersError(p.subject));
    try {
      const answer = JSON.parse(decoder.decode(msg.data)) as PubAck & { error?: ConstructorParameters<typeof JetStreamApiError>[0] };
      if (answer.error) return p.reject(new JetStreamApiError(answer.error));
      p.resolve(answer);
    } catch (err) {
      p.reject(err as Error);
    }
  }

  /** Publishes not acknowledged in time: outcome unknown, as a request's timeout. */
  #expire(): void {
    const now = performance.now();
    // one timeout for all: the oldest come first
    for (const [token, p] of this.#pending) {
      if (p.deadline > now) break;
      this.#pending.delete(token);
      p.reject(new errors.TimeoutError());
    }
  }
}

/**
 * `kv`'s create and update through the publisher (retried through node losses as the bucket's
 * own are); everything else, and a create that meets a deleted key's marker, is the bucket's.
 */
export function ackedKv(kv: KV, bucket: string, acks: AckedPublisher): KvStore {
  const write = (key: string, value: string | Uint8Array, expected: number) => {
    const data = typeof value === "string" ? encoder.encode(value) : value;
    return retryTransient(
      `write ${bucket}`,
      async () => (await acks.publish(kvSubject(bucket, key), data, { expectedLastSubjectSequence: expected })).seq,
      DEFAULT_RETRY,
      // a repeat after a timeout may meet its own earlier write as a conflict: it landed when the key holds what was written
      async (err) => {
        if (!isCasConflict(err)) return null;
        const e = await kv.get(key);
        return e?.operation === "PUT" && Buffer.from(e.value).equals(data) ? { result: e.revision } : null;
      },
    );
  };
  return {
    get: (key, opts) => kv.get(key, opts),
    keys: (filter) => kv.keys(filter),
    put: (key, value, opts) => kv.put(key, value, opts),
    delete: (key, opts) => kv.delete(key, opts),
    purge: (key, opts) => kv.purge(key, opts),
    async create(key, value) {
      try {
        return await write(key, value, 0);
      } catch (err) {
        // a key whose last entry is a delete marker: nats.js's create takes it over at the marker's revision
        if (isCasConflict(err)) return kv.create(key, value);
        throw err;
      }
    },
    update: (key, value, version) => write(key, value, version),
  };
}

/** Durable events (events.ts) through the publisher, retried through node losses under one id: the stream drops a repeat's copy. */
export function ackedEvents(acks: AckedPublisher): (subject: string, event: unknown) => Promise<void> {
  return (subject, event) => {
    const msgID = randomUUID();
    return retryTransient(`publish ${subject}`, () => publishEvent(acks, subject, event, msgID));
  };
}

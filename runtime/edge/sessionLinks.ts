import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { EdgeCancelSchema } from "../../protocol/edge.ts";
import { StreamEventSchema, type StreamEvent } from "../../protocol/upstream.ts";
import { STREAM_GET, type Subjects } from "../../protocol/subjects.ts";
import { decodeJson, encodeJson, listen, type Guard } from "../bus.ts";

/** A client stream held by this worker's edge. */
export type HeldStream = {
  /** the endpoint's scope: null for `/mcp`, else the one gateway (change notices go by it) */
  scope: string | null;
  /** a stream event published for this stream (live, over core NATS) */
  deliver(event: StreamEvent): void;
  close(): void;
};

type Links = {
  streams: Map<string, HeldStream>;
  requests: Map<string, (reason?: string) => void>;
  sub: Subscription;
  /** the subscription is in place at the server (a flush after the SUB) */
  ready: Promise<void>;
  /** since when nothing of the session is held here (lingering), else undefined */
  idleSince: number | undefined;
};

/** How long a session's subscription lingers after the last thing held of it here, and how many may. */
export const LINGER = { ms: 60_000, sessions: 1_000 } as const;

/**
 * What this worker holds of each client session: its open streams and its requests in flight.
 * While it holds anything of a session it listens on the messages of the session's streams
 * (each goes to the stream it names). The subscription lingers a while after the last thing
 * held (at most `LINGER.sessions` of them, for `LINGER.ms`), so a session calling again here
 * pays its SUB, the flush and the UNSUB once, not per call. The edge tells it of a session
 * that ended (`ended`: a DELETE at another worker ends the streams here).
 */
export class SessionLinks {
  readonly #sessions = new Map<string, Links>();
  /** lingering sessions, oldest first */
  readonly #idle = new Set<string>();
  readonly #cancelSub: Subscription;
  readonly #sweeper: NodeJS.Timeout;

  constructor(
    private readonly nc: NatsConnection,
    private readonly s: Subjects,
    private readonly guard: Guard,
    private readonly now: () => number = Date.now,
  ) {
    this.#sweeper = setInterval(() => this.#dropIdle(this.now() - LINGER.ms), LINGER.ms / 4);
    this.#sweeper.unref();
    // Cancellations from clients whose request is in flight here but who posted them elsewhere.
    this.#cancelSub = listen(
      nc,
      s.edge.cancelAll,
      (msg) => {
        const sid = s.parseEdgeCancel(msg.subject);
        const c = EdgeCancelSchema.safeParse(safeJson(msg.data));
        if (sid && c.success) this.cancelLocal(sid, c.data.requestId, c.data.reason);
      },
      { ...guard, expect: "message" },
    );
  }

  #links(sid: string): Links {
    let l = this.#sessions.get(sid);
    if (!l) {
      // a JetStream delivery into stream.> (another stream's consumer, an API answer) is refused by `listen`
      const sub = listen(this.nc, this.s.stream.sessionMessages(sid), (msg) => this.#onEvent(sid, msg.subject, msg.data), { ...this.guard, expect: "message" });
      // A flush cut short by a lost NATS connection is no failure: on reconnect nats.js sends
      // every subscription before what it buffered, so the call still leaves after its link.
      l = { streams: new Map(), requests: new Map(), sub, ready: this.nc.flush().catch(() => {}), idleSince: undefined };
      this.#sessions.set(sid, l);
    } else if (l.idleSince !== undefined) {
      l.idleSince = undefined;
      this.#idle.delete(sid);
    }
    return l;
  }

  /** Nothing of `sid` held here any more: its subscription lingers (the oldest beyond the bound goes). */
  #release(sid: string): void {
    const l = this.#sessions.get(sid);
    if (!l || l.requests.size > 0 || l.streams.size > 0 || l.idleSince !== undefined) return;
    l.idleSince = this.now();
    this.#idle.add(sid);
    if (this.#idle.size > LINGER.sessions) this.#drop(this.#idle.values().next().value!);
  }

  #drop(sid: string): void {
    const l = this.#sessions.get(sid);
    this.#idle.delete(sid);
    if (!l) return;
    l.sub.unsubscribe();
    this.#sessions.delete(sid);
  }

  /** Drops the lingering sessions idle since before `before`. */
  #dropIdle(before: number): void {
    for (const sid of this.#idle) {
      if ((this.#sessions.get(sid)?.idleSince ?? 0) >= before) break;
      this.#drop(sid);
    }
  }

  /** Subscriptions of sessions held or lingering here (a figure for tests and metrics). */
  subscribedSessions(): number {
    return this.#sessions.size;
  }

  /** A session ended (anywhere): its streams here close, its subscription goes. */
  ended(sid: string): void {
    const l = this.#sessions.get(sid);
    if (!l) return;
    for (const stream of l.streams.values()) stream.close();
    if (l.requests.size === 0 && l.streams.size === 0) this.#drop(sid);
  }

  /**
   * Holds a stream of `sid` here; an older one of the same id here is closed. Resolves once
   * the subscription is in place, so no event published after it is lost.
   */
  async hold(sid: string, streamId: string, stream: HeldStream): Promise<() => void> {
    const l = this.#links(sid);
    const old = l.streams.get(streamId);
    l.streams.set(streamId, stream);
    old?.close();
    await l.ready;
    return () => {
      const cur = this.#sessions.get(sid);
      if (cur?.streams.get(streamId) === stream) cur.streams.delete(streamId);
      this.#release(sid);
    };
  }

  /** Registers a request in flight here, so a cancellation posted at any worker reaches `abort`. */
  addRequest(sid: string, requestId: string, abort: (reason?: string) => void): () => void {
    const l = this.#links(sid);
    l.requests.set(requestId, abort);
    return () => {
      const cur = this.#sessions.get(sid);
      if (cur?.requests.get(requestId) === abort) cur.requests.delete(requestId);
      this.#release(sid);
    };
  }

  /** Sessions whose GET stream this worker holds: a client listening there is not idle. */
  streamSessionIds(): string[] {
    return [...this.#sessions.entries()].flatMap(([sid, l]) => (l.streams.has(STREAM_GET) ? [sid] : []));
  }

  /** Every GET stream held here, with its session, for change notices. */
  getStreams(): Array<{ sid: string; scope: string | null }> {
    return [...this.#sessions.entries()].flatMap(([sid, l]) => {
      const get = l.streams.get(STREAM_GET);
      return get ? [{ sid, scope: get.scope }] : [];
    });
  }

  /** Open streams held here (a stopping worker waits for the POST streams among them). */
  count(): number {
    let n = 0;
    for (const l of this.#sessions.values()) n += l.streams.size;
    return n;
  }

  /** Cancels a request of `sid` if it is in flight here; false when it is not. */
  cancelLocal(sid: string, requestId: string, reason?: string): boolean {
    const abort = this.#sessions.get(sid)?.requests.get(requestId);
    if (!abort) return false;
    abort(reason);
    return true;
  }

  /** Cancels wherever the request is in flight: here, or by telling every worker. */
  cancel(sid: string, requestId: string, reason?: string): void {
    if (!this.cancelLocal(sid, requestId, reason)) this.nc.publish(this.s.edge.cancel(sid), encodeJson({ requestId, ...(reason ? { reason } : {}) }));
  }

  #onEvent(sid: string, subject: string, data: Uint8Array): void {
    const at = this.s.parseStream(subject);
    const r = StreamEventSchema.safeParse(safeJson(data));
    if (!at || at.sid !== sid || !r.success) return void this.guard.log.warn({ sid }, "ignoring a malformed stream event");
    this.#sessions.get(sid)?.streams.get(at.streamId)?.deliver(r.data);
  }

  /** Closes every stream held here. */
  closeAll(): void {
    for (const l of this.#sessions.values()) for (const stream of l.streams.values()) stream.close();
  }

  stop(): void {
    clearInterval(this.#sweeper);
    this.#cancelSub.unsubscribe();
    for (const [sid, l] of this.#sessions) {
      for (const stream of l.streams.values()) stream.close();
      l.sub.unsubscribe();
      this.#sessions.delete(sid);
    }
    this.#idle.clear();
  }
}

function safeJson(data: Uint8Array): unknown {
  try {
    return decodeJson(data);
  } catch {
    return undefined;
  }
}

/** The session-unique id the edge gives a JSON-RPC request id (numbers and strings kept apart). */
export function wireKey(id: string | number): string {
  return typeof id === "number" ? `n${id}` : `s${id}`;
}

/** The client's own JSON-RPC id of a `wireKey`. */
export function parseWireId(key: string): string | number {
  return key.startsWith("n") ? Number(key.slice(1)) : key.slice(1);
}

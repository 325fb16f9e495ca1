import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { EdgeCancelSchema } from "../../protocol/edge.ts";
import { SessionClosedEventSchema, StreamEventSchema, type StreamEvent } from "../../protocol/upstream.ts";
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

type Links = { streams: Map<string, HeldStream>; requests: Map<string, (reason?: string) => void>; sub: Subscription; closedSub: Subscription };

/**
 * What this worker holds of each client session: its open streams and its requests in flight.
 * While it holds anything of a session it listens on the session's stream events (each goes
 * to the stream it names) and on its closed event (a DELETE at another worker ends the
 * streams here).
 */
export class SessionLinks {
  readonly #sessions = new Map<string, Links>();
  readonly #cancelSub: Subscription;

  constructor(
    private readonly nc: NatsConnection,
    private readonly s: Subjects,
    private readonly guard: Guard,
  ) {
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
      const opts = { ...this.guard, expect: "message" } as const;
      const sub = listen(this.nc, this.s.stream.sessionMessages(sid), (msg) => this.#onEvent(sid, msg.subject, msg.data), opts);
      const closedSub = listen(
        this.nc,
        this.s.evt.sessionClosed(sid),
        (msg) => {
          if (SessionClosedEventSchema.safeParse(safeJson(msg.data)).data?.sid !== sid) return;
          for (const stream of this.#sessions.get(sid)?.streams.values() ?? []) stream.close();
        },
        opts,
      );
      l = { streams: new Map(), requests: new Map(), sub, closedSub };
      this.#sessions.set(sid, l);
    }
    return l;
  }

  #release(sid: string): void {
    const l = this.#sessions.get(sid);
    if (!l || l.requests.size > 0 || l.streams.size > 0) return;
    l.sub.unsubscribe();
    l.closedSub.unsubscribe();
    this.#sessions.delete(sid);
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
    // A flush cut short by a lost NATS connection is no failure: on reconnect nats.js sends
    // every subscription before what it buffered, so the call still leaves after its link.
    await this.nc.flush().catch(() => {});
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
    this.#cancelSub.unsubscribe();
    for (const [sid, l] of this.#sessions) {
      for (const stream of l.streams.values()) stream.close();
      l.sub.unsubscribe();
      l.closedSub.unsubscribe();
      this.#sessions.delete(sid);
    }
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

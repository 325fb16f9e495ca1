import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { JSONRPCMessage, ServerNotification } from "@modelcontextprotocol/sdk/types.js";
import { EdgeCancelSchema } from "../../protocol/edge.ts";
import { ClientNotificationSchema, SessionClosedEventSchema } from "../../protocol/upstream.ts";
import type { Subjects } from "../../protocol/subjects.ts";
import { decodeJson, encodeJson, listen, type Guard } from "../bus.ts";

/** A request of a downstream session in flight on this worker. */
export type InFlight = {
  /** delivers a notification on the request's own response stream */
  notify(n: ServerNotification): Promise<void>;
  /** hands a message (the client's cancellation) to the SDK server answering the request */
  deliver(m: JSONRPCMessage): void;
};

/** The session's GET stream, when this worker holds it. */
export type GetStream = { gid: string | null; notify(n: ServerNotification): Promise<void>; close(): void };

type Links = { requests: Map<string, InFlight>; stream?: GetStream; sub: Subscription; closedSub: Subscription };

/**
 * What this worker holds of each downstream session: requests in flight and the GET stream.
 * While it holds anything of a session it listens on the session's notification subject
 * (upstream notifications: progress to the request it belongs to, the rest to the GET
 * stream) and on its closed event (a DELETE at another worker ends the GET stream here).
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
      const opts = { ...this.guard, expect: "message" } as const;
      const sub = listen(this.nc, this.s.upstream.clientNotification(sid), (msg) => void this.#onUpstream(sid, msg.data), opts);
      const closedSub = listen(
        this.nc,
        this.s.evt.sessionClosed(sid),
        (msg) => {
          if (SessionClosedEventSchema.safeParse(safeJson(msg.data)).data?.sid === sid) this.#sessions.get(sid)?.stream?.close();
        },
        opts,
      );
      l = { requests: new Map(), sub, closedSub };
      this.#sessions.set(sid, l);
    }
    return l;
  }

  #release(sid: string): void {
    const l = this.#sessions.get(sid);
    if (!l || l.requests.size > 0 || l.stream) return;
    l.sub.unsubscribe();
    l.closedSub.unsubscribe();
    this.#sessions.delete(sid);
  }

  /** Registers a request; the subscription is in place before the call leaves, so no progress is lost. */
  async addRequest(sid: string, requestId: string, f: InFlight): Promise<() => void> {
    this.#links(sid).requests.set(requestId, f);
    // A flush cut short by a lost NATS connection is no failure: on reconnect nats.js sends
    // every subscription before what it buffered, so the call still leaves after its link.
    await this.nc.flush().catch(() => {});
    return () => {
      const l = this.#sessions.get(sid);
      if (l?.requests.get(requestId) === f) l.requests.delete(requestId);
      this.#release(sid);
    };
  }

  /** Takes over the session's GET stream on this worker; an older one here is closed. */
  setStream(sid: string, stream: GetStream): () => void {
    const l = this.#links(sid);
    const old = l.stream;
    l.stream = stream;
    old?.close();
    return () => {
      const cur = this.#sessions.get(sid);
      if (cur?.stream === stream) delete cur.stream;
      this.#release(sid);
    };
  }

  /** Sessions whose GET stream this worker holds: a client listening there is not idle. */
  streamSessionIds(): string[] {
    return [...this.#sessions.entries()].flatMap(([sid, l]) => (l.stream ? [sid] : []));
  }

  /** Every GET stream held here, for change notices. */
  streams(): GetStream[] {
    return [...this.#sessions.values()].flatMap((l) => (l.stream ? [l.stream] : []));
  }

  /** Cancels a request of `sid` if it is in flight here; false when it is not. */
  cancelLocal(sid: string, requestId: string, reason?: string): boolean {
    const f = this.#sessions.get(sid)?.requests.get(requestId);
    if (!f) return false;
    f.deliver({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: parseWireId(requestId), ...(reason ? { reason } : {}) } });
    return true;
  }

  /** Cancels wherever the request is in flight: here, or by telling every worker. */
  cancel(sid: string, requestId: string, reason?: string): void {
    if (!this.cancelLocal(sid, requestId, reason)) this.nc.publish(this.s.edge.cancel(sid), encodeJson({ requestId, ...(reason ? { reason } : {}) }));
  }

  async #onUpstream(sid: string, data: Uint8Array): Promise<void> {
    const r = ClientNotificationSchema.safeParse(safeJson(data));
    if (!r.success) return void this.guard.log.warn({ sid }, "ignoring a malformed upstream notification");
    const l = this.#sessions.get(sid);
    const n = r.data.notification as ServerNotification;
    const target = (r.data.requestId !== undefined ? l?.requests.get(r.data.requestId) : undefined) ?? (r.data.requestId === undefined ? l?.stream : undefined);
    await target?.notify(n).catch((err) => this.guard.log.debug({ err, sid, method: n.method }, "could not deliver a notification"));
  }

  stop(): void {
    this.#cancelSub.unsubscribe();
    for (const [sid, l] of this.#sessions) {
      l.stream?.close();
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

function parseWireId(key: string): string | number {
  return key.startsWith("n") ? Number(key.slice(1)) : key.slice(1);
}

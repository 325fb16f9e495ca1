import type { DownstreamSession, LoggingLevel } from "../protocol/edge.ts";
import type { ViewList } from "./catalogView.ts";

// The client (downstream) session actor: its record lives in KV (`ds.<sid>`) and any edge
// serves it. This module is its policy: how a client's messages change the record, which
// lists it sees from where, and the lifecycle of its open streams. The edge host applies it.

/** The version a session speaks: the client's when supported, else the newest (the client may then leave). */
export function negotiateVersion(requested: string, supported: readonly string[], latest: string): string {
  return supported.includes(requested) ? requested : latest;
}

/** `logging/setLevel`: null when the record already says so (no write). */
export function withLogLevel(record: DownstreamSession, level: LoggingLevel): DownstreamSession | null {
  return record.logLevel === level ? null : { ...record, logLevel: level };
}

/** `resources/subscribe` (`on`) or `unsubscribe` of `uri` at gateway `gid`; null when nothing changes. */
export function withSubscription(record: DownstreamSession, gid: string, uri: string, on: boolean): DownstreamSession | null {
  const current = record.subscriptions?.[gid] ?? [];
  if (current.includes(uri) === on) return null;
  const next = on ? [...current, uri] : current.filter((u) => u !== uri);
  const subscriptions = { ...record.subscriptions, [gid]: next };
  if (next.length === 0) delete subscriptions[gid];
  return { ...record, subscriptions };
}

/**
 * Client capabilities for which an upstream may offer a client more than discovery saw (a
 * tool that samples is offered only to a client that can sample): discovery declares none.
 */
const OFFER_CHANGING = ["sampling", "elicitation", "roots", "tasks"];

/** Whether the upstreams may offer this client lists of its own (see OFFER_CHANGING). */
export function offeredItsOwn(record: DownstreamSession): boolean {
  return OFFER_CHANGING.some((c) => c in record.capabilities);
}

/**
 * Up to how many gateways of `/mcp` a capable client's lists come from its own upstream
 * sessions (one each, opened at its first list); past it, the shared catalog serves it, so a
 * client's first list never opens an upstream session for every one of thousands of gateways.
 */
export const OWN_LISTS_MAX_GATEWAYS = 32;

/**
 * The gateways whose `list` this session reads from its upstream session, not from the shared
 * catalog: every gateway of the endpoint (`inScope`) for a client whose capabilities change what
 * upstreams offer it (on `/mcp` only up to OWN_LISTS_MAX_GATEWAYS), else those that changed that
 * list on its session (`views`).
 */
export function ownViews(record: DownstreamSession, list: ViewList, scope: string | null, inScope: () => string[]): string[] {
  if (offeredItsOwn(record)) {
    const all = inScope();
    if (scope !== null || all.length <= OWN_LISTS_MAX_GATEWAYS) return all;
  }
  return Object.entries(record.views ?? {}).flatMap(([gid, lists]) => (lists.includes(list) && (scope === null || scope === gid) ? [gid] : []));
}

/** Which view list a list request reads (`resources/templates/list` belongs to `resources`). */
export function viewListOf(method: string): ViewList | null {
  if (method === "tools/list") return "tools";
  if (method === "prompts/list") return "prompts";
  if (method === "resources/list" || method === "resources/templates/list") return "resources";
  return null;
}

/**
 * One client stream (a POST's response stream or the session's GET stream) on the edge that
 * holds it. A POST stream carries the answers of the requests it was opened for and ends
 * after the last; the first answer of a request is the one written (the call's reply and
 * the same answer relayed on the stream both arrive). A GET stream ends only when its client
 * leaves, its session ends or its edge stops.
 */
export class ClientStreamLifecycle {
  readonly #pending: Set<string>;
  #ended = false;

  constructor(
    readonly kind: "post" | "get",
    requestIds: Iterable<string> = [],
  ) {
    this.#pending = new Set(requestIds);
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Requests still unanswered on this stream. */
  get pending(): number {
    return this.#pending.size;
  }

  /** An answer of `requestId` arrived: `write` it (and `end` after it), or `drop` a second copy. */
  answer(requestId: string): "write" | "write-and-end" | "drop" {
    if (this.#ended || !this.#pending.delete(requestId)) return "drop";
    if (this.kind === "post" && this.#pending.size === 0) {
      this.#ended = true;
      return "write-and-end";
    }
    return "write";
  }

  /** The client left, the session ended or the edge stopped. */
  end(): void {
    this.#ended = true;
  }
}

// The client side of MCP's Streamable HTTP transport, over undici's dispatch API: one
// dispatch per HTTP request, its response bytes parsed as they arrive (JSON or SSE), no
// WHATWG fetch, web streams or AbortSignal per request. The SDK `Client` still does the
// protocol over it (it implements the SDK's `Transport`). It knows which outgoing request
// each incoming message belongs to (the POST whose response stream carried it), which is
// how a server→client request finds its call without async context tracking.
import { isWithinOrigin } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { Transport, TransportSendOptions } from "@modelcontextprotocol/sdk/shared/transport.js";
import { isInitializedNotification, isJSONRPCRequest, JSONRPCMessageSchema, type JSONRPCMessage, type RequestId } from "@modelcontextprotocol/sdk/types.js";
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Dispatcher } from "undici";

/** What one outgoing request carries besides the transport's own headers. */
export type RequestScope = {
  /** passthrough headers of the downstream call (never override the gateway's static headers and auth) */
  headers: Record<string, string>;
  /** trace context of the call's upstream span (overrides any a client passed through) */
  trace?: Record<string, string>;
  /** ends the HTTP request and its response stream */
  signal?: AbortSignal;
  /** bytes of the response past which the request is ended (`cut` is told how many were read) */
  maxBytes?: number;
  cut?(bytesRead: number): void;
  /** its response stream ended without its answer, and could not be resumed */
  lost?(err: Error): void;
};

export type StreamableHttpOptions = {
  url: URL;
  /** the gateway's static headers and auth (lower-case names), on every request */
  headers: Record<string, string>;
  dispatcher: Dispatcher;
  /** the scope of an outgoing request by its JSON-RPC id (the call it is sent for), if any */
  scopeOf(id: RequestId): RequestScope | undefined;
  /** passthrough headers for requests of no call (initialize, notifications, answers, the GET stream) */
  defaultHeaders(): Record<string, string>;
  /**
   * whether to open the standalone GET stream once the session is initialized: it holds a socket for
   * the session's life, and only carries what the upstream says unprompted
   */
  wantsStandaloneStream(): boolean;
};

/** An HTTP-level failure: the status and what the upstream said (bounded). */
export class StreamableHttpError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(`Streamable HTTP error: ${message}`);
    this.name = "StreamableHttpError";
  }
}

const MAX_REDIRECTS = 5;
/** how much of an error response's body is kept for its message */
const ERROR_BODY_BYTES = 4_096;
/** the SDK's reconnection schedule for the standalone stream */
const RECONNECT = { initialMs: 1_000, maxMs: 30_000, factor: 1.5, maxRetries: 2 };

type Response = { status: number; headers: Record<string, string | string[] | undefined> };

/** What a response body is read into: raw chunks as they come, then the end or a failure. */
type BodySink = {
  onData(chunk: Buffer): void;
  onEnd(): void;
  onError(err: Error): void;
};

type InFlight = { abort(reason: Error): void };

const header = (res: Response, name: string): string | undefined => {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
};

const mediaType = (value: string | undefined) => value?.split(";")[0]!.trim().toLowerCase();

export class StreamableHttpTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;
  sessionId?: string;
  /**
   * The JSON-RPC id of the request whose response stream carried the message being delivered
   * to `onmessage` (read it synchronously there); undefined on the standalone stream.
   */
  deliveringFor: RequestId | undefined;

  readonly #o: StreamableHttpOptions;
  #protocolVersion: string | undefined;
  #started = false;
  #closed = false;
  readonly #inFlight = new Set<InFlight>();
  #reconnectTimer: NodeJS.Timeout | undefined;
  #serverRetryMs: number | undefined;

  constructor(options: StreamableHttpOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    if (this.#started) throw new Error("StreamableHttpTransport already started");
    this.#started = true;
  }

  setProtocolVersion(version: string): void {
    this.#protocolVersion = version;
  }

  async send(message: JSONRPCMessage, _options?: TransportSendOptions): Promise<void> {
    try {
      const isRequest = isJSONRPCRequest(message);
      const scope = isRequest ? this.#o.scopeOf(message.id) : undefined;
      const headers = this.#headers(scope);
      headers["content-type"] = "application/json";
      headers.accept = "application/json, text/event-stream";
      const res = await this.#request("POST", headers, JSON.stringify(message), scope?.signal, {
        onHeaders: (r) => {
          const sid = header(r, "mcp-session-id");
          if (sid) this.sessionId = sid;
        },
        body: (r) => {
          if (r.status === 202 || !isRequest) return undefined;
          const type = mediaType(header(r, "content-type"));
          const origin = message.id;
          if (type === "text/event-stream") return this.#sseSink(origin, scope);
          if (type === "application/json") return this.#jsonSink(origin, scope);
          throw new StreamableHttpError(-1, `Unexpected content type: ${header(r, "content-type")}`);
        },
      });
      if (res.error) throw new StreamableHttpError(res.status, `Error POSTing to endpoint: ${res.error}`);
      // The session is ready only once its standalone stream is open (or refused): what the
      // upstream says unprompted after the first call (a list_changed) must find it there.
      if (res.status === 202 && isInitializedNotification(message) && this.#o.wantsStandaloneStream()) {
        await new Promise<void>((opened) => this.#openStandalone(undefined, 0, opened));
      }
    } catch (err) {
      this.onerror?.(err as Error);
      throw err;
    }
  }

  /** Ends the upstream session (HTTP DELETE); a 405 means the upstream keeps no sessions to end. */
  async terminateSession(): Promise<void> {
    if (!this.sessionId) return;
    const res = await this.#request("DELETE", this.#headers(undefined), undefined, undefined, { body: () => undefined });
    if (res.error && res.status !== 405) throw new StreamableHttpError(res.status, `Failed to terminate session: ${res.error}`);
    this.sessionId = undefined;
  }

  /** Ends every request and stream of this session at once (its sockets are the dispatcher's). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#reconnectTimer);
    const reason = new Error("transport closed");
    for (const r of [...this.#inFlight]) r.abort(reason);
    this.onclose?.();
  }

  #headers(scope: RequestScope | undefined): Record<string, string> {
    // passthrough first, so neither static headers nor auth can be overridden by a client
    const h: Record<string, string> = { ...(scope ? scope.headers : this.#o.defaultHeaders()) };
    if (scope?.trace) Object.assign(h, scope.trace);
    Object.assign(h, this.#o.headers);
    if (this.sessionId) h["mcp-session-id"] = this.sessionId;
    if (this.#protocolVersion) h["mcp-protocol-version"] = this.#protocolVersion;
    return h;
  }

  /**
   * One HTTP exchange (redirects within the origin followed, as the SDK's transport does).
   * Resolves when the response starts, for a 2xx response whose body `handle.body` takes (it is
   * fed as it arrives, until it ends or the request is aborted); else when the response is over,
   * with `error` set for one that is not 2xx: its text, or why a redirect was not followed.
   */
  #request(
    method: "GET" | "POST" | "DELETE",
    headers: Record<string, string>,
    body: string | undefined,
    signal: AbortSignal | undefined,
    handle: { onHeaders?(r: Response): void; body(r: Response): BodySink | undefined },
    url = this.#o.url,
    hops = 0,
  ): Promise<Response & { error?: string }> {
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(new Error("transport closed"));
      if (signal?.aborted) return reject(signal.reason);
      let controller: Dispatcher.DispatchController | null = null;
      let abortedWith: Error | null = null;
      let res: Response | null = null;
      let sink: BodySink | undefined;
      let errorText: Buffer[] | null = null;
      let errorBytes = 0;
      let redirect: URL | null = null;
      let settled = false;
      const settle = (err: Error | null, value?: Response & { error?: string }) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve(value!);
      };
      /** the exchange is over: no more bytes, no more aborts */
      const over = (err: Error | null) => {
        this.#inFlight.delete(entry);
        signal?.removeEventListener("abort", onAbort);
        if (err) sink?.onError(err);
        settle(err);
      };
      const entry: InFlight = {
        abort: (reason) => {
          if (abortedWith) return;
          abortedWith = reason;
          if (controller) controller.abort(reason);
          else over(reason);
        },
      };
      const onAbort = () => entry.abort(signal!.reason instanceof Error ? signal!.reason : new Error(String(signal!.reason)));
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#inFlight.add(entry);
      this.#o.dispatcher.dispatch(
        {
          origin: url.origin,
          path: url.pathname + url.search,
          method,
          headers,
          body,
          // a quiet standalone stream is normal: only an abort ends it
          ...(method === "GET" ? { bodyTimeout: 0 } : {}),
        },
        {
          onRequestStart: (c) => {
            controller = c;
            if (abortedWith) c.abort(abortedWith);
          },
          onResponseStart: (c, status, hdrs) => {
            res = { status, headers: hdrs as Response["headers"] };
            handle.onHeaders?.(res);
            if (status >= 300 && status < 400) {
              redirect = this.#redirectTarget(res, method, url, hops);
              if (redirect) return;
            }
            if (status < 200 || status >= 300) {
              errorText = [];
              return;
            }
            try {
              sink = handle.body(res);
            } catch (err) {
              settle(err as Error);
              return entry.abort(err as Error);
            }
            if (sink) settle(null, res);
          },
          onResponseData: (_c, chunk) => {
            if (sink) {
              try {
                sink.onData(chunk);
              } catch (err) {
                entry.abort(err as Error);
              }
            } else if (errorText && errorBytes < ERROR_BODY_BYTES) {
              errorText.push(chunk);
              errorBytes += chunk.length;
            }
          },
          onResponseEnd: () => {
            const r = res!;
            if (redirect) {
              over(null);
              this.#request(method, headers, body, signal, handle, redirect, hops + 1).then(
                (v) => settle(null, v),
                (e: Error) => settle(e),
              );
              return;
            }
            if (errorText) {
              const text = Buffer.concat(errorText).toString("utf8").slice(0, ERROR_BODY_BYTES);
              settle(null, { ...r, error: this.#unfollowed(r, url) ?? text });
            } else settle(null, r);
            sink?.onEnd();
            over(null);
          },
          onResponseError: (_c, err) => over(abortedWith ?? err),
        },
      );
    });
  }

  /** A redirect the SDK's transport would follow: 307/308 (or any for GET), within the origin, at most 5 hops. */
  #redirectTarget(res: Response, method: string, from: URL, hops: number): URL | null {
    const location = header(res, "location");
    if (!location || hops >= MAX_REDIRECTS || ![301, 302, 303, 307, 308].includes(res.status)) return null;
    if (method !== "GET" && res.status !== 307 && res.status !== 308) return null;
    let to: URL;
    try {
      to = new URL(location, from);
    } catch {
      return null;
    }
    const addsUserinfo = (to.username || to.password) && (to.username !== from.username || to.password !== from.password);
    return !addsUserinfo && isWithinOrigin(from, to) ? to : null;
  }

  /** The SDK's words for a redirect left unfollowed, its target without userinfo, query or fragment. */
  #unfollowed(res: Response, from: URL): string | undefined {
    const location = header(res, "location");
    if (!location || ![301, 302, 303, 307, 308].includes(res.status)) return undefined;
    let to: URL;
    try {
      to = new URL(location, from);
    } catch {
      return undefined;
    }
    to.username = to.password = to.search = to.hash = "";
    if (to.protocol === "http:" && from.protocol === "https:") return `Redirect to plain http not followed; try ${to.href.replace(/^http:/, "https:")} instead`;
    return `Redirect to ${to.href} not followed`;
  }

  /** Counts a response's bytes against its scope's bound: past it, the request is ended where it is. */
  #counted(scope: RequestScope | undefined, read: (chunk: Buffer) => void): (chunk: Buffer) => void {
    const limit = scope?.maxBytes;
    if (limit === undefined) return read;
    let bytes = 0;
    return (chunk) => {
      bytes += chunk.length;
      if (bytes > limit) {
        scope!.cut?.(bytes);
        throw new Error(`answer over ${limit} bytes`);
      }
      read(chunk);
    };
  }

  #jsonSink(origin: RequestId, scope: RequestScope | undefined): BodySink {
    const chunks: Buffer[] = [];
    const read = this.#counted(scope, (c) => chunks.push(c));
    const lost = (err: Error) => {
      if (!this.#closed && !scope?.signal?.aborted) scope?.lost?.(err);
    };
    return {
      onData: read,
      onEnd: () => {
        let data: unknown;
        try {
          data = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch (err) {
          this.onerror?.(err as Error);
          return lost(err as Error);
        }
        let answered = false;
        for (const raw of Array.isArray(data) ? data : [data]) {
          const m = this.#deliver(raw, origin);
          if (m && "id" in m && m.id === origin && !("method" in m)) answered = true;
        }
        if (!answered) lost(new Error("the upstream's response carried no answer"));
      },
      onError: lost,
    };
  }

  /**
   * An SSE response stream. `origin`: the request it answers (undefined: the standalone stream).
   * When it ends before the answer after the upstream gave it an event id, it is resumed with a
   * GET carrying Last-Event-ID; the standalone stream is reopened (the SDK's schedule).
   */
  #sseSink(origin: RequestId | undefined, scope: RequestScope | undefined, onOpenEnded?: (lastEventId: string | undefined) => void): BodySink {
    let lastEventId: string | undefined;
    let answered = false;
    const decoder = new TextDecoder();
    const parser = createParser({
      onEvent: (event: EventSourceMessage) => {
        if (event.id) lastEventId = event.id;
        if (!event.data || (event.event && event.event !== "message")) return;
        let raw: unknown;
        try {
          raw = JSON.parse(event.data);
        } catch (err) {
          return this.onerror?.(err as Error);
        }
        const m = this.#deliver(raw, origin);
        if (m && origin !== undefined && "id" in m && m.id === origin && !("method" in m)) answered = true;
      },
      onRetry: (ms) => (this.#serverRetryMs = ms),
    });
    const read = this.#counted(scope, (chunk) => parser.feed(decoder.decode(chunk, { stream: true })));
    const ended = (err?: Error) => {
      if (this.#closed) return;
      if (origin === undefined) return onOpenEnded?.(lastEventId);
      if (answered) return;
      if (lastEventId !== undefined) return this.#resume(origin, scope, lastEventId);
      scope?.lost?.(err ?? new Error("the upstream ended the response stream without an answer"));
    };
    return {
      onData: read,
      onEnd: () => ended(),
      onError: (err) => {
        if (scope?.signal?.aborted || this.#closed) return;
        this.onerror?.(new Error(`SSE stream disconnected: ${err.message}`));
        ended(err);
      },
    };
  }

  /** Validates one incoming message and hands it on, saying which request's stream carried it. */
  #deliver(raw: unknown, origin: RequestId | undefined): JSONRPCMessage | undefined {
    const parsed = JSONRPCMessageSchema.safeParse(raw);
    if (!parsed.success) {
      this.onerror?.(parsed.error);
      return undefined;
    }
    this.deliveringFor = origin;
    try {
      this.onmessage?.(parsed.data);
    } finally {
      this.deliveringFor = undefined;
    }
    return parsed.data;
  }

  /** Picks up a request's stream where it broke off (the upstream replays after `lastEventId`). */
  #resume(origin: RequestId, scope: RequestScope | undefined, lastEventId: string): void {
    const headers = { ...this.#headers(scope), accept: "text/event-stream", "last-event-id": lastEventId };
    const failed = (err: Error) => {
      if (this.#closed || scope?.signal?.aborted) return;
      this.onerror?.(err);
      scope?.lost?.(err);
    };
    this.#request("GET", headers, undefined, scope?.signal, { body: () => this.#sseSink(origin, scope) }).then(
      (r) => r.error && failed(new StreamableHttpError(r.status, `Failed to resume SSE stream: ${r.error}`)),
      failed,
    );
  }

  /** The standalone stream: what the upstream says outside any request. A 405 means it offers none. */
  #openStandalone(lastEventId: string | undefined, attempt: number, opened: () => void = () => {}): void {
    if (this.#closed) return opened();
    const headers: Record<string, string> = { ...this.#headers(undefined), accept: "text/event-stream" };
    if (lastEventId) headers["last-event-id"] = lastEventId;
    const reopen = (from: string | undefined, failures: number) => {
      if (this.#closed || failures >= RECONNECT.maxRetries) {
        if (!this.#closed) this.onerror?.(new Error(`Maximum reconnection attempts (${RECONNECT.maxRetries}) exceeded.`));
        return;
      }
      const delay = this.#serverRetryMs ?? Math.min(RECONNECT.initialMs * RECONNECT.factor ** failures, RECONNECT.maxMs);
      this.#reconnectTimer = setTimeout(() => this.#openStandalone(from, failures), delay);
    };
    this.#request("GET", headers, undefined, undefined, { onHeaders: () => opened(), body: () => this.#sseSink(undefined, undefined, (last) => reopen(last ?? lastEventId, 0)) }).then(
      (r) => {
        opened();
        if (r.status === 405 || !r.error) return;
        this.onerror?.(new StreamableHttpError(r.status, `Failed to open SSE stream: ${r.error}`));
        reopen(lastEventId, attempt + 1);
      },
      (err: Error) => {
        opened();
        if (this.#closed) return;
        this.onerror?.(err);
        reopen(lastEventId, attempt + 1);
      },
    );
  }
}

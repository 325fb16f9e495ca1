// The client side of MCP's Streamable HTTP transport, its HTTP exchanges those of
// ./jsonRpcPost.ts (one undici dispatch each, the response bytes parsed as they arrive, no
// WHATWG fetch, web streams or AbortSignal per request). The SDK `Client` still does the
// protocol over it (it implements the SDK's `Transport`). It knows which outgoing request
// each incoming message belongs to (the POST whose response stream carried it), which is
// how a server→client request finds its call without async context tracking.
import type { Transport, TransportSendOptions } from "@modelcontextprotocol/sdk/shared/transport.js";
import { isInitializedNotification, JSONRPCMessageSchema, type JSONRPCMessage, type RequestId } from "@modelcontextprotocol/sdk/types.js";
import type { Dispatcher } from "undici";
import { bounded, eventMessage, exchange, header, jsonMessages, mediaType, sseReader, type BodySink, type HttpResponse, type InFlight } from "./jsonRpcPost.ts";

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

type SinkHost = {
  deliver(raw: unknown, origin: RequestId): JSONRPCMessage | undefined;
  closed(): boolean;
  onerror(err: Error): void;
};

/**
 * A JSON response to a request: read whole (counted against its scope's bound: past it, the
 * request is ended where it is), then its messages delivered; it must carry the request's answer.
 * A class rather than closures: one is made per call.
 */
class JsonResponseSink implements BodySink {
  readonly #chunks: Buffer[] = [];
  #bytes = 0;

  constructor(
    readonly host: SinkHost,
    readonly origin: RequestId,
    readonly scope: RequestScope | undefined,
  ) {}

  onData(chunk: Buffer): void {
    this.#bytes += chunk.length;
    const limit = this.scope?.maxBytes;
    if (limit !== undefined && this.#bytes > limit) {
      this.scope!.cut?.(this.#bytes);
      throw new Error(`answer over ${limit} bytes`);
    }
    this.#chunks.push(chunk);
  }

  onEnd(): void {
    let messages: unknown[];
    try {
      messages = jsonMessages(this.#chunks, this.origin);
    } catch (err) {
      this.host.onerror(err as Error);
      return this.onError(err as Error);
    }
    let answered = false;
    for (const raw of messages) {
      const m = this.host.deliver(raw, this.origin);
      if (m && "id" in m && m.id === this.origin && !("method" in m)) answered = true;
    }
    if (!answered) this.onError(new Error("the upstream's response carried no answer"));
  }

  /** its stream was lost (unless this end aborted it) */
  onError(err: Error): void {
    if (!this.host.closed() && !this.scope?.signal?.aborted) this.scope?.lost?.(err);
  }
}

/** the SDK's reconnection schedule for the standalone stream */
const RECONNECT = { initialMs: 1_000, maxMs: 30_000, factor: 1.5, maxRetries: 2 };
/**
 * How long a new session waits for its standalone stream's headers before it takes calls anyway
 * (the stream goes on opening): a proxy that buffers responses holds an SSE stream's headers
 * until its first event, which may never come.
 */
export const STANDALONE_WAIT_MS = 2_000;

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
      // built by our client or the SDK's: its fields say what it is
      const isRequest = "method" in message && "id" in message;
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
      // The session is ready once its standalone stream is open (or refused): what the upstream
      // says unprompted after the first call (a list_changed) must find it there. Asked for only
      // after `notifications/initialized` is accepted, as the SDK's client does: some servers end
      // a session whose GET comes first. The wait is bounded (STANDALONE_WAIT_MS).
      if (res.status === 202 && isInitializedNotification(message) && this.#o.wantsStandaloneStream()) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([new Promise<void>((opened) => this.#openStandalone(undefined, 0, opened)), new Promise<void>((r) => (timer = setTimeout(r, STANDALONE_WAIT_MS)))]);
        clearTimeout(timer);
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
   * One HTTP exchange of this session, ended by `close`: `handler.body` reads a 2xx response's
   * body; another's text is the resolved `error`.
   */
  #request(
    method: "GET" | "POST" | "DELETE",
    headers: Record<string, string>,
    body: string | undefined,
    signal: AbortSignal | undefined,
    handler: { onHeaders?(r: HttpResponse): void; body(r: HttpResponse): BodySink | undefined },
  ): Promise<HttpResponse & { error?: string }> {
    if (this.#closed) return Promise.reject(new Error("transport closed"));
    // a quiet standalone stream is normal: only an abort ends it
    const ok = (r: HttpResponse) => r.status >= 200 && r.status < 300;
    return exchange(
      { dispatcher: this.#o.dispatcher, url: this.#o.url, method, headers, body, signal, quiet: method === "GET", track: this.#inFlight },
      { ...handler, body: (r) => (ok(r) ? handler.body(r) : undefined) },
    );
  }

  /** Counts a response's bytes against its scope's bound: past it, the request is ended where it is. */
  #counted(scope: RequestScope | undefined, read: (chunk: Buffer) => void): (chunk: Buffer) => void {
    return bounded(scope?.maxBytes, (bytes) => {
      scope!.cut?.(bytes);
      return new Error(`answer over ${scope!.maxBytes} bytes`);
    }, read);
  }

  #jsonSink(origin: RequestId, scope: RequestScope | undefined): BodySink {
    return new JsonResponseSink(this.#sinkHost, origin, scope);
  }

  /** what a response's sink needs of this transport: one for the transport, not one per response */
  readonly #sinkHost: SinkHost = {
    deliver: (raw, origin) => this.#deliver(raw, origin),
    closed: () => this.#closed,
    onerror: (err) => this.onerror?.(err),
  };

  /**
   * An SSE response stream. `origin`: the request it answers (undefined: the standalone stream).
   * When it ends before the answer after the upstream gave it an event id, it is resumed with a
   * GET carrying Last-Event-ID; the standalone stream is reopened (the SDK's schedule).
   */
  #sseSink(origin: RequestId | undefined, scope: RequestScope | undefined, onOpenEnded?: (lastEventId: string | undefined) => void): BodySink {
    let lastEventId: string | undefined;
    let answered = false;
    const parse = sseReader(
      (event) => {
        if (event.id) lastEventId = event.id;
        let raw: unknown;
        try {
          raw = eventMessage(event, origin);
        } catch (err) {
          return this.onerror?.(err as Error);
        }
        if (raw === undefined) return;
        const m = this.#deliver(raw, origin);
        if (m && origin !== undefined && "id" in m && m.id === origin && !("method" in m)) answered = true;
      },
      (ms) => (this.#serverRetryMs = ms),
    );
    const read = this.#counted(scope, parse);
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

  /**
   * Validates one incoming message and hands it on, saying which request's stream carried it.
   * The answer to that request is checked by its fields (what the schema checks of an answer), not
   * parsed: the gateway relays it as it came, and the SDK parses the answers to its own requests.
   */
  #deliver(raw: unknown, origin: RequestId | undefined): JSONRPCMessage | undefined {
    let m: JSONRPCMessage;
    if (origin !== undefined && isAnswerTo(raw, origin)) m = raw;
    else {
      const parsed = JSONRPCMessageSchema.safeParse(raw);
      if (!parsed.success) {
        this.onerror?.(parsed.error);
        return undefined;
      }
      m = parsed.data;
    }
    this.deliveringFor = origin;
    try {
      this.onmessage?.(m);
    } finally {
      this.deliveringFor = undefined;
    }
    return m;
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

/**
 * A well-formed JSON-RPC answer to `id` by the schema's rules (exactly `jsonrpc`, `id` and an object
 * `result` whose `_meta`, if any, is an object, or `error` with an integer code and a string
 * message); anything else goes to the schema.
 */
function isAnswerTo(raw: unknown, id: RequestId): raw is JSONRPCMessage {
  if (typeof raw !== "object" || raw === null) return false;
  const m = raw as { jsonrpc?: unknown; id?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown } | null };
  if (m.jsonrpc !== "2.0" || m.id !== id || Object.keys(m).length !== 3) return false;
  if (m.result !== undefined) return isObject(m.result) && ((m.result as { _meta?: unknown })._meta === undefined || isObject((m.result as { _meta?: unknown })._meta));
  const e = m.error;
  return typeof e === "object" && e !== null && Number.isInteger(e.code) && typeof e.message === "string";
}

const isObject = (v: unknown) => typeof v === "object" && v !== null && !Array.isArray(v);

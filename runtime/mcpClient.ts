// Builds one MCP SDK client for one upstream session from a gateway record: transport,
// auth, static and passthrough headers, TLS material. No MCP state is shared between
// upstream sessions (each has its own Mcp-Session-Id, requests and streams, or its own child
// process); HTTP connections carry none, so a worker passes one keep-alive agent
// (`dispatcher`) that every connection to a gateway without TLS material shares. Without one,
// or with TLS material, a connection has its own agent.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { getDefaultEnvironment, StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import type { FetchLike, Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JsonSchemaValidator, jsonSchemaValidator } from "@modelcontextprotocol/sdk/validation/types.js";
import {
  ErrorCode,
  McpError,
  type ClientCapabilities,
  type JSONRPCErrorResponse,
  type JSONRPCMessage,
  type JSONRPCResultResponse,
  type ServerCapabilities,
  type Notification,
  type Request,
  type RequestId,
} from "@modelcontextprotocol/sdk/types.js";
import { Agent, fetch as undiciFetch, type Dispatcher } from "undici";
import { StreamableHttpTransport, type RequestScope } from "./upstream/streamableHttpTransport.ts";
import { GATEWAY_INTERNAL_HEADERS, mapGatewaySecrets, type GatewayRecord } from "../protocol/gateway.ts";
import type { JsonRpcError } from "../protocol/upstream.ts";
import type { OutboundPolicy } from "../actors/outboundPolicy.ts";
import { guardedConnector, outboundRefusalOf } from "./outboundConnector.ts";

type Progress = { progress: number; total?: number; message?: string };

export const CLIENT_INFO = { name: "mcpgw", version: "0.1.0" } as const;

/**
 * How long a polite close waits for the connection's HTTP agent to close its sockets. The
 * client's own close has already ended every request; past this the sockets are destroyed.
 */
const AGENT_CLOSE_GRACE_MS = 1_000;

export type CallOutcome = { result: Record<string, unknown> } | { rpcError: JsonRpcError };

/** An answer that grew past the connection's `maxAnswerBytes`: the request was ended where it was. */
export class AnswerTooLargeError extends Error {
  constructor(
    readonly bytesRead: number,
    readonly limit: number,
  ) {
    super(`answer of more than ${bytesRead} bytes, over the limit of ${limit} bytes`);
    this.name = "AnswerTooLargeError";
  }
}

/** A request the upstream did not answer; `transport`: because the connection itself failed (the session must go). */
export class UpstreamRequestError extends Error {
  constructor(
    readonly transport: boolean,
    cause: unknown,
  ) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.name = "UpstreamRequestError";
  }
}

/** What a relayed request needs of its connection. */
type RelayingConnection = {
  awaiting: Map<RequestId, RelayedRequest>;
  /** tells the upstream, as the SDK does, of a request its client no longer waits for */
  cancelled(id: string, reason: unknown): void;
};

/**
 * One relayed request (a downstream call's, or the probe's), from when it goes out until it is
 * settled: by its answer, its caller's signal, its answer's bound, a lost stream, or the close.
 * A class rather than closures: one is made per call.
 */
class RelayedRequest implements RequestScope {
  #settled = false;
  constructor(
    readonly id: string,
    readonly conn: RelayingConnection,
    readonly headers: Record<string, string>,
    readonly trace: Record<string, string> | undefined,
    /** its HTTP request and response stream end with the caller's signal */
    readonly signal: AbortSignal,
    readonly maxBytes: number | undefined,
    /** the caller's progress handler, called as each progress notice comes off the wire */
    readonly onprogress: ((p: Progress) => void) | undefined,
    /** the caller's tag for what the upstream sends about this request (`ServerRequestContext.related`) */
    readonly related: unknown,
    readonly resolve: (outcome: CallOutcome) => void,
    readonly reject: (err: unknown) => void,
  ) {
    signal.addEventListener("abort", this, { once: true });
    conn.awaiting.set(id, this);
  }

  /** true the first time only: the request leaves the table, its caller's signal is let go */
  #settle(): boolean {
    if (this.#settled) return false;
    this.#settled = true;
    this.conn.awaiting.delete(this.id);
    this.signal.removeEventListener("abort", this);
    return true;
  }

  /** its answer, as the upstream sent it */
  answer(m: JSONRPCResultResponse | JSONRPCErrorResponse): void {
    if (!this.#settle()) return;
    if (!("error" in m)) return this.resolve({ result: m.result });
    const { code, message, data } = m.error;
    this.resolve({ rpcError: data === undefined ? { code, message } : { code, message, data } });
  }

  /** the caller's signal aborted (the listener object: no closure per call) */
  handleEvent(): void {
    if (!this.#settle()) return;
    this.conn.cancelled(this.id, this.signal.reason);
    this.reject(this.signal.reason);
  }

  cut(bytesRead: number): void {
    if (!this.#settle()) return;
    this.conn.cancelled(this.id, "answer too large");
    this.reject(new AnswerTooLargeError(bytesRead, this.maxBytes!));
  }

  /** its stream was lost, it could not be sent, or the connection closed under it */
  lost(err: unknown): void {
    if (this.#settle()) this.reject(new UpstreamRequestError(true, err));
  }
}

export type UpstreamConnection = {
  client: Client;
  /**
   * Sends one request for a downstream call, with that call's passthrough headers and the
   * trace context of its upstream span (`trace`). Resolves with the upstream's result, or
   * with the JSON-RPC error the upstream sent (whatever its code: -32000 and -32001 too). Rejects with the signal's reason when `signal` aborts
   * (timeout, cancellation), which also aborts the call's HTTP request and response stream
   * at once; with an `AnswerTooLargeError` when its HTTP response grew past `maxAnswerBytes`;
   * else with an `UpstreamRequestError` (the transport failed, or the answer was not a result).
   */
  request(
    req: { method: string; params?: Record<string, unknown> | undefined },
    opts: {
      headers: Record<string, string>;
      trace?: Record<string, string>;
      signal: AbortSignal;
      onprogress?: ((p: Progress) => void) | undefined;
      /** handed back with each request the upstream sends about this one (`ServerRequestContext.related`) */
      related?: unknown;
    },
  ): Promise<CallOutcome>;
  /** polite close: end the upstream session (HTTP DELETE), close the transport (stdio: end stdin, SIGTERM) */
  close(): Promise<void>;
  /** abort every socket / SIGKILL the child; returns at once */
  forceClose(): void;
};

export type ConnectOptions = {
  record: GatewayRecord;
  /** opens a sealed secret of this gateway */
  open: (sealed: string, gid: string) => string;
  /**
   * headers of the downstream request that caused this connection, for initialize and
   * background requests (a function: read when the first request goes out)
   */
  initialHeaders: Record<string, string> | (() => Record<string, string>);
  /** bound of the connect and MCP handshake (the calls are bounded by their callers) */
  timeoutMs: number;
  /** which addresses HTTP connections may reach (each redirect hop included) */
  outbound: OutboundPolicy;
  /**
   * bytes of a call's HTTP response (streamable HTTP) past which the request is ended, so a
   * hostile answer is never read whole; unset: no bound
   */
  maxAnswerBytes?: number;
  /** aborts the connect (the actor was closed meanwhile) */
  signal?: AbortSignal;
  /**
   * a shared HTTP agent whose idle sockets serve many connections; the connection never closes
   * it (its close still aborts its own requests). Ignored for a gateway with TLS material.
   */
  dispatcher?: Dispatcher;
  /**
   * a poller's connection: no standalone GET stream (it waits for no server-initiated message,
   * and the stream would hold a socket per gateway between polls). A session's connection opens
   * one only when the upstream declares something it may send unprompted (`talksUnprompted`).
   */
  pollOnly?: boolean;
  /**
   * Every notification the upstream sends, as it comes off the wire and in wire order, except
   * progress of a request sent with `onprogress` (that goes to its handler, before its result)
   * and `notifications/cancelled` (which aborts the `signal` of the request it names).
   */
  onNotification: (n: Notification) => void;
  /** the capabilities this client declares to the upstream (none when absent) */
  capabilities?: ClientCapabilities;
  /**
   * Answers a request the upstream sends its client (sampling, elicitation, roots, ...; the
   * SDK answers ping itself): resolve with the result, or throw an error with `code`, `message`
   * and `data`, sent back as that JSON-RPC error. Absent: the SDK answers "method not found".
   */
  onRequest?: (req: Request & { id: string | number }, ctx: ServerRequestContext) => Promise<Record<string, unknown>>;
  /** the transport closed by itself (child exited, stream ended) */
  onClosed: () => void;
  onError: (err: Error) => void;
};

export type ServerRequestContext = {
  /**
   * the `related` tag of the request it belongs to: over streamable HTTP, the request whose
   * response stream carried it; over stdio and SSE (one stream for everything), the only request
   * in flight; undefined when neither tells
   */
  related: unknown;
  /** aborted when the upstream cancels its request or the connection closes */
  signal: AbortSignal;
};

/**
 * Accepts any tool output: the gateway never has the SDK check one (calls go through `request`,
 * their results relayed as they came; pollers list tools but never call them). One for the
 * process: the SDK's default builds an Ajv instance per client (tens of KB per session).
 */
const NO_OUTPUT_VALIDATION: jsonSchemaValidator = {
  getValidator<T>(): JsonSchemaValidator<T> {
    return (input) => ({ valid: true, data: input as T, errorMessage: undefined });
  },
};

const isInternal = (name: string) => (GATEWAY_INTERNAL_HEADERS as readonly string[]).includes(name.toLowerCase());

/** The request headers whose names the gateway allows through (case-insensitive), internal ones never. */
export function passthroughHeaders(allowed: string[], headers: Record<string, string>): Record<string, string> {
  const allow = new Set(allowed.map((h) => h.toLowerCase()));
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (allow.has(lower) && !isInternal(lower)) out[lower] = value;
  }
  return out;
}

/** Static headers and auth of an HTTP gateway (secrets opened), plus the URL with auth query parameters. */
export function httpTarget(record: GatewayRecord, open: (sealed: string, gid: string) => string): { url: URL; headers: Record<string, string> } {
  const clear = mapGatewaySecrets(record, (sealed) => open(sealed, record.id));
  const url = new URL(clear.url!);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(clear.headers)) if (!isInternal(k)) headers[k.toLowerCase()] = v;
  const a = clear.auth;
  if (a.type === "bearer") headers.authorization = `Bearer ${a.token}`;
  if (a.type === "basic") headers.authorization = `Basic ${Buffer.from(`${a.username}:${a.password}`).toString("base64")}`;
  if (a.type === "headers") for (const [k, v] of Object.entries(a.headers)) headers[k.toLowerCase()] = v;
  if (a.type === "query") for (const [k, v] of Object.entries(a.params)) url.searchParams.set(k, v);
  return { url, headers };
}

/**
 * Idle keep-alive sockets are dropped after 1 s, or the server's `Keep-Alive: timeout` hint less
 * 4 s (Node says 5 s; uvicorn closes after 5 s and gunicorn after 2 s, with no hint). A request
 * written to a socket its server is closing fails ("other side closed") and is never retried: from
 * here, a server that closed an idle socket and one that read the request and died look the same,
 * and a tools/call must not run twice. Only an event loop stalled for longer than the margin meets
 * that race (docs/RELIABILITY.md).
 */
export const UPSTREAM_KEEP_ALIVE = { keepAliveTimeout: 1_000, keepAliveTimeoutThreshold: 4_000 } as const;

/** A keep-alive HTTP agent for many connections to share (`dispatcher`), guarded as each connection's own agent is. */
export function sharedUpstreamAgent(outbound: OutboundPolicy): Agent {
  return new Agent({ ...UPSTREAM_KEEP_ALIVE, connect: guardedConnector(outbound, {}) });
}

/** Whether a server may send messages outside any request (on the standalone GET stream). */
function talksUnprompted(caps: ServerCapabilities | undefined): boolean {
  if (!caps) return true;
  return Boolean(caps.logging || caps.resources?.subscribe || caps.tools?.listChanged || caps.prompts?.listChanged || caps.resources?.listChanged || caps.tasks);
}

/** Opens and initializes an upstream session. On failure nothing stays open. */
export async function connectUpstream(opts: ConnectOptions): Promise<UpstreamConnection> {
  const { record } = opts;
  const client = new Client(CLIENT_INFO, { capabilities: opts.capabilities ?? {}, jsonSchemaValidator: NO_OUTPUT_VALIDATION });
  client.onerror = (err) => opts.onError(err);

  let transport: Transport;
  /** the SDK forgets its child as soon as its own close starts; kept here for the force */
  let childPid: number | null = null;
  let forceClose: () => void;
  let politeEnd: () => Promise<void> = async () => {};
  /** after a polite close: keep-alive sockets would otherwise stay open until the upstream drops them */
  let releaseSockets: () => Promise<void> = async () => {};
  let latestHeaders: Record<string, string> | null = null;
  const fallbackHeaders = () =>
    latestHeaders ?? passthroughHeaders(record.passthroughHeaders, typeof opts.initialHeaders === "function" ? opts.initialHeaders() : opts.initialHeaders);
  /** each relayed request by its JSON-RPC id, from when it goes out until it is settled */
  const awaiting = new Map<RequestId, RelayedRequest>();
  /** over streamable HTTP: the transport says which request's stream carried each message */
  let streamable: StreamableHttpTransport | null = null;

  if (record.transport === "stdio") {
    const clear = mapGatewaySecrets(record, (sealed) => opts.open(sealed, record.id));
    const stdio = new StdioClientTransport({
      command: clear.stdio!.command,
      args: clear.stdio!.args,
      env: { ...getDefaultEnvironment(), ...clear.stdio!.env },
      cwd: clear.stdio!.cwd,
      stderr: "ignore",
    });
    transport = stdio;
    forceClose = () => {
      const pid = childPid ?? stdio.pid;
      if (pid !== null) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    };
  } else {
    const { url, headers } = httpTarget(record, opts.open);
    const tls = mapGatewaySecrets(record, (sealed) => opts.open(sealed, record.id)).tls;
    const shared = tls ? undefined : opts.dispatcher;
    const agent =
      shared ??
      new Agent({
        ...UPSTREAM_KEEP_ALIVE,
        connect: guardedConnector(
          opts.outbound,
          tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized ?? true } : {},
        ),
      });
    if (record.transport === "sse") {
      transport = new SSEClientTransport(url, { fetch: legacySseFetch(agent, headers, awaiting, fallbackHeaders) });
    } else {
      streamable = new StreamableHttpTransport({
        url,
        headers,
        dispatcher: agent,
        scopeOf: (id) => awaiting.get(id),
        defaultHeaders: fallbackHeaders,
        // a poller waits for nothing unprompted; a session only when the upstream may send it
        wantsStandaloneStream: () => !opts.pollOnly && talksUnprompted(client.getServerCapabilities()),
      });
      transport = streamable;
      const own = streamable;
      politeEnd = () => own.terminateSession();
    }
    // the transport's close ends this session's own requests and streams; an agent of its own goes too
    forceClose = () => {
      if (!shared) void agent.destroy().catch(() => {});
    };
    releaseSockets = async () => {
      if (shared) return;
      let timer: NodeJS.Timeout | undefined;
      const closed = await Promise.race([
        agent.close().then(() => true, () => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), AGENT_CLOSE_GRACE_MS))),
      ]);
      clearTimeout(timer);
      if (!closed) await agent.destroy().catch(() => {});
    };
  }

  // Notifications and server requests are taken here, in wire order: the SDK keeps a handler set
  // before connect and calls it before its own, and it hands notifications to handlers a
  // microtask later, after it has already settled a response read in the same chunk. Every
  // message has been checked by the transport (the SDK's schemas, or our transport's field check
  // of an answer), so its fields tell its kind.
  /** the call a server→client request relates to, by the request's id, until its handler runs */
  const relatedOf = new Map<string | number, unknown>();
  const oneStream = record.transport !== "streamable-http";
  transport.onmessage = (m) => {
    if (!("method" in m)) return;
    if (!("id" in m)) {
      if (m.method === "notifications/cancelled") return;
      return opts.onNotification({ method: m.method, ...(m.params ? { params: m.params } : {}) } as Notification);
    }
    // over streamable HTTP the response stream it came on names its call; stdio and SSE carry
    // everything on one stream, so only a lone call tells (the SDK answers ping itself)
    if (!opts.onRequest || m.method === "ping") return;
    const origin = streamable ? streamable.deliveringFor : oneStream && awaiting.size === 1 ? [...awaiting.keys()][0] : undefined;
    relatedOf.set(m.id, origin === undefined ? undefined : awaiting.get(origin)?.related);
  };

  const onRequest = opts.onRequest;
  if (onRequest) {
    client.fallbackRequestHandler = async (req, extra) => {
      const related = relatedOf.get(extra.requestId);
      relatedOf.delete(extra.requestId);
      return onRequest({ ...req, id: extra.requestId } as Request & { id: string | number }, { related, signal: extra.signal });
    };
  }

  const handshakeTimeout = () => new McpError(ErrorCode.RequestTimeout, `MCP handshake not done within ${opts.timeoutMs} ms`);
  let closing = false;
  client.onclose = () => {
    if (!closing) opts.onClosed();
  };
  try {
    // the whole handshake within the timeout: the SDK bounds only the initialize request, and the
    // initialized notification (a POST over HTTP) would wait forever on an upstream that stopped answering
    // (and so is the abort signal: the SDK passes it to the initialize request only)
    const handshake = client.connect(transport, { timeout: opts.timeoutMs, signal: opts.signal });
    handshake.catch(() => {}); // settles once the transport is forced closed below
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    await Promise.race([
      handshake,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(handshakeTimeout()), opts.timeoutMs);
        onAbort = () => reject(opts.signal?.reason instanceof Error ? opts.signal.reason : new Error("connect aborted"));
        if (opts.signal?.aborted) onAbort();
        else opts.signal?.addEventListener("abort", onAbort, { once: true });
      }),
    ]).finally(() => {
      clearTimeout(timer);
      if (onAbort) opts.signal?.removeEventListener("abort", onAbort);
    });
    if (transport instanceof StdioClientTransport) childPid = transport.pid;
  } catch (err) {
    closing = true;
    forceClose();
    await Promise.race([client.close().catch(() => {}), new Promise((r) => setTimeout(r, 100).unref())]);
    // the SDK's own bound of initialize ("Request timed out") says the same, in words of its own
    throw err instanceof McpError && err.code === ErrorCode.RequestTimeout && !opts.signal?.aborted ? handshakeTimeout() : err;
  }

  // From here on, a relayed request's answer and progress end at its caller: the SDK never sent
  // those requests and never sees what belongs to them (it would parse each answer against a schema).
  const toSdk = transport.onmessage!;
  transport.onmessage = (m: JSONRPCMessage, extra) => {
    if (!("method" in m)) {
      const call = m.id === undefined ? undefined : awaiting.get(m.id);
      if (call) return call.answer(m as JSONRPCResultResponse | JSONRPCErrorResponse);
    } else if (m.method === "notifications/progress" && !("id" in m)) {
      const token = m.params?.progressToken;
      const call = typeof token === "string" ? awaiting.get(token) : undefined;
      if (call?.onprogress) {
        const { progressToken: _ours, _meta: _m, ...progress } = m.params as Record<string, unknown>;
        return call.onprogress(progress as Progress);
      }
    }
    toSdk(m, extra);
  };
  // the SDK fails its own requests when the transport closes; the relayed ones fail here
  const sdkOnClose = transport.onclose;
  transport.onclose = () => {
    const closed = new McpError(ErrorCode.ConnectionClosed, "Connection closed");
    for (const call of [...awaiting.values()]) call.lost(closed);
    sdkOnClose?.();
  };
  /** relayed requests' ids: strings, so they never meet the SDK's numbers (its own requests) */
  let relayed = 0;
  const relaying: RelayingConnection = {
    awaiting,
    cancelled: (id, reason) =>
      void transport
        .send({ jsonrpc: "2.0", method: "notifications/cancelled", params: { requestId: id, reason: String(reason) } })
        .catch((err: unknown) => opts.onError(new Error(`Failed to send cancellation: ${String(err)}`))),
  };

  return {
    client,
    request(req, { headers, trace, signal, onprogress, related }) {
      if (signal.aborted) return Promise.reject(signal.reason);
      const id = `mcpgw-${++relayed}`;
      const passed = passthroughHeaders(record.passthroughHeaders, headers);
      latestHeaders = passed;
      // the SDK puts a progress token on a request only for a handler: so does this, its own id
      const params = onprogress ? { ...req.params, _meta: { ...(req.params?._meta as object | undefined), progressToken: id } } : req.params;
      return new Promise<CallOutcome>((resolve, reject) => {
        const call = new RelayedRequest(id, relaying, passed, trace, signal, opts.maxAnswerBytes, onprogress, related, resolve, reject);
        // not sent (HTTP error status, refused connection, closed pipe): the connection failed
        transport.send({ jsonrpc: "2.0", id, method: req.method, ...(params ? { params } : {}) }).catch(call.lost.bind(call));
      });
    },
    async close() {
      closing = true;
      try {
        await politeEnd().catch(() => {});
        await client.close();
      } finally {
        await releaseSockets();
      }
    },
    forceClose() {
      closing = true;
      forceClose();
      void client.close().catch(() => {});
    },
  };
}

/**
 * The legacy SSE transport's fetch (the SDK's transport, over undici's fetch): a POST carries
 * its call's passthrough headers and ends with it; answers come on the GET stream.
 */
function legacySseFetch(
  agent: Dispatcher,
  headers: Record<string, string>,
  awaiting: Map<RequestId, RequestScope>,
  fallbackHeaders: () => Record<string, string>,
): FetchLike {
  return (input, init) => {
    const body = typeof init?.body === "string" ? init.body : undefined;
    // the SDK sends each message alone; its id says which call it is
    const id = body && init?.method === "POST" ? (JSON.parse(body) as { id?: string | number }).id : undefined;
    const call = id === undefined ? undefined : awaiting.get(id);
    const h = new Headers(init?.headers);
    // passthrough first, so neither static headers nor auth can be overridden by a client
    for (const [k, v] of Object.entries(call?.headers ?? fallbackHeaders())) if (!h.has(k)) h.set(k, v);
    for (const [k, v] of Object.entries(call?.trace ?? {})) h.set(k, v);
    for (const [k, v] of Object.entries(headers)) h.set(k, v);
    const signal = call?.signal ?? init?.signal;
    // a refusal is the reason itself, not undici's "fetch failed" around it
    return undiciFetch(input, { ...(init as object), headers: Object.fromEntries(h.entries()), signal, dispatcher: agent }).catch((err: unknown) => {
      throw outboundRefusalOf(err) ?? err;
    }) as unknown as Promise<Response>;
  };
}

/** Polite close, forced when it has not finished within `graceMs` (an upstream that ignores it). */
export async function closeWithin(conn: Pick<UpstreamConnection, "close" | "forceClose">, graceMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const polite = conn.close().then(
    () => true,
    () => false,
  );
  const inTime = await Promise.race([polite, new Promise<boolean>((r) => (timer = setTimeout(() => r(false), graceMs).unref()))]);
  clearTimeout(timer);
  if (!inTime) conn.forceClose();
}

/** True when the upstream said "method not found" (the probe moves to its next step). */
export function isMethodNotFound(err: unknown): boolean {
  return err instanceof McpError && err.code === ErrorCode.MethodNotFound;
}

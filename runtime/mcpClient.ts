// Builds one MCP SDK client for one upstream session from a gateway record: transport,
// auth, static and passthrough headers, TLS material. Nothing here is shared between
// upstream sessions: each connection has its own HTTP agent (so closing one can abort
// its sockets) or its own child process. Gateway pollers may pass one shared keep-alive
// agent instead (`dispatcher`), used for gateways without TLS material.
import { AsyncLocalStorage } from "node:async_hooks";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { getDefaultEnvironment, StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { FetchLike, Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JsonSchemaValidator, jsonSchemaValidator } from "@modelcontextprotocol/sdk/validation/types.js";
import {
  ErrorCode,
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
  McpError,
  ResultSchema,
  type ClientCapabilities,
  type Notification,
  type Request,
} from "@modelcontextprotocol/sdk/types.js";
import { Agent, fetch as undiciFetch, Response as UndiciResponse, type Dispatcher } from "undici";
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

/**
 * Past any call's own timeout: the caller's signal times each request, so the SDK's timer
 * never fires (the largest delay a Node timer takes; a larger one would fire at once).
 */
const SDK_TIMEOUT_OFF_MS = 2 ** 31 - 1;

/** One downstream call's upstream request, as the connection's transport sees it go out and come back. */
type CallScope = {
  owner: object;
  /** its passthrough headers */
  headers: Record<string, string>;
  /** the W3C trace context of its upstream span */
  trace: Record<string, string>;
  /** aborts its HTTP request and response stream */
  signal: AbortSignal;
  /** the JSON-RPC id the SDK gave it on the wire */
  wireId?: string | number;
  /** the error response the upstream sent for it, exactly as it came */
  wireError?: JsonRpcError;
  /** the transport could not send it (HTTP error status, refused connection, closed pipe) */
  sendFailed?: boolean;
  /** ends the request when its HTTP response grew past the answer limit (bytes read by then) */
  cut(bytes: number): void;
  cutAt?: number;
  /** the caller's progress handler, called as each progress notice comes off the wire */
  onprogress?: ((p: Progress) => void) | undefined;
  /** the caller's tag for what the upstream sends about this request (`ServerRequestContext.related`) */
  related?: unknown;
};

/**
 * The downstream call an upstream request is sent for. One instance for the whole process on
 * purpose: Node 20 pays for every live AsyncLocalStorage on every promise, so one per
 * connection made 1,000 sessions quadratic. `owner` keeps connections apart.
 */
const requestContext = new AsyncLocalStorage<CallScope>();

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
   * and the stream would hold a socket and tens of KB per gateway between polls) and no tool
   * output validator (it never calls a tool; the SDK would build an Ajv per client and compile
   * every output schema at every tools/list)
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

/** accepts any tool output (a poller's client never calls a tool) */
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

/** A keep-alive HTTP agent for many connections to share (`dispatcher`), guarded as each connection's own agent is. */
export function sharedUpstreamAgent(outbound: OutboundPolicy): Agent {
  return new Agent({ connect: guardedConnector(outbound, {}) });
}

/** Opens and initializes an upstream session. On failure nothing stays open. */
export async function connectUpstream(opts: ConnectOptions): Promise<UpstreamConnection> {
  const { record } = opts;
  const client = new Client(CLIENT_INFO, { capabilities: opts.capabilities ?? {}, ...(opts.pollOnly ? { jsonSchemaValidator: NO_OUTPUT_VALIDATION } : {}) });
  client.onerror = (err) => opts.onError(err);

  let transport: Transport;
  /** the SDK forgets its child as soon as its own close starts; kept here for the force */
  let childPid: number | null = null;
  let forceClose: () => void;
  let politeEnd: () => Promise<void> = async () => {};
  /** after a polite close: keep-alive sockets would otherwise stay open until the upstream drops them */
  let releaseSockets: () => Promise<void> = async () => {};
  const owner = {};
  let latestHeaders: Record<string, string> | null = null;
  const fallbackHeaders = () =>
    latestHeaders ?? passthroughHeaders(record.passthroughHeaders, typeof opts.initialHeaders === "function" ? opts.initialHeaders() : opts.initialHeaders);

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
        connect: guardedConnector(
          opts.outbound,
          tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized ?? true } : {},
        ),
      });
    const fetchUpstream: FetchLike = (input, init) => {
      // what a server without a GET stream answers (the SDK then goes on without one)
      if (opts.pollOnly && init?.method === "GET") return Promise.resolve(new Response(null, { status: 405 }));
      const store = requestContext.getStore();
      const call = store?.owner === owner ? store : undefined;
      const h = new Headers(init?.headers);
      // passthrough first, so neither static headers nor auth can be overridden by a client
      for (const [k, v] of Object.entries(call?.headers ?? fallbackHeaders())) if (!h.has(k)) h.set(k, v);
      // the gateway's own span, whatever trace context a client passed through
      for (const [k, v] of Object.entries(call?.trace ?? {})) h.set(k, v);
      for (const [k, v] of Object.entries(headers)) h.set(k, v);
      const plain = Object.fromEntries(h.entries());
      // a call's request ends with the call: a timed-out or cancelled call keeps no socket
      const signal = call ? (init?.signal ? AbortSignal.any([init.signal, call.signal]) : call.signal) : init?.signal;
      // a refusal is the reason itself, not undici's "fetch failed" around it
      const sent = undiciFetch(input, { ...(init as object), headers: plain, signal, dispatcher: agent }).catch((err: unknown) => {
        throw outboundRefusalOf(err) ?? err;
      });
      const limit = opts.maxAnswerBytes;
      if (!call || limit === undefined) return sent as unknown as Promise<Response>;
      return sent.then((res) => {
        if (res.status !== 200 || !res.body) return res;
        let bytes = 0;
        const counted = res.body.pipeThrough(
          new TransformStream<Uint8Array, Uint8Array>({
            transform(chunk, controller) {
              bytes += chunk.byteLength;
              if (bytes <= limit) return controller.enqueue(chunk);
              call.cut(bytes);
              controller.error(new Error(`answer over ${limit} bytes`));
            },
          }),
        );
        return new UndiciResponse(counted, { status: res.status, statusText: res.statusText, headers: res.headers });
      }) as unknown as Promise<Response>;
    };
    if (record.transport === "sse") {
      transport = new SSEClientTransport(url, { fetch: fetchUpstream });
    } else {
      const streamable = new StreamableHTTPClientTransport(url, { fetch: fetchUpstream });
      transport = streamable;
      politeEnd = () => streamable.terminateSession();
    }
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

  // The SDK turns an upstream's error response into the same McpError as its own failures
  // (ConnectionClosed -32000, RequestTimeout -32001), so the wire says which it was: each
  // call's request is seen going out (its id) and its error response coming back. The SDK
  // keeps a handler set before connect and calls it before its own.
  //
  // Notifications are taken here too, in wire order: the SDK hands them to handlers a
  // microtask later, after it has already settled a response read in the same chunk, so a
  // progress notice just before a result would reach nobody.
  const awaiting = new Map<string | number, CallScope>();
  transport.onmessage = (m) => {
    if (isJSONRPCNotification(m)) {
      if (m.method === "notifications/cancelled") return;
      const token = m.params?.progressToken;
      const call = m.method === "notifications/progress" && (typeof token === "number" || typeof token === "string") ? awaiting.get(token) : undefined;
      if (call?.onprogress) {
        const { progressToken: _sdkToken, _meta: _m, ...progress } = m.params as Record<string, unknown>;
        return call.onprogress(progress as Progress);
      }
      return opts.onNotification({ method: m.method, ...(m.params ? { params: m.params } : {}) } as Notification);
    }
    if (!isJSONRPCResultResponse(m) && !isJSONRPCErrorResponse(m)) return;
    const call = m.id === undefined ? undefined : awaiting.get(m.id);
    if (!call) return;
    awaiting.delete(m.id!);
    if (isJSONRPCErrorResponse(m)) {
      const { code, message, data } = m.error;
      call.wireError = data === undefined ? { code, message } : { code, message, data };
    }
  };
  const send = transport.send.bind(transport);
  transport.send = (m, sendOpts) => {
    const store = requestContext.getStore();
    if (store?.owner === owner && isJSONRPCRequest(m)) {
      store.wireId = m.id;
      awaiting.set(m.id, store);
      return send(m, sendOpts).catch((err: unknown) => {
        store.sendFailed = true;
        throw err;
      });
    }
    return send(m, sendOpts);
  };

  const onRequest = opts.onRequest;
  if (onRequest) {
    // over streamable HTTP the response stream a request came on runs in its call's async
    // context; stdio and SSE carry everything on one stream, so only a lone call tells
    const oneStream = record.transport !== "streamable-http";
    client.fallbackRequestHandler = async (req, extra) => {
      const store = requestContext.getStore();
      const inFlight = new Set(awaiting.values());
      const related = store?.owner === owner ? store.related : oneStream && inFlight.size === 1 ? [...inFlight][0]!.related : undefined;
      return onRequest({ ...req, id: extra.requestId } as Request & { id: string | number }, { related, signal: extra.signal });
    };
  }

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
        timer = setTimeout(() => reject(new McpError(ErrorCode.RequestTimeout, `MCP handshake not done within ${opts.timeoutMs} ms`)), opts.timeoutMs);
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
    throw err;
  }

  return {
    client,
    async request(req, { headers, trace = {}, signal: callerSignal, onprogress, related }) {
      const cutter = new AbortController();
      const signal = AbortSignal.any([callerSignal, cutter.signal]);
      const call: CallScope = {
        owner,
        headers: passthroughHeaders(record.passthroughHeaders, headers),
        trace,
        signal,
        cut: (bytes) => {
          call.cutAt = bytes;
          cutter.abort("answer too large");
        },
        onprogress,
        related,
      };
      latestHeaders = call.headers;
      try {
        const result = await requestContext.run(call, () =>
          // the SDK puts a progress token on the request only for a handler; progress itself is taken off the wire above
          client.request(req as never, ResultSchema, { signal, timeout: SDK_TIMEOUT_OFF_MS, onprogress: onprogress && (() => {}) }),
        );
        return { result };
      } catch (err) {
        if (callerSignal.aborted) throw err;
        if (call.cutAt !== undefined) throw new AnswerTooLargeError(call.cutAt, opts.maxAnswerBytes!);
        if (call.wireError) return { rpcError: call.wireError };
        // not sent, or the transport closed under it (the SDK's own ConnectionClosed: the upstream's is on the wire)
        const transportFailed = call.sendFailed === true || client.transport === undefined || (err instanceof McpError && err.code === ErrorCode.ConnectionClosed);
        throw new UpstreamRequestError(transportFailed, err);
      } finally {
        if (call.wireId !== undefined) awaiting.delete(call.wireId);
      }
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

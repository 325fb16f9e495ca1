// A poller's kept session with a streamable-HTTP gateway, as data: its session id, protocol
// version and the server's capabilities, a few hundred bytes instead of an SDK client with its
// transport, maps and closures (≈ 9 KB) per gateway. The session is opened by the SDK client
// (initialize and everything it checks); a health check is then one JSON-RPC `ping` POST and a
// discovery its list pages (read raw: runtime/pollerEffects.ts parses them only when they changed), each a JSON-RPC POST of ./upstream/jsonRpcPost.ts on the worker's shared
// keep-alive agent, answered as JSON or as an SSE stream. Errors are the SDK's: the upstream's JSON-RPC error as
// an McpError with its code, a lost session or broken transport as ConnectionClosed, a timeout as
// RequestTimeout, so the caller tells them apart as it does for an SDK client.
import { ErrorCode, McpError, type ServerCapabilities } from "@modelcontextprotocol/sdk/types.js";
import type { Dispatcher } from "undici";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { httpTarget } from "./mcpClient.ts";
import { outboundRefusalOf } from "./outboundConnector.ts";
import { DeadlineError, exchange, postJsonRpc } from "./upstream/jsonRpcPost.ts";

type RequestOptions = { timeout: number; signal?: AbortSignal | undefined };

/** Bytes of one answer a poll reads at most: a hostile upstream's endless answer must not fill the worker. */
export const MAX_POLL_ANSWER_BYTES = 16 * 1024 * 1024;

export type HttpPollSessionOptions = {
  record: GatewayRecord;
  open: (sealed: string, gid: string) => string;
  dispatcher: Dispatcher;
  sessionId: string | undefined;
  protocolVersion: string | undefined;
  capabilities: ServerCapabilities | undefined;
};

export class HttpPollSession {
  readonly #o: HttpPollSessionOptions;
  #nextId = 0;
  /**
   * Where every request of the session goes and with which headers, built once per kept session
   * (the record's secrets opened, its URL parsed) rather than on every poll: the session is
   * dropped when the gateway's connection fields change.
   */
  #target: { url: URL; headers: Record<string, string> } | undefined;

  constructor(options: HttpPollSessionOptions) {
    this.#o = options;
  }

  get #prepared(): { url: URL; headers: Record<string, string> } {
    if (!this.#target) {
      const { url, headers } = httpTarget(this.#o.record, this.#o.open);
      this.#target = { url, headers: this.#sessionHeaders(headers) };
    }
    return this.#target;
  }

  getServerCapabilities(): ServerCapabilities | undefined {
    return this.#o.capabilities;
  }

  ping(opts: RequestOptions): Promise<unknown> {
    return this.request("ping", undefined, opts);
  }

  /** Ends the upstream session (HTTP DELETE), bounded; a server that keeps none answers 405, which is fine. */
  async close(): Promise<void> {
    if (this.#o.sessionId === undefined) return;
    const { url, headers } = this.#prepared;
    // the session ends on the upstream's own expiry if this fails
    await exchange({ dispatcher: this.#o.dispatcher, url, method: "DELETE", headers, deadlineMs: 2_000 }, { body: () => undefined }).catch(() => {});
  }

  #sessionHeaders(headers: Record<string, string>): Record<string, string> {
    const h = { ...headers };
    if (this.#o.sessionId !== undefined) h["mcp-session-id"] = this.#o.sessionId;
    if (this.#o.protocolVersion !== undefined) h["mcp-protocol-version"] = this.#o.protocolVersion;
    return h;
  }

  /** One JSON-RPC request on the session: its result, or the upstream's error as an McpError with its code. */
  async request(method: string, params: Record<string, unknown> | undefined, opts: RequestOptions): Promise<Record<string, unknown>> {
    const id = ++this.#nextId;
    const { url, headers } = this.#prepared;
    let reply;
    try {
      reply = await postJsonRpc({
        dispatcher: this.#o.dispatcher,
        url,
        headers,
        body: JSON.stringify({ jsonrpc: "2.0", id, method, ...(params ? { params } : {}) }),
        id,
        maxBytes: MAX_POLL_ANSWER_BYTES,
        deadlineMs: opts.timeout,
        signal: opts.signal,
      });
    } catch (err) {
      if (err instanceof DeadlineError) throw new McpError(ErrorCode.RequestTimeout, `${method} timed out`);
      throw outboundRefusalOf(err) ?? err;
    }
    // 404: the upstream no longer knows the session (restarted, expired it): a transport failure, the caller reconnects
    if (reply.status !== 200) throw new McpError(ErrorCode.ConnectionClosed, `${method}: HTTP ${reply.status} from the upstream`);
    return resultOf(reply.answer, id, method);
  }
}

function resultOf(message: Record<string, unknown> | undefined, id: number, method: string): Record<string, unknown> {
  const m = message as { id?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown; data?: unknown } } | undefined;
  if (m?.id !== id) throw new McpError(ErrorCode.ConnectionClosed, `${method}: the upstream's response carried no answer to it`);
  if (m.error && typeof m.error.code === "number") throw new McpError(m.error.code, String(m.error.message ?? ""), m.error.data);
  if (typeof m.result !== "object" || m.result === null) throw new McpError(ErrorCode.ConnectionClosed, `${method}: the upstream's answer has no result`);
  return m.result as Record<string, unknown>;
}

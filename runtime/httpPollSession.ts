// A poller's kept session with a streamable-HTTP gateway, as data: its session id, protocol
// version and the server's capabilities, a few hundred bytes instead of an SDK client with its
// transport, maps and closures (≈ 9 KB) per gateway. The session is opened by the SDK client
// (initialize and everything it checks); a health check is then one JSON-RPC `ping` POST and a
// discovery its lists, sent with undici's `request` on the worker's shared keep-alive agent,
// answered as JSON or as an SSE stream. Errors are the SDK's: the upstream's JSON-RPC error as
// an McpError with its code, a lost session or broken transport as ConnectionClosed, a timeout as
// RequestTimeout, so the caller tells them apart as it does for an SDK client.
import {
  ErrorCode,
  ListPromptsResultSchema,
  ListResourcesResultSchema,
  ListResourceTemplatesResultSchema,
  ListToolsResultSchema,
  McpError,
  type ServerCapabilities,
} from "@modelcontextprotocol/sdk/types.js";
import { createParser } from "eventsource-parser";
import { request, type Dispatcher } from "undici";
import type { z } from "zod";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { httpTarget } from "./mcpClient.ts";
import { outboundRefusalOf } from "./outboundConnector.ts";

type RequestOptions = { timeout: number; signal?: AbortSignal | undefined };
type Cursor = { cursor?: string | undefined };

/** What a poll needs of an MCP client: the SDK `Client` has it, and so has a kept HTTP poll session. */
export interface PollClient {
  getServerCapabilities(): ServerCapabilities | undefined;
  ping(opts: RequestOptions): Promise<unknown>;
  listTools(params: Cursor, opts: RequestOptions): Promise<z.infer<typeof ListToolsResultSchema>>;
  listPrompts(params: Cursor, opts: RequestOptions): Promise<z.infer<typeof ListPromptsResultSchema>>;
  listResources(params: Cursor, opts: RequestOptions): Promise<z.infer<typeof ListResourcesResultSchema>>;
  listResourceTemplates(params: Cursor, opts: RequestOptions): Promise<z.infer<typeof ListResourceTemplatesResultSchema>>;
}

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

export class HttpPollSession implements PollClient {
  readonly #o: HttpPollSessionOptions;
  #nextId = 0;

  constructor(options: HttpPollSessionOptions) {
    this.#o = options;
  }

  getServerCapabilities(): ServerCapabilities | undefined {
    return this.#o.capabilities;
  }

  ping(opts: RequestOptions): Promise<unknown> {
    return this.request("ping", undefined, opts);
  }

  listTools(params: Cursor, opts: RequestOptions) {
    return this.request("tools/list", params, opts).then((r) => ListToolsResultSchema.parse(r));
  }

  listPrompts(params: Cursor, opts: RequestOptions) {
    return this.request("prompts/list", params, opts).then((r) => ListPromptsResultSchema.parse(r));
  }

  listResources(params: Cursor, opts: RequestOptions) {
    return this.request("resources/list", params, opts).then((r) => ListResourcesResultSchema.parse(r));
  }

  listResourceTemplates(params: Cursor, opts: RequestOptions) {
    return this.request("resources/templates/list", params, opts).then((r) => ListResourceTemplatesResultSchema.parse(r));
  }

  /** Ends the upstream session (HTTP DELETE), bounded; a server that keeps none answers 405, which is fine. */
  async close(): Promise<void> {
    if (this.#o.sessionId === undefined) return;
    try {
      const res = await this.#send("DELETE", undefined, AbortSignal.timeout(2_000));
      await res.body.dump();
    } catch {
      // the session ends on the upstream's own expiry then
    }
  }

  #send(method: "POST" | "DELETE", body: string | undefined, signal: AbortSignal): Promise<Dispatcher.ResponseData> {
    const { url, headers } = httpTarget(this.#o.record, this.#o.open);
    const h: Record<string, string> = { ...headers, accept: "application/json, text/event-stream" };
    if (body !== undefined) h["content-type"] = "application/json";
    if (this.#o.sessionId !== undefined) h["mcp-session-id"] = this.#o.sessionId;
    if (this.#o.protocolVersion !== undefined) h["mcp-protocol-version"] = this.#o.protocolVersion;
    return request(url, { method, headers: h, body, signal, dispatcher: this.#o.dispatcher });
  }

  /** One JSON-RPC request on the session: its result, or the upstream's error as an McpError with its code. */
  async request(method: string, params: Record<string, unknown> | undefined, opts: RequestOptions): Promise<Record<string, unknown>> {
    const id = ++this.#nextId;
    // one timer, cleared when the request and its body are done: AbortSignal.timeout would fire
    // (and build its DOMException) for every ping that had long been answered
    const deadline = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => ((timedOut = true), deadline.abort()), opts.timeout);
    const cancel = () => deadline.abort(opts.signal?.reason);
    opts.signal?.addEventListener("abort", cancel, { once: true });
    const done = () => {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", cancel);
    };
    if (opts.signal?.aborted) cancel();
    const failure = (err: unknown) => {
      if (err instanceof McpError) return err;
      if (timedOut) return new McpError(ErrorCode.RequestTimeout, `${method} timed out`);
      return outboundRefusalOf(err) ?? err;
    };
    let res: Dispatcher.ResponseData;
    try {
      res = await this.#send("POST", JSON.stringify({ jsonrpc: "2.0", id, method, ...(params ? { params } : {}) }), deadline.signal);
    } catch (err) {
      done();
      throw failure(err);
    }
    // the signal may abort after the answer was read (the poller stopped): that error belongs to nobody
    res.body.on("error", () => {});
    try {
      // 404: the upstream no longer knows the session (restarted, expired it): a transport failure, the caller reconnects
      if (res.statusCode !== 200) throw new McpError(ErrorCode.ConnectionClosed, `${method}: HTTP ${res.statusCode} from the upstream`);
      const type = String(res.headers["content-type"] ?? "");
      const message = type.includes("text/event-stream") ? await answerFromStream(res.body, id) : await jsonBody(res.body);
      return resultOf(message, id, method);
    } catch (err) {
      throw failure(err);
    } finally {
      // read what is left (an SSE stream ends after its answer), so the socket goes back to the pool
      // instead of being closed; one the upstream keeps open is cut at the poll's deadline
      if (res.body.destroyed) done();
      else void res.body.dump({ limit: MAX_POLL_ANSWER_BYTES, signal: deadline.signal }).catch(() => {}).finally(done);
    }
  }
}

type Body = Dispatcher.ResponseData["body"];

async function jsonBody(body: Body): Promise<unknown> {
  let bytes = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) {
    bytes += chunk.byteLength;
    if (bytes > MAX_POLL_ANSWER_BYTES) throw new Error(`answer over ${MAX_POLL_ANSWER_BYTES} bytes`);
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

/** The JSON-RPC response with `id` out of an SSE stream (notifications and requests before it are skipped). */
async function answerFromStream(body: Body, id: number): Promise<unknown> {
  let answer: unknown;
  let bytes = 0;
  const parser = createParser({
    onEvent: (e) => {
      if (answer !== undefined || (e.event !== undefined && e.event !== "message")) return;
      const m = JSON.parse(e.data) as { id?: unknown };
      if (m.id === id) answer = m;
    },
  });
  for await (const chunk of body as AsyncIterable<Buffer>) {
    bytes += chunk.byteLength;
    if (bytes > MAX_POLL_ANSWER_BYTES) throw new Error(`answer over ${MAX_POLL_ANSWER_BYTES} bytes`);
    parser.feed(chunk.toString("utf8"));
    if (answer !== undefined) return answer;
  }
  throw new McpError(ErrorCode.ConnectionClosed, "the upstream's stream ended without an answer");
}

function resultOf(message: unknown, id: number, method: string): Record<string, unknown> {
  const m = message as { id?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown; data?: unknown } } | null;
  if (m?.id !== id) throw new McpError(ErrorCode.ConnectionClosed, `${method}: the upstream's answer is not the response to it`);
  if (m.error && typeof m.error.code === "number") throw new McpError(m.error.code, String(m.error.message ?? ""), m.error.data);
  if (typeof m.result !== "object" || m.result === null) throw new McpError(ErrorCode.ConnectionClosed, `${method}: the upstream's answer has no result`);
  return m.result as Record<string, unknown>;
}

// An upstream connection to a server that speaks MCP 2026-07-28 over HTTP: no initialize and no
// session, so "connecting" is one `server/discover` (what it offers, which version to speak)
// and every request is a self-contained POST carrying the version, the client's capabilities
// and info in `_meta` and the routing headers. It has the `request`/`close`/`forceClose` shape
// of runtime/mcpClient.ts's connections, so an upstream session actor can hold either.
import { randomUUID } from "node:crypto";
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { Agent, fetch as undiciFetch, type Dispatcher } from "undici";
import type { CatalogLists } from "../actors/discovery.ts";
import type { OutboundPolicy } from "../actors/outboundPolicy.ts";
import type { GatewayRecord } from "../protocol/gateway.ts";
import {
  DiscoverResultSchema,
  HEADER,
  isStatelessVersion,
  META,
  NAME_BEARING_METHODS,
  REVISION_ERROR,
  STATELESS_PROTOCOL_VERSIONS,
  UnsupportedVersionDataSchema,
  type DiscoverResult,
} from "../protocol/revision2026.ts";
import type { JsonRpcError } from "../protocol/upstream.ts";
import { AnswerTooLargeError, CLIENT_INFO, httpTarget, passthroughHeaders, UpstreamRequestError, type CallOutcome, type UpstreamConnection } from "./mcpClient.ts";
import { guardedConnector, outboundRefusalOf } from "./outboundConnector.ts";
import { listAll } from "./pollerEffects.ts";

type Progress = { progress: number; total?: number; message?: string };
type Notification = { method: string; params?: Record<string, unknown> };

export type StatelessUpstream = Pick<UpstreamConnection, "request" | "close" | "forceClose"> & {
  /** the version every request speaks */
  version: string;
  /** what the upstream answered to `server/discover` */
  discovered: DiscoverResult;
};

export type StatelessConnectOptions = {
  record: GatewayRecord;
  open: (sealed: string, gid: string) => string;
  /** the capabilities the downstream client declared: every request declares them upstream */
  capabilities: Record<string, unknown>;
  /** headers of the downstream request that caused this connection (for `server/discover`) */
  initialHeaders: Record<string, string>;
  timeoutMs: number;
  outbound: OutboundPolicy;
  maxAnswerBytes?: number;
  signal?: AbortSignal;
  dispatcher?: Dispatcher;
  /** a notification the upstream sent on a request's stream that is not that request's progress */
  onNotification: (n: Notification) => void;
};

/** The upstream's `server/discover` was no evidence that it speaks a revision served here. */
export class NotStatelessUpstreamError extends Error {
  constructor(
    message: string,
    readonly rpcError?: JsonRpcError,
  ) {
    super(message);
    this.name = "NotStatelessUpstreamError";
  }
}

/** A value as an HTTP header: a plain printable token as is, anything else base64-wrapped (the revision's encoding). */
export function encodeHeaderValue(value: string): string {
  const plain = /^[\x20-\x7e]*$/.test(value) && value === value.trim() && !/^=\?base64\?.*\?=$/.test(value);
  return plain ? value : `=?base64?${Buffer.from(value, "utf8").toString("base64")}?=`;
}

type Answer = { kind: "result"; result: Record<string, unknown> } | { kind: "error"; error: JsonRpcError };

/**
 * Discovers the upstream and returns a connection to it. Fails with `NotStatelessUpstreamError`
 * when the upstream does not answer `server/discover` with a version served here (the caller
 * then speaks the session revisions to it), with the transport's error when it cannot be reached.
 */
export async function connectStatelessUpstream(opts: StatelessConnectOptions): Promise<StatelessUpstream> {
  const { record } = opts;
  const { url, headers: targetHeaders } = httpTarget(record, opts.open);
  const own = opts.dispatcher ? undefined : new Agent({ connect: guardedConnector(opts.outbound, {}) });
  const agent = opts.dispatcher ?? own!;
  let nextId = 1;

  /** One POST: the answer to `method`, its progress and other notifications read from its stream on the way. */
  async function post(
    method: string,
    params: Record<string, unknown>,
    version: string,
    call: { headers: Record<string, string>; trace?: Record<string, string>; signal: AbortSignal; onprogress?: ((p: Progress) => void) | undefined },
  ): Promise<Answer> {
    const meta: Record<string, unknown> = {
      ...((params._meta as Record<string, unknown> | undefined) ?? {}),
      [META.protocolVersion]: version,
      [META.clientCapabilities]: opts.capabilities,
      [META.clientInfo]: CLIENT_INFO,
    };
    const progressToken = call.onprogress ? randomUUID() : undefined;
    if (progressToken) meta.progressToken = progressToken;
    const id = nextId++;
    const h: Record<string, string> = {
      // passthrough first, so neither the routing headers nor static headers and auth can be overridden by a client
      ...passthroughHeaders(record.passthroughHeaders, call.headers),
      ...(call.trace ?? {}),
      accept: "application/json, text/event-stream",
      "content-type": "application/json",
      [HEADER.protocolVersion]: version,
      [HEADER.method]: method,
      ...targetHeaders,
    };
    const nameKey = NAME_BEARING_METHODS[method];
    const name = nameKey === undefined ? undefined : params[nameKey];
    if (typeof name === "string") h[HEADER.name] = encodeHeaderValue(name);
    let res;
    try {
      res = await undiciFetch(url, { method: "POST", headers: h, body: JSON.stringify({ jsonrpc: "2.0", id, method, params: { ...params, _meta: meta } }), signal: call.signal, dispatcher: agent });
    } catch (err) {
      if (call.signal.aborted) throw call.signal.reason;
      throw new UpstreamRequestError(true, outboundRefusalOf(err) ?? err);
    }
    const type = (res.headers.get("content-type") ?? "").toLowerCase();
    let bytes = 0;
    const limit = opts.maxAnswerBytes;
    const counted = res.body?.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          bytes += chunk.byteLength;
          if (limit !== undefined && bytes > limit) return controller.error(new AnswerTooLargeError(bytes, limit));
          controller.enqueue(chunk);
        },
      }),
    );
    try {
      if (type.startsWith("text/event-stream") && res.status === 200 && counted) {
        const events = counted.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
        for await (const event of events) {
          if (!event.data) continue; // a priming event, or a keepalive
          const msg = JSON.parse(event.data) as { id?: unknown; method?: string; params?: Record<string, unknown>; result?: Record<string, unknown>; error?: JsonRpcError };
          if (msg.method !== undefined && msg.id === undefined) {
            if (msg.method === "notifications/progress" && progressToken !== undefined && msg.params?.progressToken === progressToken) {
              const { progress, total, message } = msg.params as Progress;
              call.onprogress?.({ progress, ...(total === undefined ? {} : { total }), ...(message === undefined ? {} : { message }) });
            } else opts.onNotification({ method: msg.method, ...(msg.params ? { params: msg.params } : {}) });
          } else if (msg.id === id) return answerOf(msg);
        }
        throw new UpstreamRequestError(true, new Error(`the upstream's stream for ${method} ended without an answer`));
      }
      const text = counted ? await new Response(counted).text() : "";
      let body: { id?: unknown; result?: Record<string, unknown>; error?: JsonRpcError } | undefined;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        body = undefined;
      }
      // an error answer may come at a 4xx status (the revision maps its codes onto them)
      if (type.startsWith("application/json") && body && (body.result !== undefined || body.error !== undefined)) return answerOf(body);
      throw new UpstreamRequestError(res.status >= 500 || res.status === 200, new Error(`upstream answered ${method} with HTTP ${res.status}${type ? ` (${type})` : ""}`));
    } catch (err) {
      if (call.signal.aborted) throw call.signal.reason;
      if (err instanceof AnswerTooLargeError || err instanceof UpstreamRequestError) throw err;
      if (err instanceof Error && err.cause instanceof AnswerTooLargeError) throw err.cause;
      throw new UpstreamRequestError(true, err);
    }
  }

  const discover = async (version: string): Promise<Answer> => {
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(opts.timeoutMs)]) : AbortSignal.timeout(opts.timeoutMs);
    return post("server/discover", {}, version, { headers: opts.initialHeaders, signal });
  };

  try {
    let version: string = STATELESS_PROTOCOL_VERSIONS[STATELESS_PROTOCOL_VERSIONS.length - 1]!;
    let answer = await discover(version);
    // the upstream names the versions it serves: one more try at a mutual one
    if (answer.kind === "error" && answer.error.code === REVISION_ERROR.unsupportedProtocolVersion) {
      const data = UnsupportedVersionDataSchema.safeParse(answer.error.data);
      const mutual = data.success ? data.data.supported.filter(isStatelessVersion) : [];
      if (mutual.length > 0 && mutual.at(-1) !== version) {
        version = mutual.at(-1)!;
        answer = await discover(version);
      }
    }
    if (answer.kind === "error") throw new NotStatelessUpstreamError(`the upstream refused server/discover: ${answer.error.message}`, answer.error);
    const discovered = DiscoverResultSchema.safeParse(answer.result);
    if (!discovered.success) throw new NotStatelessUpstreamError("the upstream's server/discover answer is not the revision's");
    const mutual = discovered.data.supportedVersions.filter(isStatelessVersion);
    if (mutual.length === 0) throw new NotStatelessUpstreamError(`the upstream serves none of ${STATELESS_PROTOCOL_VERSIONS.join(", ")} (it offers ${discovered.data.supportedVersions.join(", ")})`);
    version = mutual.at(-1)!;

    return {
      version,
      discovered: discovered.data,
      async request(req, call): Promise<CallOutcome> {
        const answer = await post(req.method, req.params ?? {}, version, call);
        return answer.kind === "result" ? { result: answer.result } : { rpcError: answer.error };
      },
      // no session to end upstream: only this connection's own sockets
      async close() {
        await own?.close().catch(() => {});
      },
      forceClose() {
        void own?.destroy().catch(() => {});
      },
    };
  } catch (err) {
    void own?.destroy().catch(() => {});
    throw err;
  }
}

function answerOf(msg: { result?: Record<string, unknown>; error?: JsonRpcError }): Answer {
  if (msg.error !== undefined) {
    const { code, message, data } = msg.error;
    return { kind: "error", error: data === undefined ? { code, message } : { code, message, data } };
  }
  return { kind: "result", result: msg.result ?? {} };
}

/**
 * Every tool, prompt, resource and resource template a stateless upstream offers, as it sent
 * them (what discovery's `listCatalog` does with an SDK client), by the capabilities its
 * `server/discover` named; "method not found" is an empty list.
 */
export async function listStatelessCatalog(conn: StatelessUpstream, timeoutMs: number, signal?: AbortSignal): Promise<CatalogLists> {
  const caps = conn.discovered.capabilities;
  const list = (method: string, key: string) =>
    listAll(async (cursor?: string) => {
      const bound = AbortSignal.timeout(timeoutMs);
      const r = await conn.request({ method, params: cursor === undefined ? {} : { cursor } }, { headers: {}, signal: signal ? AbortSignal.any([signal, bound]) : bound });
      // the shape listAll knows: "method not found" as the SDK's error
      if ("rpcError" in r) throw new McpError(r.rpcError.code, r.rpcError.message, r.rpcError.data);
      const next = r.result.nextCursor;
      return { items: (r.result[key] ?? []) as Record<string, unknown>[], nextCursor: typeof next === "string" ? next : undefined };
    });
  const [tools, prompts, resources, resourceTemplates] = await Promise.all([
    caps.tools ? list("tools/list", "tools") : [],
    caps.prompts ? list("prompts/list", "prompts") : [],
    caps.resources ? list("resources/list", "resources") : [],
    caps.resources ? list("resources/templates/list", "resourceTemplates") : [],
  ]);
  return { tools, prompts, resources, resourceTemplates } as CatalogLists;
}

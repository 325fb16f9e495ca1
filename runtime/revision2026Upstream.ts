// An upstream connection to a server that speaks MCP 2026-07-28 over HTTP: no initialize and no
// session, so "connecting" is one `server/discover` (what it offers, which version to speak)
// and every request is a self-contained POST carrying the version, the client's capabilities
// and info in `_meta` and the routing headers. It has the `request`/`close`/`forceClose` shape
// of runtime/mcpClient.ts's connections, so an upstream session actor can hold either.
import { randomUUID } from "node:crypto";
import { Agent, type Dispatcher } from "undici";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import type { OutboundPolicy } from "../actors/outboundPolicy.ts";
import type { UpstreamEra } from "../protocol/catalog.ts";
import { mapGatewaySecrets, type GatewayRecord } from "../protocol/gateway.ts";
import {
  DiscoverResultSchema,
  HEADER,
  InputRequiredResultSchema,
  isStatelessVersion,
  META,
  NAME_BEARING_METHODS,
  RESULT_TYPE,
  REVISION_ERROR,
  STATELESS_PROTOCOL_VERSIONS,
  UnsupportedVersionDataSchema,
  type DiscoverResult,
} from "../protocol/revision2026.ts";
import type { JsonRpcError } from "../protocol/upstream.ts";
import { AnswerTooLargeError, CLIENT_INFO, connectUpstream, httpTarget, passthroughHeaders, UPSTREAM_KEEP_ALIVE, UpstreamRequestError, type CallOutcome, type ConnectOptions, type UpstreamConnection } from "./mcpClient.ts";
import { guardedConnector, outboundRefusalOf } from "./outboundConnector.ts";
import { DeadlineError, postJsonRpc, type JsonRpcReply } from "./upstream/jsonRpcPost.ts";

type Progress = { progress: number; total?: number; message?: string };
type Notification = { method: string; params?: Record<string, unknown> };

type RequestCall = Parameters<UpstreamConnection["request"]>[1];

export type StatelessUpstream = Pick<UpstreamConnection, "close" | "forceClose"> & {
  /** as a session's `request`; a caller of its own (a health check) may bound it by `deadlineMs` instead of a signal */
  request(req: Parameters<UpstreamConnection["request"]>[0], call: Omit<RequestCall, "signal"> & { signal?: AbortSignal; deadlineMs?: number }): Promise<CallOutcome>;
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
  /**
   * Answers one of the requests an `input_required` result asks the client (elicitation,
   * sampling, roots), as `ConnectOptions.onRequest` answers a session's server requests; its
   * result goes back in the repeated request. Absent: an `input_required` result is the answer.
   */
  onRequest?: ConnectOptions["onRequest"];
};

/** Rounds of `input_required` one request may take (the Python client's bound) before it fails. */
export const MAX_INPUT_ROUNDS = 10;

/** The upstream's `server/discover` was no evidence that it speaks a revision served here. */
/** An HTTP answer that carries no JSON-RPC answer (a status, maybe a page): the upstream is there. */
class HttpAnswerError extends Error {}

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
  // a gateway with TLS material gets its own agent, as session connections do
  const tls = mapGatewaySecrets(record, (sealed) => opts.open(sealed, record.id)).tls;
  const own =
    opts.dispatcher && !tls
      ? undefined
      : new Agent({ ...UPSTREAM_KEEP_ALIVE, connect: guardedConnector(opts.outbound, tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, rejectUnauthorized: tls.rejectUnauthorized ?? true } : {}) });
  const agent = own ?? opts.dispatcher!;
  let nextId = 1;

  /** One POST: the answer to `method`, its progress and other notifications read from its stream on the way. */
  async function post(
    method: string,
    params: Record<string, unknown>,
    version: string,
    call: { headers: Record<string, string>; trace?: Record<string, string>; signal?: AbortSignal | undefined; deadlineMs?: number | undefined; onprogress?: ((p: Progress) => void) | undefined },
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
    let reply: JsonRpcReply;
    try {
      reply = await postJsonRpc({
        dispatcher: agent,
        url,
        headers: h,
        body: JSON.stringify({ jsonrpc: "2.0", id, method, params: { ...params, _meta: meta } }),
        id,
        maxBytes: opts.maxAnswerBytes,
        tooLarge: (bytes, limit) => new AnswerTooLargeError(bytes, limit),
        signal: call.signal,
        deadlineMs: call.deadlineMs,
        onMessage: (msg) => {
          if (typeof msg.method !== "string" || msg.id !== undefined) return;
          const params = msg.params as Record<string, unknown> | undefined;
          if (msg.method === "notifications/progress" && progressToken !== undefined && params?.progressToken === progressToken) {
            const { progress, total, message } = params as Progress;
            call.onprogress?.({ progress, ...(total === undefined ? {} : { total }), ...(message === undefined ? {} : { message }) });
          } else opts.onNotification({ method: msg.method, ...(params ? { params } : {}) });
        },
      });
    } catch (err) {
      if (call.signal?.aborted) throw call.signal.reason;
      if (err instanceof AnswerTooLargeError || err instanceof DeadlineError) throw err;
      throw new UpstreamRequestError(true, outboundRefusalOf(err) ?? err);
    }
    const { status, type, answer } = reply;
    // an error answer may come at a 4xx status (the revision maps its codes onto them)
    if (answer && (answer.result !== undefined || answer.error !== undefined)) return answerOf(answer as { result?: Record<string, unknown>; error?: JsonRpcError });
    if (type === "text/event-stream" && status === 200) throw new UpstreamRequestError(true, new Error(`the upstream's stream for ${method} ended without an answer`));
    throw new UpstreamRequestError(status >= 500 || status === 200, new HttpAnswerError(`upstream answered ${method} with HTTP ${status}${type ? ` (${type})` : ""}`));
  }

  const discover = async (version: string): Promise<Answer> => {
    return post("server/discover", {}, version, { headers: opts.initialHeaders, signal: opts.signal, deadlineMs: opts.timeoutMs }).catch((err: unknown) => {
      // a timeout as a session's handshake reports one
      if (err instanceof DeadlineError) throw new McpError(ErrorCode.RequestTimeout, `server/discover not answered within ${opts.timeoutMs} ms`);
      // A bare 4xx (no JSON-RPC answer) is a refusal too, as the revision's clients read it. So is
      // a bare 5xx: the upstream answers HTTP but not in this revision, and the session connect
      // that follows reports what is wrong in the upstream's own words (masked), as before.
      if (err instanceof UpstreamRequestError && (!err.transport || err.cause instanceof HttpAnswerError)) throw new NotStatelessUpstreamError(`the upstream refused server/discover: ${err.message}`);
      throw err;
    });
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
        let params = req.params ?? {};
        for (let round = 1; ; round++) {
          const answer = await post(req.method, params, version, call);
          if (answer.kind === "error") return { rpcError: answer.error };
          const onRequest = opts.onRequest;
          // a complete result (nearly every one) is relayed as it came, not parsed
          if (answer.result.resultType !== RESULT_TYPE.inputRequired || !onRequest) return { result: answer.result };
          const asked = InputRequiredResultSchema.safeParse(answer.result);
          if (!asked.success) return { result: answer.result };
          if (round > MAX_INPUT_ROUNDS) throw new UpstreamRequestError(false, new Error(`the upstream asked for input more than ${MAX_INPUT_ROUNDS} times in one ${req.method}`));
          // the revision's server requests, asked the client as a session's are; answered in the repeated request
          let responses: Record<string, Record<string, unknown>>;
          try {
            const entries = Object.entries(asked.data.inputRequests ?? {});
            const signal = call.signal ?? new AbortController().signal;
            const answers = await Promise.all(entries.map(([key, r]) => onRequest({ ...r, id: key } as never, { related: call.related, signal })));
            responses = Object.fromEntries(entries.map(([key], i) => [key, answers[i]!]));
          } catch (err) {
            if (call.signal?.aborted) throw call.signal.reason;
            // the revision has no error answer to an input request: the client's refusal is the call's
            const e = err as Partial<JsonRpcError>;
            if (typeof e.code === "number" && typeof e.message === "string") return { rpcError: e.data === undefined ? { code: e.code, message: e.message } : { code: e.code, message: e.message, data: e.data } };
            throw err;
          }
          const { requestState } = asked.data;
          params = { ...(req.params ?? {}), inputResponses: responses, ...(requestState === undefined ? {} : { requestState }) };
        }
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

/** A health check of a stateless upstream (the revision has no `ping`): `server/discover`, answered with a version served here. */
export async function checkStatelessUpstream(conn: StatelessUpstream, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const r = await conn.request({ method: "server/discover" }, { headers: {}, deadlineMs: timeoutMs, ...(signal ? { signal } : {}) }).catch((err: unknown) => {
    // a timeout as the SDK reports one, so the poll counts it as such
    throw err instanceof DeadlineError ? new McpError(ErrorCode.RequestTimeout, "server/discover timed out") : err;
  });
  // not the upstream's error to report as such: it no longer speaks the revision (the caller connects anew, and probes again)
  if ("rpcError" in r) throw new NotStatelessUpstreamError(`the upstream refused server/discover: ${r.rpcError.message}`, r.rpcError);
  const d = DiscoverResultSchema.safeParse(r.result);
  if (!d.success || !d.data.supportedVersions.includes(conn.version)) throw new NotStatelessUpstreamError(`the upstream no longer serves ${conn.version}`);
}

/** An upstream connection of either era: a session (the SDK client) or stateless requests. */
export type EraConnection = { era: "session"; conn: UpstreamConnection } | { era: "stateless"; conn: StatelessUpstream };

/**
 * Connects to a gateway in the revision it speaks. Stdio and SSE gateways speak sessions. A
 * streamable-HTTP gateway is probed with `server/discover` first unless its era is known to be
 * `session` (every session-era server refuses the probe: it then gets `initialize`); a connect
 * in the known session era that fails probes once more, since the upstream may have moved on.
 */
export async function connectEitherEra(opts: ConnectOptions, known: UpstreamEra | undefined): Promise<EraConnection> {
  const session = async (): Promise<EraConnection> => ({ era: "session", conn: await connectUpstream(opts) });
  if (opts.record.transport !== "streamable-http") return session();
  const stateless = async (): Promise<EraConnection> => ({ era: "stateless", conn: await connectStatelessUpstream(statelessOptions(opts)) });
  if (known === "session") {
    try {
      return await session();
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      // the session's own failure is what to report when the upstream does not speak the revision either
      return stateless().catch(() => Promise.reject(err));
    }
  }
  try {
    return await stateless();
  } catch (err) {
    if (!(err instanceof NotStatelessUpstreamError)) throw err;
    return session();
  }
}

function statelessOptions(opts: ConnectOptions): StatelessConnectOptions {
  return {
    record: opts.record,
    open: opts.open,
    capabilities: opts.capabilities ?? {},
    initialHeaders: typeof opts.initialHeaders === "function" ? opts.initialHeaders() : opts.initialHeaders,
    timeoutMs: opts.timeoutMs,
    outbound: opts.outbound,
    ...(opts.maxAnswerBytes === undefined ? {} : { maxAnswerBytes: opts.maxAnswerBytes }),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
    onNotification: (n) => opts.onNotification(n as Parameters<ConnectOptions["onNotification"]>[0]),
    ...(opts.onRequest ? { onRequest: opts.onRequest } : {}),
  };
}


import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import {
  ErrorCode,
  InitializeRequestSchema,
  LATEST_PROTOCOL_VERSION,
  SUPPORTED_PROTOCOL_VERSIONS,
  type JSONRPCMessage,
  type JSONRPCRequest,
} from "@modelcontextprotocol/sdk/types.js";
import { ClientStreamLifecycle, negotiateVersion } from "../../actors/downstreamSession.ts";
import { StatelessIdentity } from "../../actors/statelessIdentity.ts";
import { eraOf } from "../../actors/statelessRequest.ts";
import { sessionKey, type DownstreamSession } from "../../protocol/edge.ts";
import { ProtocolError } from "../../protocol/envelope.ts";
import { HEADER, isStatelessVersion } from "../../protocol/revision2026.ts";
import { STREAM_GET } from "../../protocol/subjects.ts";
import {
  parseServerRequestId,
  parseStreamEventId,
  PRIMING_UID,
  SessionIdSchema,
  streamEventId,
  StreamEventSchema,
  UpstreamAnswerRequestSchema,
  type StreamEvent,
} from "../../protocol/upstream.ts";
import { z } from "zod";
import { decodeJson, encodeJson, isNatsUnavailable, isNoResponders, listen, unwrapReply } from "../bus.ts";
import { followConnection } from "../nats.ts";
import { passthroughHeaders } from "../mcpClient.ts";
import type { LoadedSession, SessionStore } from "../sessionStore.ts";
import { answerStateless, type StatelessDeps } from "../statelessRequests.ts";
import { publishStreamEvent, resumeStream } from "../streamLog.ts";
import type { AnswerDelivery, UpstreamCaller } from "../upstreamClient.ts";
import type { Hosted, WorkerContext } from "../worker.ts";
import type { CatalogCache } from "./catalogCache.ts";
import { capabilities, clientMethods, federatedTaskResult, initializeResult, RpcError, rpcErrorOf, serverInfo, settle, type RequestContext } from "./clientMethods.ts";
import { consoleRoutes } from "./console/consoleRoutes.ts";
import { bearerToken, HostGuard, isLoopbackAddress, SessionOwners, tokenDigests, tokenMatches } from "./security.ts";
import { SessionLinks, parseWireId, wireKey } from "./sessionLinks.ts";
import { accepts, HttpError, isAnswer, isJsonContent, isNotification, isRequest, parseJson, parseMessages, PostResponse, PrimingClock, readBody, rpcErrorBody, sendJson, SseStream } from "./streamableHttp.ts";

export type Edge = Hosted & {
  /** takes no new connections; requests in flight go on until `drain` or `stop` */
  stopAccepting(): Promise<void>;
  /** waits (at most `withinMs`) for the calls in flight on this edge's streams to be answered */
  drain(withinMs: number): Promise<void>;
  url: string;
  port: number;
  cache: CatalogCache;
  sessions: SessionStore;
  /** Keys of the client sessions whose GET stream this worker holds (they hear change notices from here). */
  listeningSessions(): string[];
};

const LIST_CHANGED = { tools: "notifications/tools/list_changed", prompts: "notifications/prompts/list_changed", resources: "notifications/resources/list_changed" } as const;

/** How long a request waits for a lost NATS connection to come back before its 503. */
const RECONNECT_GRACE_MS = 3_000;
const unavailable = () =>
  new HttpError(503, ErrorCode.ConnectionClosed, "Service Unavailable: the gateway cannot reach NATS; retry later", { "retry-after": "2" });

/** Unknown, of another gateway, of another owner: one answer, so it tells nothing about other sessions. */
const sessionNotFound = () => new HttpError(404, -32001, "Session not found");

/** How often a quiet stateless SSE answer gets a comment line (as the Python SDK's server does). */
const SSE_KEEPALIVE_MS = 15_000;

/**
 * How long a POST's answer may be held unwritten before its SSE stream starts with the priming
 * event (it starts between one and two delays). A faster call is answered as JSON in one write;
 * a slower one is resumable from then on, at any worker.
 */
export const PRIMING_DELAY_MS = 1_000;

/** How long the edge waits for NATS to take a client's answer to a server request. */
const ANSWER_TIMEOUT_MS = 5_000;

/** How much of each client-described field of an initialize a session record keeps. */
const RECORDED_FIELD_MAX = 16 * 1024;

/**
 * What a session record keeps of a client's initialize. An initialize may be as large as the
 * body limit, but the record is a KV value within NATS's max_payload: a field larger than
 * `RECORDED_FIELD_MAX` is kept in short (name and version; the capabilities' names).
 */
function recordedClient(clientInfo: DownstreamSession["clientInfo"], capabilities: Record<string, unknown>): Pick<DownstreamSession, "clientInfo" | "capabilities"> {
  const fits = (v: unknown) => JSON.stringify(v).length <= RECORDED_FIELD_MAX;
  return {
    clientInfo: fits(clientInfo) ? clientInfo : { name: clientInfo.name.slice(0, 256), version: clientInfo.version.slice(0, 256) },
    capabilities: fits(capabilities) ? capabilities : Object.fromEntries(Object.keys(capabilities).slice(0, 32).map((k) => [k.slice(0, 64), {}])),
  };
}

type Answer = { jsonrpc: "2.0"; id: string | number; result: Record<string, unknown> } | ReturnType<typeof rpcErrorBody>;

function answerOf(id: string | number, outcome: { result: Record<string, unknown> } | { error: unknown }): Answer {
  if ("result" in outcome) return { jsonrpc: "2.0", id, result: outcome.result };
  const e = outcome.error;
  return e instanceof RpcError ? rpcErrorBody(e.code, e.message, id, e.data) : rpcErrorBody(ErrorCode.InternalError, "internal error; see the worker's log", id);
}

/**
 * The edge actor of one worker: the MCP Streamable HTTP endpoint for clients. `/mcp` serves
 * the federated catalog, `/gateways/<name>/mcp` one gateway's catalog under its own names.
 * Client sessions live in KV (actors/downstreamSession.ts is their policy), so any worker
 * answers any request of any session and resumes any of its streams.
 */
export async function startEdge(ctx: WorkerContext, caller: UpstreamCaller): Promise<Edge> {
  const { config, log: workerLog } = ctx;
  const log = workerLog.child({ actor: "edge" });
  const edge = config.edge;
  if (edge.auth === "token" && edge.tokens.length === 0) throw new Error("MCPGW_EDGE_TOKENS is required unless MCPGW_EDGE_AUTH=none");
  if (edge.auth === "none") log.warn("client authentication is OFF (MCPGW_EDGE_AUTH=none): anyone who can reach the endpoint can use every gateway");
  const tokens = tokenDigests(edge.tokens);
  if (!config.secretKey) throw new Error("MCPGW_SECRET_KEY is required");
  const owners = new SessionOwners(config.secretKey);
  const nats = followConnection(ctx.nc);
  const webConsole = consoleRoutes(ctx, tokenDigests(config.console.tokens));
  const metricsTokens = tokenDigests(config.metricsTokens);
  const guardOpts = { log, refusals: ctx.refusals };

  const cache = ctx.catalogs;
  // the worker's one store: followed and swept by its edge
  const sessions = ctx.sessions;
  const links = new SessionLinks(ctx.nc, ctx.s, guardOpts);
  await sessions.followEnds(ctx.nc, guardOpts, (sid) => links.ended(sid));
  sessions.startSweeping(() => links.streamSessionIds());
  const methods = clientMethods({
    cache,
    caller,
    sessions,
    tellUpstreams: (sid, message) => ctx.nc.publish(ctx.s.upstream.sessionWide(sid), encodeJson(message)),
    pageSize: edge.pageSize,
    callTimeoutMs: config.intervals.callTimeout,
    log,
    metrics: ctx.metrics,
    tracing: ctx.tracing,
  });
  /** aborted when the edge stops accepting: held stateless listen streams end gracefully */
  const closing = new AbortController();
  /** the 2026-07-28 path: no session; upstream sessions keyed by credential (and partition), see actors/statelessIdentity.ts */
  const stateless: StatelessDeps = {
    identity: new StatelessIdentity(config.secretKey),
    dispatch: (request, rctx) => handleRequest(request, rctx),
    capabilities: () => capabilities(),
    serverInfo,
    listTtlMs: edge.listTtl,
    now: () => new Date(),
    callTimeoutMs: config.intervals.callTimeout,
    follow: (sid, streamId, onEvent) => links.hold(sid, streamId, { scope: null, deliver: onEvent, close: () => {} }),
    replay: async (sid, streamId, afterUid, onEvent) => {
      const replay = await resumeStream(ctx.stores.js, ctx.stores.streamLogName, ctx.s, { sid, streamId, afterUid }, onEvent, guardOpts);
      return () => replay.stop();
    },
    answer: async (sid, gid, answer) => {
      try {
        unwrapReply((await ctx.nc.request(ctx.s.upstream.op(sid, gid, "answer"), encodeJson(answer), { timeout: ANSWER_TIMEOUT_MS })).data, z.unknown());
        return true;
      } catch (err) {
        // nobody hosts that session any more, or it waits for no such answer
        if (isNoResponders(err) || err instanceof ProtocolError) return false;
        throw err;
      }
    },
    cancel: (sid, gid, requestId) => void caller.notify(sid, gid, requestId, "the client closed the request"),
    settleEvent: (event, scope) => {
      const outcome = replyOutcome(event, scope);
      if ("error" in outcome) throw outcome.error;
      return outcome.result;
    },
    followSessionNotices: async (sid, onEvent) => {
      const sub = listen(
        ctx.nc,
        ctx.s.stream.event(sid, STREAM_GET, "message"),
        (msg) => {
          const event = StreamEventSchema.safeParse(decodeJsonOrNull(msg.data));
          if (event.success) onEvent(event.data);
        },
        { ...guardOpts, expect: "message" },
      );
      await ctx.nc.flush().catch(() => {});
      return () => sub.unsubscribe();
    },
    onCatalogChange: (scope, listener) => {
      cache.view(scope); // built now, so later changes of it are noticed
      return cache.onChange((change) => change.scope === scope && listener(change.lists));
    },
    closing: closing.signal,
  };
  // Stream ids and event uids need to be unique, not secret (a stream is read only through its
  // session, by its owner): a random prefix drawn once, then a counter, no syscall per request.
  const idPrefix = randomBytes(9).toString("base64url");
  let idCount = 0;
  const nextId = () => `${idPrefix}${(idCount++).toString(36)}`;
  /** a change notice goes through the stream log like every other event, so a resumed GET stream has it too */
  const stopNotices = cache.onChange(({ scope, lists }) => {
    for (const held of links.getStreams()) {
      if (held.scope !== scope) continue;
      for (const l of lists) {
        const event: StreamEvent = { uid: `e${nextId()}`, message: { jsonrpc: "2.0", method: LIST_CHANGED[l] } };
        try {
          publishStreamEvent(ctx.nc, ctx.s, held.sid, STREAM_GET, event);
        } catch (err) {
          log.debug({ err }, "could not publish a change notice");
        }
      }
    }
  });
  const priming = new PrimingClock(PRIMING_DELAY_MS);
  /** POST streams with requests in flight here: a stopping worker waits for them */
  const inFlight = new Set<ClientStreamLifecycle>();
  let draining: (() => void) | undefined;
  const settled = (l: ClientStreamLifecycle) => {
    inFlight.delete(l);
    if (inFlight.size === 0) draining?.();
  };

  let guard: HostGuard;

  /** The gateway a path addresses: null for `/mcp`, a gid, or undefined when the path is not an MCP endpoint. */
  const scopeOf = (path: string): string | null | undefined => {
    if (path === "/mcp") return null;
    const m = /^\/gateways\/([a-z0-9-]{1,32})\/mcp$/.exec(path);
    if (!m) return undefined;
    const gid = cache.gatewayByName(m[1]!);
    if (!gid) throw new HttpError(404, ErrorCode.InvalidRequest, `no enabled gateway named ${m[1]}`);
    return gid;
  };

  /**
   * The session a request names, if `credential` owns it. The client's id stops here: the
   * session is looked up, and known behind the edge, by its key. `fresh`: read from KV (the
   * request reads what changes in the record), else as this worker remembers it
   * (SessionStore.recall: what never changes, and that the session has not ended).
   */
  const loadSession = async (req: IncomingMessage, scope: string | null, credential: string, fresh: boolean): Promise<LoadedSession & { clientSessionId: string }> => {
    const clientSessionId = req.headers["mcp-session-id"];
    if (typeof clientSessionId !== "string" || clientSessionId === "") throw new HttpError(400, ErrorCode.ConnectionClosed, "Bad Request: Mcp-Session-Id header is required");
    if (!SessionIdSchema.safeParse(clientSessionId).success) throw sessionNotFound();
    const key = sessionKey(clientSessionId);
    const s = (fresh ? undefined : sessions.recall(key)) ?? (await sessions.load(key));
    if (!s || s.record.gid !== scope || !owners.owns(s.record.owner, credential)) throw sessionNotFound();
    const version = req.headers["mcp-protocol-version"];
    if (typeof version === "string" && !SUPPORTED_PROTOCOL_VERSIONS.includes(version)) {
      throw new HttpError(400, ErrorCode.ConnectionClosed, `Bad Request: Unsupported protocol version: ${version.slice(0, 64)} (supported versions: ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")})`);
    }
    return { ...s, clientSessionId };
  };

  /** The headers every answer of a session carries. */
  const sessionHeaders = (clientSessionId: string, record: DownstreamSession) => ({ "mcp-session-id": clientSessionId, "mcp-protocol-version": record.protocolVersion });

  /** A call's final answer kept on its stream, as the live path gives it: the upstream's result, or the client's error. */
  function replyOutcome(event: Extract<StreamEvent, { reply: unknown }>, scope: string | null): { result: Record<string, unknown> } | { error: unknown } {
    const gatewayName = (event.gid && cache.gatewayName(event.gid)) || "upstream";
    if (!event.reply.ok) return { error: rpcErrorOf(new ProtocolError(event.reply.error.code, event.reply.error.message), gatewayName).error };
    try {
      const result = settle(event.reply.data);
      return { result: scope === null ? federatedTaskResult(gatewayName, edge.toolSeparator, result) : result };
    } catch (err) {
      return { error: err };
    }
  }

  /**
   * Writes one stream event to a client stream: a message as it is (a server request keeps
   * its `serverRequestId`), a call's final answer as the JSON-RPC answer the live path gives.
   * A stream's last answer goes to `end`, which writes it with the stream's end.
   */
  const writeEvent = (sse: { write(id: string, message: unknown): void }, streamId: string, scope: string | null, event: StreamEvent, lifecycle: ClientStreamLifecycle | undefined, end: (last: { id: string; message: unknown }) => void): void => {
    const id = streamEventId(streamId, event.uid);
    if ("message" in event) return sse.write(id, event.message);
    const verdict = lifecycle ? lifecycle.answer(event.requestId) : "write-and-end";
    if (verdict === "drop") return;
    const message = answerOf(parseWireId(event.requestId), replyOutcome(event, scope));
    if (verdict === "write-and-end") end({ id, message });
    else sse.write(id, message);
  };

  const handleResponses = async (sid: string, responses: JSONRPCMessage[]) => {
    await Promise.all(
      responses.map(async (m) => {
        const id = (m as { id?: unknown }).id;
        const target = parseServerRequestId(id);
        const answer = UpstreamAnswerRequestSchema.safeParse("error" in m ? { id, error: m.error } : { id, result: (m as { result?: unknown }).result });
        if (!target || !answer.success) return void log.debug({ sid }, "ignoring a response to no request of an upstream");
        try {
          await ctx.nc.request(ctx.s.upstream.op(sid, target.gid, "answer"), encodeJson(answer.data), { timeout: ANSWER_TIMEOUT_MS });
        } catch (err) {
          // the upstream session that asked is gone: nobody waits for the answer
          log.debug({ err, sid, gid: target.gid }, "an answer to a server request was not taken");
        }
      }),
    );
  };

  const handleNotifications = (sid: string, notes: JSONRPCMessage[]) => {
    for (const m of notes) {
      if (!isNotification(m)) continue;
      if (m.method === "notifications/cancelled") {
        const p = m.params as { requestId?: unknown; reason?: unknown } | undefined;
        if (typeof p?.requestId === "string" || typeof p?.requestId === "number") {
          links.cancel(sid, wireKey(p.requestId), typeof p.reason === "string" ? p.reason.slice(0, 1024) : undefined);
        }
      } else if (m.method === "notifications/roots/list_changed") {
        ctx.nc.publish(ctx.s.upstream.sessionWide(sid), encodeJson({ method: "notifications/roots/list_changed" }));
      }
    }
  };

  /**
   * One client request of either era through the dispatch table. What fails reaches the client
   * as an RpcError, except a bug: NATS out of reach is -32000 "retry later"; anything unexpected
   * is logged here (the client gets "internal error").
   */
  async function handleRequest(request: { id: string | number; method: string; params?: Record<string, unknown> }, rctx: RequestContext): Promise<Record<string, unknown>> {
    try {
      return await methods.handle(request as JSONRPCRequest, rctx);
    } catch (err) {
      if (err instanceof RpcError || rctx.signal.aborted) throw err;
      if (isNatsUnavailable(err)) throw new RpcError(ErrorCode.ConnectionClosed, "the gateway cannot reach NATS; retry later");
      log.error({ err, sid: rctx.sid, method: request.method }, "client request failed");
      throw err;
    }
  }

  /** Runs one client request; a request the client cancelled gets no answer (null). */
  const run = async (request: JSONRPCRequest, base: Omit<RequestContext, "requestId" | "signal">): Promise<Answer | null> => {
    const requestId = wireKey(request.id);
    const abort = new AbortController();
    const release = links.addRequest(base.sid, requestId, (reason) => abort.abort(reason ?? "cancelled"));
    try {
      return answerOf(request.id, { result: await handleRequest(request, { ...base, requestId, signal: abort.signal }) });
    } catch (err) {
      if (abort.signal.aborted) return null;
      return answerOf(request.id, { error: err });
    } finally {
      release();
    }
  };

  const handleInitialize = async (res: ServerResponse, init: JSONRPCRequest, scope: string | null, credential: string, headers: Record<string, string>) => {
    const parsed = InitializeRequestSchema.safeParse(init);
    if (!parsed.success) return sendJson(res, 200, rpcErrorBody(ErrorCode.InvalidParams, "Invalid params for initialize", init.id));
    const params = parsed.data.params;
    const clientSessionId = randomBytes(16).toString("base64url");
    const sid = sessionKey(clientSessionId);
    const now = new Date().toISOString();
    const record: DownstreamSession = {
      sid,
      owner: owners.of(credential),
      gid: scope,
      protocolVersion: negotiateVersion(params.protocolVersion, SUPPORTED_PROTOCOL_VERSIONS, LATEST_PROTOCOL_VERSION),
      ...recordedClient(params.clientInfo, params.capabilities as Record<string, unknown>),
      createdAt: now,
      lastSeenAt: now,
    };
    const created = await sessions.create(record);
    caller.created(sid);
    // a client of one gateway's endpoint will almost surely call it: its upstream session opens
    // here now, while the client reads this answer and sends `initialized` (on /mcp, one of many gateways: none)
    if (scope !== null && cache.callable(scope)) caller.prepare(created, scope, { headers: passthroughHeaders(cache.passthroughHeaders(scope), headers) }, headers);
    log.info({ sid, scope, client: record.clientInfo.name.slice(0, 256), protocolVersion: record.protocolVersion }, "downstream session started");
    const gatewayName = scope === null ? undefined : cache.gatewayName(scope);
    sendJson(res, 200, { jsonrpc: "2.0", id: init.id, result: initializeResult(record.protocolVersion, gatewayName) }, sessionHeaders(clientSessionId, record));
  };

  /**
   * One 2026-07-28 request: JSON, or an SSE stream once something comes before the answer
   * (progress, a listen stream's events), the answer its last event; no session id, no event
   * ids, no priming event (the revision does not resume).
   */
  const handleStateless = async (req: IncomingMessage, res: ServerResponse, body: unknown, scope: string | null, credential: string) => {
    const abort = new AbortController();
    // a client that closes its request cancels it (the revision has no notifications/cancelled)
    res.on("close", () => {
      if (!res.writableFinished) abort.abort("the client closed the request");
    });
    let sse: SseStream | undefined;
    let keepAlive: NodeJS.Timeout | undefined;
    const out = {
      notify: (message: Record<string, unknown>) => {
        if (abort.signal.aborted) return;
        if (!sse) {
          sse = new SseStream(res, {});
          // a listen stream, or a long call, may be quiet for longer than a client's read timeout
          keepAlive = setInterval(() => sse!.comment(), SSE_KEEPALIVE_MS).unref();
          res.on("close", () => clearInterval(keepAlive));
        }
        sse.message(message);
      },
    };
    const answer = await answerStateless(
      stateless,
      {
        body,
        headers: forwardableHeaders(req.headers),
        credential,
        owner: owners.of(credential),
        scope,
        ...(scope === null ? {} : { gatewayName: cache.gatewayName(scope) }),
        signal: abort.signal,
      },
      out,
    );
    clearInterval(keepAlive);
    if (res.writableEnded || abort.signal.aborted) return;
    if (sse) {
      return sse.end(answer.body === null ? undefined : { message: answer.body });
    }
    if (answer.body === null) return void res.writeHead(answer.status).end();
    sendJson(res, answer.status, answer.body);
  };

  const handlePost = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    if (!accepts(req, "application/json") || !accepts(req, "text/event-stream")) {
      throw new HttpError(406, ErrorCode.ConnectionClosed, "Not Acceptable: Client must accept both application/json and text/event-stream");
    }
    if (!isJsonContent(req)) throw new HttpError(415, ErrorCode.InvalidRequest, "Unsupported Media Type: Content-Type must be application/json");
    const json = parseJson(await readBody(req, res, edge.maxBodyBytes));
    const versionHeader = req.headers[HEADER.protocolVersion];
    const sessionId = req.headers["mcp-session-id"];
    if (eraOf({ versionHeader: typeof versionHeader === "string" ? versionHeader : undefined, sessionId: typeof sessionId === "string" ? sessionId : undefined, body: json }) === "stateless") {
      return handleStateless(req, res, json, scope, credential);
    }
    const messages = parseMessages({ json });
    const requests = messages.filter(isRequest);
    const init = requests.find((m) => m.method === "initialize");
    if (init) {
      if (messages.length > 1) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: initialize must be sent alone");
      return handleInitialize(res, init, scope, credential, forwardableHeaders(req.headers));
    }
    const s = await loadSession(req, scope, credential, requests.some((r) => methods.readsViews(r)));
    const sid = s.record.sid;
    const touching = sessions.touch(s);
    if (touching) await touching;
    handleNotifications(sid, messages);
    const responses = messages.filter(isAnswer);
    if (responses.length > 0) await handleResponses(sid, responses);
    const headers = sessionHeaders(s.clientSessionId, s.record);
    if (requests.length === 0) return void res.writeHead(202, headers).end();

    const base = { sid, record: s.record, scope, headers: forwardableHeaders(req.headers) };
    // answers that need no upstream come back as plain JSON, as from the SDK's server
    if (requests.every((r) => methods.isLocal(r, base))) {
      const answers = (await Promise.all(requests.map((r) => run(r, base)))).filter((a) => a !== null);
      if (answers.length === 0) return void res.writeHead(202, headers).end();
      return sendJson(res, 200, messages.length === 1 && answers.length === 1 ? answers[0] : answers, headers);
    }

    // JSON when the answers come first, else an SSE stream that starts with its priming event (PostResponse)
    const streamId = nextId();
    const lifecycle = new ClientStreamLifecycle("post", requests.map((r) => wireKey(r.id)));
    const post = new PostResponse(res, headers, streamEventId(streamId, PRIMING_UID), messages.length > 1, priming);
    inFlight.add(lifecycle);
    let answered = 0;
    const finish = (last?: { id: string; message: unknown }) => {
      lifecycle.end();
      settled(lifecycle);
      post.end(last);
    };
    const release = await links.hold(sid, streamId, {
      scope,
      deliver: (event) => writeEvent(post, streamId, scope, event, lifecycle, finish),
      close: finish,
    });
    post.onClose(() => {
      // a client that left may resume: its calls go on, and their answers wait in the stream log
      release();
      settled(lifecycle);
    });
    const delivery: AnswerDelivery = { streamOpen: () => !post.closed, get delivered() { return post.delivered; } };
    const answerOne = async (r: JSONRPCRequest) => {
      const answer = await run(r, { ...base, streamId, delivery });
      const verdict = lifecycle.answer(wireKey(r.id));
      if (verdict === "drop") return;
      const last = answer ? { id: streamEventId(streamId, `a${answered++}`), message: answer } : undefined;
      if (verdict === "write-and-end") finish(last);
      else if (last) post.write(last.id, last.message);
    };
    await (requests.length === 1 ? answerOne(requests[0]!) : Promise.all(requests.map(answerOne)));
    release();
  };

  const handleGet = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    if (!accepts(req, "text/event-stream")) throw new HttpError(406, ErrorCode.ConnectionClosed, "Not Acceptable: Client must accept text/event-stream");
    const s = await loadSession(req, scope, credential, false);
    const sid = s.record.sid;
    await sessions.touch(s);
    cache.view(scope); // built now, so later changes of it are noticed and pushed on this stream
    const lastEventId = req.headers["last-event-id"];
    const resumeAt = typeof lastEventId === "string" ? parseStreamEventId(lastEventId) : null;
    if (typeof lastEventId === "string" && !resumeAt) throw new HttpError(400, ErrorCode.InvalidRequest, "Bad Request: Last-Event-ID is not an event id of this gateway");
    const streamId = resumeAt?.streamId ?? STREAM_GET;
    const sse = new SseStream(res, sessionHeaders(s.clientSessionId, s.record));
    // a resumed stream: stored events after the client's last one, then the live ones, all from the stream log
    let replay: { stop(): void } | undefined;
    const close = (last?: { id: string; message: unknown }) => {
      replay?.stop();
      sse.end(last);
    };
    // the GET stream carries no answers; a resumed POST stream ends with its answer
    const lifecycle = streamId === STREAM_GET ? new ClientStreamLifecycle("get") : undefined;
    const release = await links.hold(sid, streamId, {
      scope,
      deliver: (event) => void (resumeAt === null && writeEvent(sse, streamId, scope, event, lifecycle, (last) => sse.write(last.id, last.message))),
      close,
    });
    sse.onClose(() => {
      replay?.stop();
      release();
    });
    if (resumeAt === null) return sse.write(streamEventId(streamId, PRIMING_UID));
    sse.flushSoon();
    try {
      replay = await resumeStream(ctx.stores.js, ctx.stores.streamLogName, ctx.s, { sid, streamId, afterUid: resumeAt.uid }, (event) => writeEvent(sse, streamId, scope, event, lifecycle, close), guardOpts);
      if (sse.closed) replay.stop();
    } catch (err) {
      release();
      throw err;
    }
  };

  const handleDelete = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    const s = await loadSession(req, scope, credential, true);
    await sessions.end(s.record.sid, "deleted by client");
    res.writeHead(200).end();
  };

  const handleMcp = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    if (req.method === "POST") return handlePost(req, res, scope, credential);
    // the revision has no session to listen on or delete: every request is a POST
    if (isStatelessVersion(req.headers[HEADER.protocolVersion])) throw new HttpError(405, ErrorCode.InvalidRequest, "Method Not Allowed: MCP 2026-07-28 requests are POSTs", { allow: "POST" });
    if (req.method === "GET") return handleGet(req, res, scope, credential);
    if (req.method === "DELETE") return handleDelete(req, res, scope, credential);
    throw new HttpError(405, ErrorCode.InvalidRequest, "Method Not Allowed", { allow: "GET, POST, DELETE" });
  };

  /**
   * Prometheus scrapes: with MCPGW_METRICS_TOKEN, its bearer token (a client token is not
   * enough: a scraper need not be able to call tools); without, loopback peers only.
   */
  const serveMetrics = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== "GET") throw new HttpError(405, ErrorCode.InvalidRequest, "Method Not Allowed", { allow: "GET" });
    const presented = bearerToken(req.headers.authorization);
    if (metricsTokens.length > 0 && (presented === null || !tokenMatches(presented, metricsTokens))) {
      throw new HttpError(401, ErrorCode.InvalidRequest, "Unauthorized: the metrics bearer token is required", { "www-authenticate": 'Bearer realm="mcpgw-metrics"' });
    }
    if (metricsTokens.length === 0 && !isLoopbackAddress(req.socket.remoteAddress)) {
      throw new HttpError(403, ErrorCode.InvalidRequest, "Forbidden: metrics are served to loopback peers only unless MCPGW_METRICS_TOKEN is set");
    }
    res.writeHead(200, { "content-type": ctx.metrics.registry.contentType }).end(await ctx.metrics.registry.metrics());
  };

  const ready = async (): Promise<boolean> => {
    if (!nats.connected()) return false;
    try {
      await Promise.race([ctx.stores.sessions.status(), new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), 2000).unref())]);
      return true;
    } catch {
      return false;
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? "/";
    // a plain path (no query, dot segment, escape or absolute form) is its own pathname: no URL parse
    const path = PLAIN_PATH.test(url) ? url : new URL(url, "http://edge").pathname;
    if (path === "/healthz") return void res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
    if (path === "/readyz") {
      const ok = await ready();
      return void res.writeHead(ok ? 200 : 503, { "content-type": "application/json" }).end(JSON.stringify({ status: ok ? "ready" : "not ready" }));
    }
    const refusal = guard.refusal(req);
    if (refusal) throw new HttpError(403, ErrorCode.InvalidRequest, refusal);
    if (path === "/metrics") return serveMetrics(req, res);
    if (path.startsWith("/console") && (await webConsole.handle(req, res, path))) return;
    // the credential owns the sessions it creates; without client auth everyone is one anonymous owner
    const credential = edge.auth === "none" ? "" : bearerToken(req.headers.authorization);
    if (credential === null || (edge.auth === "token" && !tokenMatches(credential, tokens))) {
      throw new HttpError(401, ErrorCode.InvalidRequest, "Unauthorized: a valid bearer token is required", { "www-authenticate": 'Bearer realm="mcpgw"' });
    }
    const scope = scopeOf(path);
    if (scope === undefined) throw new HttpError(404, ErrorCode.InvalidRequest, `no MCP endpoint at ${path.slice(0, 256)}`);
    // a worker moving to another NATS node is back within a second or two: a request that
    // comes meanwhile waits for it rather than failing; NATS down for longer is a 503
    if (!nats.connected() && !(await nats.reconnected(RECONNECT_GRACE_MS))) throw unavailable();
    await handleMcp(req, res, scope, credential);
  };

  const http: HttpServer = createServer((req, res) => {
    handle(req, res).catch((err) => {
      const e = err instanceof HttpError ? err : isNatsUnavailable(err) ? unavailable() : null;
      if (!e) log.error({ err, method: req.method }, "edge request failed");
      else if (!(err instanceof HttpError)) log.warn({ err, method: req.method }, "edge request refused: NATS unreachable");
      if (res.headersSent) return void res.end();
      sendJson(res, e?.status ?? 500, rpcErrorBody(e?.rpcCode ?? ErrorCode.InternalError, e?.message ?? "internal error; see the worker's log"), e?.headers);
    });
  });
  http.on("clientError", (_err, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    http.once("error", reject);
    http.listen(edge.port, edge.host, () => resolve());
  });
  const port = (http.address() as AddressInfo).port;
  guard = new HostGuard({ bindHost: edge.host, port, allowedHosts: edge.allowedHosts, allowedOrigins: edge.allowedOrigins });
  const hostForUrl = edge.host === "0.0.0.0" || edge.host === "::" ? "127.0.0.1" : edge.host.includes(":") ? `[${edge.host}]` : edge.host;
  const url = `http://${hostForUrl}:${port}/mcp`;
  log.info({ url, auth: edge.auth }, "edge listening");

  return {
    url,
    port,
    cache,
    sessions,
    listeningSessions: () => links.streamSessionIds(),
    async stopAccepting() {
      closing.abort();
      http.close();
      http.closeIdleConnections();
    },
    async drain(withinMs) {
      if (inFlight.size === 0) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, withinMs);
        draining = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    },
    async stop() {
      stopNotices();
      priming.stop();
      webConsole.stop();
      links.stop();
      sessions.stop();
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}

const PLAIN_PATH = /^\/[A-Za-z0-9_\/-]*$/;

const DROPPED_HEADERS = new Set(["authorization", "proxy-authorization", "cookie", "mcp-session-id", "last-event-id"]);

/** The downstream request's headers as the upstream call carries them (the edge's credentials and the client's session id never leave). */
export function forwardableHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || DROPPED_HEADERS.has(k)) continue;
    const text = Array.isArray(v) ? v.join(", ") : v;
    if (text.length <= 8192) out[k] = text;
  }
  return out;
}

function decodeJsonOrNull(data: Uint8Array): unknown {
  try {
    return decodeJson(data);
  } catch {
    return null;
  }
}

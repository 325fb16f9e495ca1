import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import {
  ErrorCode,
  InitializeRequestSchema,
  isJSONRPCNotification,
  JSONRPCMessageSchema,
  LATEST_PROTOCOL_VERSION,
  SUPPORTED_PROTOCOL_VERSIONS,
  type JSONRPCMessage,
} from "@modelcontextprotocol/sdk/types.js";
import { sessionKey, type DownstreamSession } from "../../protocol/edge.ts";
import { SessionIdSchema } from "../../protocol/upstream.ts";
import { isNatsUnavailable } from "../bus.ts";
import { followConnection } from "../nats.ts";
import type { Hosted, WorkerContext } from "../worker.ts";
import { CatalogCache } from "./catalogCache.ts";
import { consoleRoutes } from "./console/consoleRoutes.ts";
import type { UpstreamCaller } from "../upstreamClient.ts";
import { forwardableHeaders, sessionServer } from "./mcpServer.ts";
import { bearerToken, HostGuard, isLoopbackAddress, SessionOwners, tokenDigests, tokenMatches } from "./security.ts";
import { SessionLinks, wireKey } from "./sessionLinks.ts";
import { SessionStore, type LoadedSession } from "../sessionStore.ts";

export type Edge = Hosted & {
  /** takes no new connections; requests in flight go on until `stop` */
  stopAccepting(): Promise<void>;
  url: string;
  port: number;
  cache: CatalogCache;
  sessions: SessionStore;
  /** Keys of the client sessions whose GET stream this worker holds (they hear change notices from here). */
  listeningSessions(): string[];
};

const LIST_CHANGED = { tools: "notifications/tools/list_changed", prompts: "notifications/prompts/list_changed", resources: "notifications/resources/list_changed" } as const;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly rpcCode: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** A NATS outage: the connection retries every 500 ms, so a client may soon. */
/** How long a request waits for a lost NATS connection to come back before its 503. */
const RECONNECT_GRACE_MS = 3_000;
const unavailable = () =>
  new HttpError(503, ErrorCode.ConnectionClosed, "Service Unavailable: the gateway cannot reach NATS; retry later", { "retry-after": "2" });

/** Unknown, of another gateway, of another owner: one answer, so it tells nothing about other sessions. */
const sessionNotFound = () => new HttpError(404, -32001, "Session not found");

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

/**
 * The edge actor of one worker: the MCP Streamable HTTP endpoint for clients. `/mcp` serves
 * the federated catalog, `/gateways/<name>/mcp` one gateway's catalog under its own names.
 * Sessions live in KV, so any worker answers any request of any session.
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

  const cache = new CatalogCache(ctx.stores, edge.toolSeparator, log);
  await cache.start();
  ctx.metrics.readGatewaysFrom(() => cache.summaries());
  const sessions = new SessionStore({
    kv: ctx.stores.sessions,
    js: ctx.stores.js,
    s: ctx.s,
    log,
    idleTtlMs: edge.sessionIdleTtl,
    onSwept: (alive) => ctx.metrics.clientSessions.set(alive),
  });
  const links = new SessionLinks(ctx.nc, ctx.s, { log, refusals: ctx.refusals });
  sessions.startSweeping(() => links.streamSessionIds());
  const stopNotices = cache.onChange(({ scope, lists }) => {
    for (const stream of links.streams()) {
      if (stream.gid !== scope) continue;
      for (const l of lists) void stream.notify({ method: LIST_CHANGED[l] }).catch(() => {});
    }
  });

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

  const readBody = (req: IncomingMessage): Promise<Buffer> => {
    const tooLarge = () => new HttpError(413, ErrorCode.InvalidRequest, `request body larger than ${edge.maxBodyBytes} bytes`, { connection: "close" });
    if (Number(req.headers["content-length"] ?? 0) > edge.maxBodyBytes) return Promise.reject(tooLarge());
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on("data", (c: Buffer) => {
        size += c.length;
        if (size <= edge.maxBodyBytes) return void chunks.push(c);
        // Stop buffering; the 413 goes out with `connection: close`, which ends the upload.
        req.removeAllListeners("data");
        req.pause();
        reject(tooLarge());
      });
      req.on("end", () => resolve(Buffer.concat(chunks)));
      req.on("error", reject);
    });
  };

  const parseMessages = (body: Buffer): JSONRPCMessage[] => {
    let raw: unknown;
    try {
      raw = JSON.parse(body.toString("utf8"));
    } catch {
      throw new HttpError(400, ErrorCode.ParseError, "Parse error: the body is not valid JSON");
    }
    const list = Array.isArray(raw) ? raw : [raw];
    if (list.length === 0) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: empty batch");
    return list.map((m) => {
      const r = JSONRPCMessageSchema.safeParse(m);
      if (!r.success) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: not a JSON-RPC 2.0 message");
      const id = (r.data as { id?: unknown }).id;
      if (typeof id === "string" && id.length > 120) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: request id longer than 120 characters");
      return r.data;
    });
  };

  /**
   * The session a request names, if `credential` owns it. The client's id stops here: the
   * session is looked up, and known behind the edge, by its key.
   */
  const loadSession = async (req: IncomingMessage, scope: string | null, credential: string): Promise<LoadedSession & { clientSessionId: string }> => {
    const clientSessionId = req.headers["mcp-session-id"];
    if (typeof clientSessionId !== "string" || clientSessionId === "") throw new HttpError(400, ErrorCode.ConnectionClosed, "Bad Request: Mcp-Session-Id header is required");
    if (!SessionIdSchema.safeParse(clientSessionId).success) throw sessionNotFound();
    const s = await sessions.load(sessionKey(clientSessionId));
    if (!s || s.record.gid !== scope || !owners.owns(s.record.owner, credential)) throw sessionNotFound();
    return { ...s, clientSessionId };
  };

  /** Answers one HTTP request through a fresh SDK server bound to the session (`sid`: its key). */
  const serveWithSdk = async (req: IncomingMessage, res: ServerResponse, clientSessionId: string, sid: string, scope: string | null, body?: JSONRPCMessage[]) => {
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    const server = sessionServer({
      sid,
      gid: scope,
      gatewayName: scope === null ? undefined : cache.gatewayName(scope),
      headers: forwardableHeaders(req.headers),
      view: () => cache.view(scope),
      caller,
      links,
      deliver: (m) => transport.onmessage?.(m),
      pageSize: edge.pageSize,
      callTimeoutMs: config.intervals.callTimeout,
      log,
      metrics: ctx.metrics,
      tracing: ctx.tracing,
    });
    res.on("close", () => {
      void transport.close().catch(() => {});
      void server.close().catch(() => {});
    });
    res.setHeader("mcp-session-id", clientSessionId);
    await server.connect(transport);
    return { server, transport, handled: transport.handleRequest(req, res, body === undefined ? undefined : body.length === 1 ? body[0] : body) };
  };

  const handlePost = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    const type = req.headers["content-type"] ?? "";
    if (!type.toLowerCase().startsWith("application/json")) throw new HttpError(415, ErrorCode.InvalidRequest, "Unsupported Media Type: Content-Type must be application/json");
    const messages = parseMessages(await readBody(req));
    const init = messages.find((m) => InitializeRequestSchema.safeParse(m).success);
    let clientSessionId: string;
    let sid: string;
    if (init) {
      if (messages.length > 1) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: initialize must be sent alone");
      const params = InitializeRequestSchema.parse(init).params;
      clientSessionId = randomBytes(16).toString("base64url");
      sid = sessionKey(clientSessionId);
      const now = new Date().toISOString();
      const record: DownstreamSession = {
        sid,
        owner: owners.of(credential),
        gid: scope,
        protocolVersion: SUPPORTED_PROTOCOL_VERSIONS.includes(params.protocolVersion) ? params.protocolVersion : LATEST_PROTOCOL_VERSION,
        ...recordedClient(params.clientInfo, params.capabilities as Record<string, unknown>),
        createdAt: now,
        lastSeenAt: now,
      };
      await sessions.create(record);
      log.info({ sid, scope, client: record.clientInfo.name.slice(0, 256), protocolVersion: record.protocolVersion }, "downstream session started");
    } else {
      const s = await loadSession(req, scope, credential);
      clientSessionId = s.clientSessionId;
      sid = s.record.sid;
      await sessions.touch(s);
      for (const m of messages) {
        if (isJSONRPCNotification(m) && m.method === "notifications/cancelled") {
          const p = m.params as { requestId?: unknown; reason?: unknown } | undefined;
          if (typeof p?.requestId === "string" || typeof p?.requestId === "number") {
            links.cancel(sid, wireKey(p.requestId), typeof p.reason === "string" ? p.reason.slice(0, 1024) : undefined);
          }
        }
      }
    }
    await (await serveWithSdk(req, res, clientSessionId, sid, scope, messages)).handled;
  };

  const handleGet = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    const s = await loadSession(req, scope, credential);
    await sessions.touch(s);
    cache.view(scope); // built now, so later changes of it are noticed and pushed on this stream
    const { server, transport, handled } = await serveWithSdk(req, res, s.clientSessionId, s.record.sid, scope);
    const release = links.setStream(s.record.sid, {
      gid: scope,
      notify: (n) => server.notification(n),
      close: () => void transport.close().catch(() => {}),
    });
    res.on("close", release);
    await handled;
  };

  const handleDelete = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    const s = await loadSession(req, scope, credential);
    await sessions.end(s.record.sid, "deleted by client");
    res.writeHead(200).end();
  };

  const handleMcp = async (req: IncomingMessage, res: ServerResponse, scope: string | null, credential: string) => {
    if (req.method === "POST") return handlePost(req, res, scope, credential);
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
    const path = new URL(req.url ?? "/", "http://edge").pathname;
    if (path === "/healthz") return void res.writeHead(200, { "content-type": "application/json" }).end('{"status":"ok"}');
    if (path === "/readyz") {
      const ok = await ready();
      return void res.writeHead(ok ? 200 : 503, { "content-type": "application/json" }).end(JSON.stringify({ status: ok ? "ready" : "not ready" }));
    }
    const refusal = guard.refusal(req);
    if (refusal) throw new HttpError(403, ErrorCode.InvalidRequest, refusal);
    if (path === "/metrics") return serveMetrics(req, res);
    if (await webConsole.handle(req, res, path)) return;
    // the credential owns the sessions it creates; without client auth everyone is one anonymous owner
    const credential = edge.auth === "none" ? "" : bearerToken(req.headers.authorization);
    if (credential === null || (edge.auth === "token" && !tokenMatches(credential, tokens))) {
      throw new HttpError(401, ErrorCode.InvalidRequest, "Unauthorized: a valid bearer token is required", { "www-authenticate": 'Bearer realm="mcpgw"' });
    }
    const scope = scopeOf(path);
    if (scope === undefined) throw new HttpError(404, ErrorCode.InvalidRequest, `no MCP endpoint at ${path.slice(0, 256)}`);
    // a worker moving to another NATS node is back within a second or two: a request that
    // comes meanwhile waits for it rather than failing; NATS down for longer is a 503
    if (!(await nats.reconnected(RECONNECT_GRACE_MS))) throw unavailable();
    await handleMcp(req, res, scope, credential);
  };

  const http: HttpServer = createServer((req, res) => {
    handle(req, res).catch((err) => {
      const e = err instanceof HttpError ? err : isNatsUnavailable(err) ? unavailable() : null;
      if (!e) log.error({ err, method: req.method }, "edge request failed");
      else if (!(err instanceof HttpError)) log.warn({ err, method: req.method }, "edge request refused: NATS unreachable");
      if (res.headersSent) return void res.end();
      const body = JSON.stringify({ jsonrpc: "2.0", error: { code: e?.rpcCode ?? ErrorCode.InternalError, message: e?.message ?? "internal error; see the worker's log" }, id: null });
      res.writeHead(e?.status ?? 500, { "content-type": "application/json", ...e?.headers }).end(body);
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
      http.close();
      http.closeIdleConnections();
    },
    async stop() {
      stopNotices();
      webConsole.stop();
      links.stop();
      sessions.stop();
      cache.stop();
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}

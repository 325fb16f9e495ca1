// What the edge answers to each client request: one dispatch table, independent of the HTTP
// layer. Lists come from this worker's catalog view (or, for the lists an upstream changed
// for this session alone, from its upstream session); everything else goes to the upstream
// session actors over NATS, so any worker can answer any request of any session.
import { performance } from "node:perf_hooks";
import { SpanKind } from "@opentelemetry/api";
import {
  CallToolRequestSchema,
  CancelTaskRequestSchema,
  CompleteRequestSchema,
  ErrorCode,
  GetPromptRequestSchema,
  GetTaskPayloadRequestSchema,
  GetTaskRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListTasksRequestSchema,
  ListToolsRequestSchema,
  PingRequestSchema,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  type JSONRPCRequest,
} from "@modelcontextprotocol/sdk/types.js";
import type { z } from "zod";
import { InvalidCursorError, paginate, routeResource, routeTemplate, type Route, type ViewList } from "../../actors/catalogView.ts";
import { ownViews, viewListOf, withLogLevel, withSubscription } from "../../actors/downstreamSession.ts";
import type { DownstreamSession, LoggingLevel } from "../../protocol/edge.ts";
import { ProtocolError } from "../../protocol/envelope.ts";
import type { SessionWideMessage, UpstreamCallReply, UpstreamMethod } from "../../protocol/upstream.ts";
import type { Logger } from "../logger.ts";
import { passthroughHeaders } from "../mcpClient.ts";
import type { CallOutcome, Metrics } from "../metrics.ts";
import type { SessionStore } from "../sessionStore.ts";
import { endSpan, traceHeadersOf, traceIdOf, type Tracing } from "../tracing.ts";
import type { AnswerDelivery, UpstreamCaller } from "../upstreamClient.ts";
import type { CatalogCache } from "./catalogCache.ts";

/** A JSON-RPC error whose code, message and data reach the client exactly as given. */
export class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
  }
}

export const SERVER_INFO = { name: "mcpgw", version: "0.1.0" };

/** What the edge offers (on `/mcp` a task id names its gateway: `<gateway><separator><task id>`). */
export function capabilities(): Record<string, unknown> {
  return {
    tools: { listChanged: true },
    prompts: { listChanged: true },
    resources: { listChanged: true, subscribe: true },
    completions: {},
    logging: {},
    tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } },
  };
}

/** Who answers: mcpgw, or on `/gateways/<name>/mcp` `mcpgw/<name>`. */
export function serverInfo(gatewayName: string | undefined): { name: string; version: string } {
  return gatewayName ? { ...SERVER_INFO, name: `mcpgw/${gatewayName}` } : SERVER_INFO;
}

export function initializeResult(protocolVersion: string, gatewayName: string | undefined): Record<string, unknown> {
  return { protocolVersion, capabilities: capabilities(), serverInfo: serverInfo(gatewayName) };
}

/** One client request as the dispatch table sees it. */
export type RequestContext = {
  sid: string;
  record: DownstreamSession;
  /** null: the federated endpoint; else the one gateway this session sees */
  scope: string | null;
  /** the downstream HTTP request's headers, for the gateways' passthrough lists and trace context */
  headers: Record<string, string>;
  /** the request's session-unique id (`wireKey`) */
  requestId: string;
  /** the client stream the answer goes out on (absent: a JSON answer) */
  streamId?: string;
  /** how that stream's response delivers the answer (an actor of this worker keeps a delivered answer off the stream log) */
  delivery?: AnswerDelivery;
  /** a stateless client's capabilities, which an upstream session this request starts declares (a session's come from `ds.<sid>`) */
  spawnCapabilities?: Record<string, unknown>;
  signal: AbortSignal;
};

export type ClientMethodDeps = {
  cache: CatalogCache;
  caller: UpstreamCaller;
  sessions: SessionStore;
  /** tells every upstream session of `sid` (`upstream.sessionWide`) */
  tellUpstreams(sid: string, message: SessionWideMessage): void;
  pageSize: number;
  callTimeoutMs: number;
  log: Logger;
  metrics: Metrics;
  tracing: Tracing;
};

type Result = Record<string, unknown>;
type Method = {
  schema: z.ZodType<{ params?: unknown }>;
  /** answered without an upstream (a JSON answer will do) */
  local?: (ctx: Pick<RequestContext, "record" | "scope">) => boolean;
  /** reads what other workers and actors change in the session record (`views`): needs it as KV has it now */
  readsViews?: true;
  handle(params: any, ctx: RequestContext): Promise<Result>;
};

/** The upstream's answer, as the client gets it: its result, or its own JSON-RPC error unchanged. */
export function settle(reply: UpstreamCallReply): Result {
  if ("rpcError" in reply) throw new RpcError(reply.rpcError.code, reply.rpcError.message, reply.rpcError.data);
  return reply.result;
}

/** A failure of the bus path (not the upstream's own error) as the client's JSON-RPC error. */
export function rpcErrorOf(err: ProtocolError, gatewayName: string): { error: RpcError; outcome: CallOutcome } {
  const data = { gateway: gatewayName };
  if (err.code === "timeout") return { outcome: "timeout", error: new RpcError(ErrorCode.RequestTimeout, `gateway ${gatewayName} did not answer in time: ${err.message}`, data) };
  if (err.code === "too_large") return { outcome: "too_large", error: new RpcError(ErrorCode.InternalError, `gateway ${gatewayName}: ${err.message}`, data) };
  if (err.code === "unavailable" || err.code === "not_found") return { outcome: "unavailable", error: new RpcError(ErrorCode.ConnectionClosed, `gateway ${gatewayName} unavailable: ${err.message}`, data) };
  return { outcome: "error", error: new RpcError(ErrorCode.InternalError, `gateway ${gatewayName}: ${err.message}`, data) };
}

/** On `/mcp` a task id names its gateway: `<gateway><separator><upstream task id>`, in a task a result carries or is. */
export function federatedTaskResult(gatewayName: string, sep: string, result: Result): Result {
  const rename = (t: unknown) => (t && typeof t === "object" && typeof (t as Result).taskId === "string" ? { ...(t as Result), taskId: `${gatewayName}${sep}${(t as Result).taskId}` } : t);
  if (result.task) return { ...result, task: rename(result.task) };
  return typeof result.taskId === "string" ? (rename(result) as Result) : result;
}

export type ClientMethods = {
  /** true when `request` reads the session's `views`, which may have changed since this worker last read the record */
  readsViews(request: JSONRPCRequest): boolean;
  /** true when `request` needs no upstream (its answer can be plain JSON) */
  isLocal(request: JSONRPCRequest, ctx: Pick<RequestContext, "record" | "scope">): boolean;
  /** the request's result; throws RpcError for the client */
  handle(request: JSONRPCRequest, ctx: RequestContext): Promise<Result>;
};

export function clientMethods(deps: ClientMethodDeps): ClientMethods {
  const { cache } = deps;
  const sep = cache.separator;

  const page = <T>(items: T[], cursor: string | undefined) => {
    try {
      return paginate(items, cursor, deps.pageSize);
    } catch (err) {
      if (err instanceof InvalidCursorError) throw new RpcError(ErrorCode.InvalidParams, err.message);
      throw err;
    }
  };

  /** a request naming nothing this session can route: counted, and answered with `err` */
  const notFound = (method: UpstreamMethod, err: RpcError) => {
    deps.metrics.unrouted(method);
    return err;
  };

  async function forward(ctx: RequestContext, route: Route, method: UpstreamMethod, params: Result, requestId = ctx.requestId): Promise<Result> {
    const started = performance.now();
    // a child of the client's trace context when it sent one (`traceparent`), else a new trace
    const span = deps.tracing.startSpan(`edge ${method}`, { kind: SpanKind.SERVER, parent: ctx.headers, attributes: { "mcp.method.name": method, "mcpgw.gateway": route.gatewayName } });
    let outcome: CallOutcome = "error";
    let failure: string | undefined;
    try {
      if (!route.healthy) {
        outcome = "unavailable";
        throw new RpcError(ErrorCode.ConnectionClosed, `gateway ${route.gatewayName} unavailable (unhealthy)`, { gateway: route.gatewayName });
      }
      try {
        const passthrough = cache.passthroughHeaders(route.gid);
        const reply = await deps.caller.call(
          ctx.sid,
          route.gid,
          // only the headers the gateway lets through travel (the actor filters by the same list)
          { method, params, requestId, headers: passthrough.length === 0 ? {} : passthroughHeaders(passthrough, ctx.headers), timeoutMs: deps.callTimeoutMs, ...(ctx.streamId ? { stream: ctx.streamId } : {}), ...(ctx.spawnCapabilities ? { clientCapabilities: ctx.spawnCapabilities } : {}) },
          ctx.signal,
          traceHeadersOf(span),
          ctx.delivery,
        );
        outcome = "rpcError" in reply ? "upstream_error" : reply.result.isError === true ? "tool_error" : "ok";
        return settle(reply);
      } catch (err) {
        if (err instanceof RpcError) throw err;
        if (err instanceof ProtocolError && err.code !== "invalid_request" && err.code !== "internal") {
          const e = rpcErrorOf(err, route.gatewayName);
          outcome = e.outcome;
          throw e.error;
        }
        if (ctx.signal.aborted) {
          outcome = "cancelled";
          throw new RpcError(ErrorCode.RequestTimeout, "cancelled by the client");
        }
        deps.log.error({ err, traceId: traceIdOf(span), sid: ctx.sid, gid: route.gid, method }, "upstream call failed");
        throw new RpcError(ErrorCode.InternalError, `gateway ${route.gatewayName}: the call failed; see the worker's log`, { gateway: route.gatewayName });
      }
    } catch (err) {
      failure = err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      deps.metrics.call(route.gatewayName, method, outcome, (performance.now() - started) / 1000);
      endSpan(span, failure);
      // no logger per call: the line is built only when debug logging is on
      if (deps.log.isLevelEnabled("debug")) deps.log.debug({ traceId: traceIdOf(span), sid: ctx.sid, gid: route.gid, method, outcome }, "call forwarded");
    }
  }

  const named = (ctx: RequestContext, routes: Map<string, Route>, name: string) => routes.get(name) ?? cache.passThrough(ctx.scope, name);
  const resource = (ctx: RequestContext, uri: string): Route | undefined => {
    const view = cache.view(ctx.scope);
    const route = routeResource(view, uri);
    if (route) return route;
    // a URI no catalog lists: the gateway whose resources are this session's own, else the endpoint's gateway
    const own = ownViews(ctx.record, "resources", ctx.scope, () => cache.gatewaysIn(ctx.scope))[0] ?? ctx.scope;
    return own === null ? undefined : cache.passThrough(own, uri);
  };

  /** Every page of `method` from this session's upstream session of `gid`. */
  async function upstreamList(ctx: RequestContext, gid: string, method: UpstreamMethod, key: string): Promise<Result[]> {
    const route = cache.passThrough(gid, "list");
    if (!route) return [];
    const items: Result[] = [];
    let cursor: string | undefined;
    for (let n = 0; n < 1000; n++) {
      const r = await forward(ctx, route, method, cursor ? { cursor } : {}, `${ctx.requestId}.${n}`);
      items.push(...((r[key] as Result[] | undefined) ?? []));
      cursor = typeof r.nextCursor === "string" ? r.nextCursor : undefined;
      if (!cursor) break;
    }
    return items;
  }

  /** `key` of the endpoint's view, with the lists this session has of its own from its upstream sessions. */
  async function sessionList(ctx: RequestContext, method: UpstreamMethod, key: "tools" | "prompts" | "resources" | "resourceTemplates", list: ViewList): Promise<Result[]> {
    const view = cache.view(ctx.scope);
    const own = ownViews(ctx.record, list, ctx.scope, () => cache.gatewaysIn(ctx.scope));
    if (own.length === 0) return view[key];
    const gidOf = (item: Result): string | undefined => {
      if (key === "tools") return view.toolRoutes.get(String(item.name))?.gid;
      if (key === "prompts") return view.promptRoutes.get(String(item.name))?.gid;
      if (key === "resources") return view.resourceRoutes.get(String(item.uri))?.gid;
      return view.templateRoutes.find((t) => t.uriTemplate === item.uriTemplate)?.route.gid;
    };
    const shared = view[key].filter((item) => !own.includes(gidOf(item) ?? ""));
    const mine = await Promise.all(
      own.map(async (gid) => {
        let items: Result[];
        try {
          items = await upstreamList(ctx, gid, method, key);
        } catch (err) {
          // a gateway that cannot list for this session now: its shared catalog stands in
          if (!(err instanceof RpcError)) throw err;
          deps.log.debug({ sid: ctx.sid, gid, method, err: err.message }, "session list from the shared catalog");
          return view[key].filter((item) => gidOf(item) === gid);
        }
        const name = cache.gatewayName(gid);
        // on `/mcp` names carry their gateway, as in the shared catalog
        return ctx.scope === null && (key === "tools" || key === "prompts") ? items.map((i) => ({ ...i, name: `${name}${sep}${String(i.name)}` })) : items;
      }),
    );
    return [...shared, ...mine.flat()];
  }

  const listMethod = (method: UpstreamMethod, schema: Method["schema"], key: "tools" | "prompts" | "resources" | "resourceTemplates"): Method => {
    const list = viewListOf(method)!;
    return {
      schema,
      readsViews: true,
      local: (ctx) => ownViews(ctx.record, list, ctx.scope, () => cache.gatewaysIn(ctx.scope)).length === 0,
      async handle(params: { cursor?: string } | undefined, ctx) {
        const { page: items, nextCursor } = page(await sessionList(ctx, method, key, list), params?.cursor);
        return { [key]: items, ...(nextCursor ? { nextCursor } : {}) };
      },
    };
  };

  /** On `/mcp` a task id names its gateway; elsewhere it is the upstream's own. */
  const taskRoute = (ctx: RequestContext, taskId: string): Route | undefined => cache.passThrough(ctx.scope, taskId);
  const federatedTask = (ctx: RequestContext, route: Route, result: Result): Result => (ctx.scope === null ? federatedTaskResult(route.gatewayName, sep, result) : result);
  const taskMethod = (method: UpstreamMethod, schema: Method["schema"]): Method => ({
    schema,
    async handle(params: { taskId: string }, ctx) {
      const route = taskRoute(ctx, params.taskId);
      if (!route) throw notFound(method, new RpcError(ErrorCode.InvalidParams, `unknown task: ${params.taskId}`));
      return federatedTask(ctx, route, await forward(ctx, route, method, { ...params, taskId: route.original }));
    },
  });

  const subscription = (method: "resources/subscribe" | "resources/unsubscribe", schema: Method["schema"]): Method => ({
    schema,
    readsViews: true,
    async handle(params: { uri: string }, ctx) {
      const route = resource(ctx, params.uri);
      if (!route) throw notFound(method, new RpcError(-32002, `resource not found: ${params.uri}`, { uri: params.uri }));
      const result = await forward(ctx, route, method, params);
      // kept in the client session, so an upstream session opened again subscribes again
      await deps.sessions.update(ctx.sid, (r) => withSubscription(r, route.gid, params.uri, method === "resources/subscribe"));
      return result;
    },
  });

  const table: Record<string, Method> = {
    ping: { schema: PingRequestSchema, local: () => true, handle: async () => ({}) },
    "tools/list": listMethod("tools/list", ListToolsRequestSchema, "tools"),
    "prompts/list": listMethod("prompts/list", ListPromptsRequestSchema, "prompts"),
    "resources/list": listMethod("resources/list", ListResourcesRequestSchema, "resources"),
    "resources/templates/list": listMethod("resources/templates/list", ListResourceTemplatesRequestSchema, "resourceTemplates"),
    "tools/call": {
      schema: CallToolRequestSchema,
      async handle(params: { name: string }, ctx) {
        const route = named(ctx, cache.view(ctx.scope).toolRoutes, params.name);
        if (!route) throw notFound("tools/call", new RpcError(ErrorCode.InvalidParams, `unknown tool: ${params.name}`));
        return federatedTask(ctx, route, await forward(ctx, route, "tools/call", { ...params, name: route.original }));
      },
    },
    "prompts/get": {
      schema: GetPromptRequestSchema,
      async handle(params: { name: string }, ctx) {
        const route = named(ctx, cache.view(ctx.scope).promptRoutes, params.name);
        if (!route) throw notFound("prompts/get", new RpcError(ErrorCode.InvalidParams, `unknown prompt: ${params.name}`));
        return forward(ctx, route, "prompts/get", { ...params, name: route.original });
      },
    },
    "resources/read": {
      schema: ReadResourceRequestSchema,
      readsViews: true,
      async handle(params: { uri: string }, ctx) {
        const route = resource(ctx, params.uri);
        if (!route) throw notFound("resources/read", new RpcError(-32002, `resource not found: ${params.uri}`, { uri: params.uri }));
        return forward(ctx, route, "resources/read", params);
      },
    },
    "completion/complete": {
      schema: CompleteRequestSchema,
      async handle(params: { ref: { type: string; name?: string; uri?: string } }, ctx) {
        const ref = params.ref;
        if (ref.type === "ref/prompt") {
          const route = named(ctx, cache.view(ctx.scope).promptRoutes, ref.name ?? "");
          if (!route) throw notFound("completion/complete", new RpcError(ErrorCode.InvalidParams, `unknown prompt: ${ref.name}`));
          return forward(ctx, route, "completion/complete", { ...params, ref: { ...ref, name: route.original } });
        }
        const route = routeTemplate(cache.view(ctx.scope), ref.uri ?? "") ?? (ctx.scope === null ? undefined : cache.passThrough(ctx.scope, ref.uri ?? ""));
        if (!route) throw notFound("completion/complete", new RpcError(ErrorCode.InvalidParams, `unknown resource template: ${ref.uri}`));
        return forward(ctx, route, "completion/complete", params);
      },
    },
    "logging/setLevel": {
      schema: SetLevelRequestSchema,
      local: () => true,
      async handle(params: { level: LoggingLevel }, ctx) {
        // recorded first: an upstream session that opens meanwhile reads it from the record
        await deps.sessions.update(ctx.sid, (r) => withLogLevel(r, params.level));
        deps.tellUpstreams(ctx.sid, { method: "logging/setLevel", params: { level: params.level } });
        return {};
      },
    },
    "resources/subscribe": subscription("resources/subscribe", SubscribeRequestSchema),
    "resources/unsubscribe": subscription("resources/unsubscribe", UnsubscribeRequestSchema),
    "tasks/get": taskMethod("tasks/get", GetTaskRequestSchema),
    "tasks/result": taskMethod("tasks/result", GetTaskPayloadRequestSchema),
    "tasks/cancel": taskMethod("tasks/cancel", CancelTaskRequestSchema),
    "tasks/list": {
      schema: ListTasksRequestSchema,
      async handle(params: Result | undefined, ctx) {
        if (ctx.scope === null) {
          // every gateway's tasks of this session, each id naming its gateway; one page
          const lists = await Promise.all(
            cache.gatewaysIn(null).map(async (gid) => {
              const route = cache.passThrough(gid, "tasks")!;
              try {
                const r = await forward(ctx, route, "tasks/list", {}, `${ctx.requestId}.${gid}`);
                return ((r.tasks as Result[] | undefined) ?? []).map((t) => federatedTaskResult(route.gatewayName, sep, t));
              } catch (err) {
                if (err instanceof RpcError) return [];
                throw err;
              }
            }),
          );
          return { tasks: lists.flat() };
        }
        const route = cache.passThrough(ctx.scope, "tasks");
        if (!route) throw new RpcError(ErrorCode.ConnectionClosed, "gateway unavailable");
        return forward(ctx, route, "tasks/list", params ?? {});
      },
    },
  };

  const parse = (request: JSONRPCRequest) => {
    const m = table[request.method];
    if (!m) throw new RpcError(ErrorCode.MethodNotFound, `Method not found: ${request.method.slice(0, 256)}`);
    const r = m.schema.safeParse(request);
    if (!r.success) throw new RpcError(ErrorCode.InvalidParams, `Invalid params for ${request.method}: ${r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}`);
    return { m, params: r.data.params };
  };

  return {
    readsViews: (request) => table[request.method]?.readsViews === true,
    isLocal(request, ctx) {
      const m = table[request.method];
      return !m || (m.local?.(ctx) ?? false);
    },
    async handle(request, ctx) {
      const { m, params } = parse(request);
      return m.handle(params, ctx);
    },
  };
}

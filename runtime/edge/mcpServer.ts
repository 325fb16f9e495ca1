import { performance } from "node:perf_hooks";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { SpanKind } from "@opentelemetry/api";
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  type JSONRPCMessage,
  type ServerNotification,
  type ServerRequest,
} from "@modelcontextprotocol/sdk/types.js";
import { InvalidCursorError, paginate, routeResource, routeTemplate, type CatalogView, type Route } from "../../actors/catalogView.ts";
import { ProtocolError } from "../../protocol/envelope.ts";
import type { UpstreamMethod } from "../../protocol/upstream.ts";
import type { Logger } from "../logger.ts";
import type { CallOutcome, Metrics } from "../metrics.ts";
import { endSpan, traceHeadersOf, traceIdOf, type Tracing } from "../tracing.ts";
import type { UpstreamCaller } from "../upstreamClient.ts";
import type { SessionLinks } from "./sessionLinks.ts";
import { wireKey } from "./sessionLinks.ts";

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

export type SessionContext = {
  sid: string;
  /** null: the federated endpoint; else the one gateway this session sees */
  gid: string | null;
  /** the downstream HTTP request's headers, for the gateways' passthrough lists */
  headers: Record<string, string>;
  view(): CatalogView;
  caller: UpstreamCaller;
  links: SessionLinks;
  /** the name this session's one gateway had when the request came (per-gateway endpoint) */
  gatewayName?: string;
  /** hands a message to the transport of this request's server (a cancellation from elsewhere) */
  deliver(m: JSONRPCMessage): void;
  pageSize: number;
  callTimeoutMs: number;
  log: Logger;
  metrics: Metrics;
  tracing: Tracing;
};

type Extra = RequestHandlerExtra<ServerRequest, ServerNotification>;

const CAPABILITIES = {
  tools: { listChanged: true },
  prompts: { listChanged: true },
  resources: { listChanged: true },
  completions: {},
  logging: {},
};

/**
 * The SDK server that answers one HTTP request of a downstream session. It holds no state
 * of its own: lists come from this worker's catalog view, calls go to the upstream session
 * actors over NATS, so any worker can answer any request of any session.
 */
export function sessionServer(ctx: SessionContext): Server {
  const server = new Server(ctx.gatewayName ? { ...SERVER_INFO, name: `mcpgw/${ctx.gatewayName}` } : SERVER_INFO, { capabilities: CAPABILITIES });

  const page = <T>(items: T[], cursor: string | undefined) => {
    try {
      return paginate(items, cursor, ctx.pageSize);
    } catch (err) {
      if (err instanceof InvalidCursorError) throw new RpcError(ErrorCode.InvalidParams, err.message);
      throw err;
    }
  };

  /** One page of a list of this session's view, under the list's own key. */
  const list = (key: "tools" | "prompts" | "resources" | "resourceTemplates", cursor: string | undefined) => {
    const { page: items, nextCursor } = page(ctx.view()[key], cursor);
    return { [key]: items, ...(nextCursor ? { nextCursor } : {}) } as never;
  };
  server.setRequestHandler(ListToolsRequestSchema, (req) => list("tools", req.params?.cursor));
  server.setRequestHandler(ListPromptsRequestSchema, (req) => list("prompts", req.params?.cursor));
  server.setRequestHandler(ListResourcesRequestSchema, (req) => list("resources", req.params?.cursor));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, (req) => list("resourceTemplates", req.params?.cursor));

  /** a request naming nothing this session can route: counted, and answered with `err` */
  const notFound = (method: UpstreamMethod, err: RpcError) => {
    ctx.metrics.unrouted(method);
    return err;
  };

  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const route = ctx.view().toolRoutes.get(req.params.name);
    if (!route) throw notFound("tools/call", new RpcError(ErrorCode.InvalidParams, `unknown tool: ${req.params.name}`));
    return forward(ctx, route, "tools/call", { ...req.params, name: route.original }, extra) as never;
  });
  server.setRequestHandler(GetPromptRequestSchema, async (req, extra) => {
    const route = ctx.view().promptRoutes.get(req.params.name);
    if (!route) throw notFound("prompts/get", new RpcError(ErrorCode.InvalidParams, `unknown prompt: ${req.params.name}`));
    return forward(ctx, route, "prompts/get", { ...req.params, name: route.original }, extra) as never;
  });
  server.setRequestHandler(ReadResourceRequestSchema, async (req, extra) => {
    const route = routeResource(ctx.view(), req.params.uri);
    if (!route) throw notFound("resources/read", new RpcError(-32002, `resource not found: ${req.params.uri}`, { uri: req.params.uri }));
    return forward(ctx, route, "resources/read", req.params, extra) as never;
  });
  server.setRequestHandler(CompleteRequestSchema, async (req, extra) => {
    const ref = req.params.ref;
    const view = ctx.view();
    if (ref.type === "ref/prompt") {
      const route = view.promptRoutes.get(ref.name);
      if (!route) throw notFound("completion/complete", new RpcError(ErrorCode.InvalidParams, `unknown prompt: ${ref.name}`));
      return forward(ctx, route, "completion/complete", { ...req.params, ref: { ...ref, name: route.original } }, extra) as never;
    }
    const route = routeTemplate(view, ref.uri);
    if (!route) throw notFound("completion/complete", new RpcError(ErrorCode.InvalidParams, `unknown resource template: ${ref.uri}`));
    return forward(ctx, route, "completion/complete", req.params, extra) as never;
  });
  return server;
}

const DROPPED_HEADERS = new Set(["authorization", "proxy-authorization", "cookie", "mcp-session-id"]);

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

async function forward(ctx: SessionContext, route: Route, method: UpstreamMethod, params: Record<string, unknown>, extra: Extra): Promise<Record<string, unknown>> {
  const started = performance.now();
  // a child of the client's trace context when it sent one (`traceparent`), else a new trace
  const span = ctx.tracing.startSpan(`edge ${method}`, { kind: SpanKind.SERVER, parent: ctx.headers, attributes: { "mcp.method.name": method, "mcpgw.gateway": route.gatewayName } });
  const log = ctx.log.child({ traceId: traceIdOf(span) });
  let outcome: CallOutcome = "error";
  let failure: string | undefined;
  try {
    if (!route.healthy) {
      outcome = "unavailable";
      throw new RpcError(ErrorCode.ConnectionClosed, `gateway ${route.gatewayName} unavailable (unhealthy)`, { gateway: route.gatewayName });
    }
    const requestId = wireKey(extra.requestId);
    const release = await ctx.links.addRequest(ctx.sid, requestId, {
      notify: (n) => extra.sendNotification(n),
      deliver: (m) => ctx.deliver(m),
    });
    try {
      const reply = await ctx.caller.call(ctx.sid, route.gid, { method, params, requestId, headers: ctx.headers, timeoutMs: ctx.callTimeoutMs }, extra.signal, traceHeadersOf(span));
      if ("rpcError" in reply) {
        outcome = "upstream_error";
        throw new RpcError(reply.rpcError.code, reply.rpcError.message, reply.rpcError.data);
      }
      outcome = reply.result.isError === true ? "tool_error" : "ok";
      return reply.result;
    } catch (err) {
      if (err instanceof RpcError) throw err;
      if (err instanceof ProtocolError && err.code === "timeout") {
        outcome = "timeout";
        throw new RpcError(ErrorCode.RequestTimeout, `gateway ${route.gatewayName} did not answer in time: ${err.message}`, { gateway: route.gatewayName });
      }
      if (err instanceof ProtocolError && err.code === "too_large") {
        outcome = "too_large";
        throw new RpcError(ErrorCode.InternalError, `gateway ${route.gatewayName}: ${err.message}`, { gateway: route.gatewayName });
      }
      if (err instanceof ProtocolError && (err.code === "unavailable" || err.code === "not_found")) {
        outcome = "unavailable";
        throw new RpcError(ErrorCode.ConnectionClosed, `gateway ${route.gatewayName} unavailable: ${err.message}`, { gateway: route.gatewayName });
      }
      if (extra.signal.aborted) {
        outcome = "cancelled";
        throw err;
      }
      log.error({ err, sid: ctx.sid, gid: route.gid, method }, "upstream call failed");
      throw new RpcError(ErrorCode.InternalError, `gateway ${route.gatewayName}: the call failed; see the worker's log`, { gateway: route.gatewayName });
    } finally {
      release();
    }
  } catch (err) {
    failure = err instanceof Error ? err.message : String(err);
    throw err;
  } finally {
    ctx.metrics.call(route.gatewayName, method, outcome, (performance.now() - started) / 1000);
    endSpan(span, failure);
    log.debug({ sid: ctx.sid, gid: route.gid, method, outcome }, "call forwarded");
  }
}

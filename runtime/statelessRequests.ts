// The stateless (2026-07-28) path of the edge, apart from its HTTP server: one POST body in,
// one JSON answer out, through the same dispatch table as session requests. No session is
// looked up or stored: the request's envelope and the client's credential say everything (see
// docs/REVISION-2026-07-28.md). The edge calls `answerStateless` for every POST that `eraOf`
// calls stateless, and writes what it returns.
import { randomUUID } from "node:crypto";
import { PartitionSchema, StatelessIdentity, statelessRecord } from "../actors/statelessIdentity.ts";
import { checkStatelessRequest, discoverResult, isRejection, listCacheHints, unsupportedVersion, type Rejection } from "../actors/statelessRequest.ts";
import type { DownstreamSession } from "../protocol/edge.ts";
import { ERROR_HTTP_STATUS, HEADER, isStatelessVersion, META, REMOVED_METHODS, RESULT_TYPE, REVISION_ERROR } from "../protocol/revision2026.ts";

type Result = Record<string, unknown>;
type JsonRpcRequest = { jsonrpc: "2.0"; id: string | number; method: string; params?: Result };

/**
 * What the dispatch table needs of one request (relay-edge's `RequestContext`, minus a stream:
 * answers here are JSON). `requestId` is fresh per request: many clients may share one sid and
 * reuse JSON-RPC ids.
 */
export type StatelessContext = { sid: string; record: DownstreamSession; scope: string | null; headers: Record<string, string>; requestId: string; signal: AbortSignal };

/** The edge's dispatch table: a result, or a thrown error with a JSON-RPC `code` that reaches the client as is. */
export type StatelessDispatch = (request: JsonRpcRequest, ctx: StatelessContext) => Promise<Result>;

export type StatelessDeps = {
  identity: StatelessIdentity;
  dispatch: StatelessDispatch;
  /** what the endpoint offers (the session handshake's capabilities) */
  capabilities(scope: string | null): Result;
  serverInfo(gatewayName: string | undefined): { name: string; version: string };
  /** how long a client may reuse a list (the revision's `ttlMs`) */
  listTtlMs: number;
  now(): Date;
};

export type StatelessAnswer = { status: number; body: Result | null };

/** Lists whose results get the revision's cache hints. */
const LISTS = new Set(["tools/list", "prompts/list", "resources/list", "resources/templates/list"]);

const errorAnswer = (id: string | number | null, r: Pick<Rejection, "code" | "message" | "data">): StatelessAnswer => ({
  status: ERROR_HTTP_STATUS[r.code] ?? 200,
  body: { jsonrpc: "2.0", id, error: { code: r.code, message: r.message, ...(r.data === undefined ? {} : { data: r.data }) } },
});

/**
 * Answers one stateless POST. `credential`: the client's bearer token ("" without client
 * auth), already authenticated; `owner`: its owner digest; `scope`: null for `/mcp`, else the
 * gateway id of `/gateways/<name>/mcp`. Never throws for anything the client sent.
 */
export async function answerStateless(
  deps: StatelessDeps,
  req: { body: unknown; headers: Record<string, string>; credential: string; owner: string; scope: string | null; gatewayName?: string; signal: AbortSignal },
): Promise<StatelessAnswer> {
  const body = req.body as Partial<JsonRpcRequest> | null;
  if (typeof body !== "object" || body === null || Array.isArray(body) || body.jsonrpc !== "2.0" || typeof body.method !== "string") {
    return errorAnswer(null, { code: REVISION_ERROR.invalidRequest, message: "the body must be one JSON-RPC request or notification (no batches)" });
  }
  if (!("id" in body)) {
    // the revision has no client notifications over HTTP (a closed stream cancels): acknowledged and dropped, as the SDK's server does
    const version = req.headers[HEADER.protocolVersion];
    return isStatelessVersion(version) ? { status: 202, body: null } : errorAnswer(null, unsupportedVersion(version ?? null));
  }
  const id = body.id!;
  if ((typeof id !== "string" && typeof id !== "number") || (typeof id === "string" && id.length > 120)) return errorAnswer(null, { code: REVISION_ERROR.invalidRequest, message: "the request id must be a string of at most 120 characters or a number" });
  const checked = checkStatelessRequest({ method: body.method, params: body.params }, req.headers);
  if (isRejection(checked)) return errorAnswer(id, checked);
  const partition = req.headers[HEADER.partition];
  if (partition !== undefined && !PartitionSchema.safeParse(partition).success) return errorAnswer(id, { code: REVISION_ERROR.invalidParams, message: `${HEADER.partition}: must be 1-64 of A-Z, a-z, 0-9, '.', '_' and '-'` });

  const method = body.method;
  if (method === "server/discover") {
    return { status: 200, body: { jsonrpc: "2.0", id, result: discoverResult({ capabilities: deps.capabilities(req.scope), serverInfo: deps.serverInfo(req.gatewayName), ttlMs: deps.listTtlMs }) } };
  }
  if ((REMOVED_METHODS as readonly string[]).includes(method) || method === "subscriptions/listen") {
    // listen needs a stream of its own: not served on this JSON-only path yet
    return errorAnswer(id, { code: REVISION_ERROR.methodNotFound, message: `Method not found: ${method}` });
  }
  const params = { ...(body.params ?? {}) } as Result;
  if (params.requestState !== undefined || params.inputResponses !== undefined) {
    // mcpgw hands out request state only with input_required answers, which this path does not give yet
    return errorAnswer(id, { code: REVISION_ERROR.invalidParams, message: "unknown requestState" });
  }
  // the envelope describes the client's hop to mcpgw; each upstream gets mcpgw's own
  const meta = { ...(params._meta as Result) };
  for (const key of [META.protocolVersion, META.clientCapabilities, META.clientInfo, META.logLevel]) delete meta[key];
  if (Object.keys(meta).length > 0) params._meta = meta;
  else delete params._meta;

  const sid = deps.identity.sessionKeyOf(req.credential, partition);
  const record = statelessRecord({ sid, owner: req.owner, scope: req.scope, envelope: checked.envelope, now: deps.now() });
  try {
    const result = await deps.dispatch({ jsonrpc: "2.0", id, method, params }, { sid, record, scope: req.scope, headers: req.headers, requestId: `st-${randomUUID()}`, signal: req.signal });
    const withHints = LISTS.has(method) ? { ...listCacheHints(deps.listTtlMs), ...result } : result;
    const out: Result = { resultType: RESULT_TYPE.complete, ...withHints };
    out._meta = { ...((result._meta as Result | undefined) ?? {}), [META.serverInfo]: deps.serverInfo(req.gatewayName) };
    return { status: 200, body: { jsonrpc: "2.0", id, result: out } };
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown; data?: unknown };
    if (typeof e.code === "number") return errorAnswer(id, { code: e.code, message: String(e.message ?? ""), data: e.data });
    return errorAnswer(id, { code: -32603, message: "internal error" });
  }
}

// The stateless (2026-07-28) path of the edge, apart from its HTTP server: one POST body in, one
// answer out, through the same dispatch table as session requests. No session is looked up or
// stored: the request's envelope and the client's credential say everything (see
// docs/REVISION-2026-07-28.md). The edge calls `answerStateless` for every POST that `eraOf`
// calls stateless and writes what it returns; what the upstream says before the answer
// (progress) goes to `out.notify`, which turns the answer into an SSE stream.
import { randomBytes, randomUUID } from "node:crypto";
import { answersOf, inputRequiredResult, triageServerRequests } from "../actors/inputRequired.ts";
import { PartitionSchema, relayCapabilities, StatelessIdentity, statelessRecord } from "../actors/statelessIdentity.ts";
import { checkStatelessRequest, discoverResult, isRejection, listCacheHints, unsupportedVersion, type Rejection } from "../actors/statelessRequest.ts";
import {
  ERROR_HTTP_STATUS,
  HEADER,
  isStatelessVersion,
  META,
  PendingCallStateSchema,
  REMOVED_METHODS,
  RESULT_TYPE,
  REVISION_ERROR,
  SubscriptionsListenParamsSchema,
  type PendingCallState,
} from "../protocol/revision2026.ts";
import type { ClientBoundMessage, StreamEvent, UpstreamAnswerRequest } from "../protocol/upstream.ts";
import { parseServerRequestId } from "../protocol/upstream.ts";
import type { RequestContext } from "./edge/clientMethods.ts";

type Result = Record<string, unknown>;
type JsonRpcRequest = { jsonrpc: "2.0"; id: string | number; method: string; params?: Result };
type CatalogList = "tools" | "prompts" | "resources";

/**
 * What the dispatch table needs of one request: the edge's own `RequestContext`. `requestId` is
 * fresh per request: many clients may share one sid and reuse JSON-RPC ids.
 */
export type StatelessContext = RequestContext;

/** The edge's dispatch table: a result, or a thrown error with a JSON-RPC `code` that reaches the client as is. */
export type StatelessDispatch = (request: JsonRpcRequest, ctx: StatelessContext) => Promise<Result>;

/** Stops following a stream. */
type Stop = () => void;

export type StatelessDeps = {
  identity: StatelessIdentity;
  dispatch: StatelessDispatch;
  /** what the endpoint offers (the session handshake's capabilities) */
  capabilities(scope: string | null): Result;
  serverInfo(gatewayName: string | undefined): { name: string; version: string };
  /** how long a client may reuse a list (the revision's `ttlMs`) */
  listTtlMs: number;
  now(): Date;
  /** the per-call timeout: how long a repeated call waits for its answer */
  callTimeoutMs: number;
  /** follows the live events of a stream of `sid` on this worker; resolves once nothing published after it can be missed */
  follow(sid: string, streamId: string, onEvent: (e: StreamEvent) => void): Promise<Stop>;
  /** the stored events of a stream after `afterUid` (from the stream log, at any worker), then its live ones */
  replay(sid: string, streamId: string, afterUid: string, onEvent: (e: StreamEvent) => void): Promise<Stop>;
  /** a client's answer to a request of the upstream session (sid, gid): false when nothing there waits for it */
  answer(sid: string, gid: string, answer: UpstreamAnswerRequest): Promise<boolean>;
  /** tells the upstream session (sid, gid) that the client gave up call `requestId` */
  cancel(sid: string, gid: string, requestId: string): void;
  /** a call's final answer as a stream event, as the client gets it: its result, or a thrown RpcError */
  settleEvent(event: Extract<StreamEvent, { reply: unknown }>, scope: string | null): Result;
  /** the events an upstream session of `sid` sends outside any call (`resources/updated`, ...); resolves once none can be missed */
  followSessionNotices(sid: string, onEvent: (e: StreamEvent) => void): Promise<Stop>;
  /** calls `listener` with the lists of `scope`'s catalog that change from now on */
  onCatalogChange(scope: string | null, listener: (lists: CatalogList[]) => void): Stop;
  /** aborted when the worker stops: held `subscriptions/listen` streams end gracefully */
  closing: AbortSignal;
};

/** Where an answer's notifications go: the first one turns the answer into an SSE stream (no event ids: the revision does not resume). */
export type StatelessOutput = { notify(message: Result): void };

export type StatelessAnswer = { status: number; body: Result | null };

/** Lists whose results get the revision's cache hints. */
const LISTS = new Set(["tools/list", "prompts/list", "resources/list", "resources/templates/list"]);
/** Requests that go to an upstream session: their progress and the upstream's requests come on the call's stream. */
const FORWARDED = new Set(["tools/call", "prompts/get", "resources/read", "completion/complete"]);
/** Requests the revision lets answer `input_required` (the Python client drives the rounds for these). */
const MAY_REQUIRE_INPUT = new Set(["tools/call", "prompts/get", "resources/read"]);
const LIST_CHANGED: Record<CatalogList, string> = { tools: "notifications/tools/list_changed", prompts: "notifications/prompts/list_changed", resources: "notifications/resources/list_changed" };

const NO_STREAM: StatelessOutput = { notify: () => {} };

const errorAnswer = (id: string | number | null, r: Pick<Rejection, "code" | "message" | "data">): StatelessAnswer => ({
  status: ERROR_HTTP_STATUS[r.code] ?? 200,
  body: { jsonrpc: "2.0", id, error: { code: r.code, message: r.message, ...(r.data === undefined ? {} : { data: r.data }) } },
});

const staleState = (id: string | number) =>
  errorAnswer(id, { code: REVISION_ERROR.invalidParams, message: "requestState is not one this client was given, or its call is no longer waiting for these answers" });

/**
 * Answers one stateless POST. `credential`: the client's bearer token ("" without client
 * auth), already authenticated; `owner`: its owner digest; `scope`: null for `/mcp`, else the
 * gateway id of `/gateways/<name>/mcp`. Never throws for anything the client sent.
 */
export async function answerStateless(
  deps: StatelessDeps,
  req: { body: unknown; headers: Record<string, string>; credential: string; owner: string; scope: string | null; gatewayName?: string; signal: AbortSignal },
  out: StatelessOutput = NO_STREAM,
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
  const serverInfo = deps.serverInfo(req.gatewayName);
  if (method === "server/discover") {
    return { status: 200, body: { jsonrpc: "2.0", id, result: discoverResult({ capabilities: deps.capabilities(req.scope), serverInfo, ttlMs: deps.listTtlMs }) } };
  }
  if ((REMOVED_METHODS as readonly string[]).includes(method)) return errorAnswer(id, { code: REVISION_ERROR.methodNotFound, message: `Method not found: ${method}` });
  const declared = checked.envelope[META.clientCapabilities];
  const sid = deps.identity.sessionKeyOf(req.credential, partition, declared);
  const record = statelessRecord({ sid, owner: req.owner, scope: req.scope, envelope: checked.envelope, now: deps.now() });
  const contextOf = (signal: AbortSignal): StatelessContext => ({ sid, record, scope: req.scope, headers: req.headers, requestId: `st-${randomUUID()}`, signal, spawnCapabilities: relayCapabilities(declared) });
  if (method === "subscriptions/listen") return listen(deps, id, body.params, { ...req, contextOf }, out);

  const { requestState, inputResponses, ...params } = { ...(body.params ?? {}) } as Result;
  // the envelope describes the client's hop to mcpgw; each upstream gets mcpgw's own
  const meta = { ...(params._meta as Result) };
  for (const key of [META.protocolVersion, META.clientCapabilities, META.clientInfo, META.logLevel]) delete meta[key];
  if (Object.keys(meta).length > 0) params._meta = meta;
  else delete params._meta;

  const complete = (result: Result): StatelessAnswer => {
    const withHints = LISTS.has(method) ? { ...listCacheHints(deps.listTtlMs), ...result } : result;
    const out: Result = { resultType: RESULT_TYPE.complete, ...withHints };
    out._meta = { ...((result._meta as Result | undefined) ?? {}), [META.serverInfo]: serverInfo };
    return { status: 200, body: { jsonrpc: "2.0", id, result: out } };
  };
  const failed = (err: unknown): StatelessAnswer => {
    const e = (err ?? {}) as { code?: unknown; message?: unknown; data?: unknown };
    if (typeof e.code === "number") return errorAnswer(id, { code: e.code, message: String(e.message ?? ""), data: e.data });
    return errorAnswer(id, { code: -32603, message: "internal error" });
  };
  const inputRequired = (round: InputRound): StatelessAnswer => {
    const payload: PendingCallState = { call: round.requestId, stream: round.streamId, after: round.after, ids: round.ask.map((r) => r.id!) };
    const sealed = deps.identity.sealState({ sid, gid: round.gid, payload });
    return { status: 200, body: { jsonrpc: "2.0", id, result: { ...inputRequiredResult(round.ask, sealed), _meta: { [META.serverInfo]: serverInfo } } } };
  };

  if (requestState !== undefined || inputResponses !== undefined) {
    // the client's answers to an earlier input_required: they go to the call still waiting upstream
    if (!MAY_REQUIRE_INPUT.has(method) || typeof requestState !== "string") return staleState(id);
    const opened = deps.identity.openState(sid, requestState);
    const state = PendingCallStateSchema.safeParse(opened?.payload);
    if (!opened || !state.success) return staleState(id);
    const answers = answersOf(inputResponses, state.data, opened.gid);
    if ("code" in answers) return errorAnswer(id, answers);
    for (const a of answers.answers) {
      let taken: boolean;
      try {
        taken = await deps.answer(sid, opened.gid, a);
      } catch {
        // the upstream session did not confirm in time: the outcome is unknown
        return errorAnswer(id, { code: -32001, message: "the answers could not be delivered to the waiting call in time" });
      }
      if (!taken) return staleState(id);
    }
    const end = await followCall(deps, { sid, gid: opened.gid, streamId: state.data.stream, requestId: state.data.call, capabilities: declared, canAsk: true, out }, req.signal, (onEvent) =>
      deps.replay(sid, state.data.stream, state.data.after, onEvent),
    );
    if (end.kind === "input") return inputRequired(end);
    if (end.kind === "gone") {
      deps.cancel(sid, opened.gid, state.data.call);
      return errorAnswer(id, { code: -32001, message: "cancelled by the client" });
    }
    if (end.kind === "timeout") return errorAnswer(id, { code: -32001, message: `the call did not answer within ${deps.callTimeoutMs} ms` });
    if (end.kind !== "event") return failed(end.kind === "error" ? end.err : undefined);
    try {
      return complete(deps.settleEvent(end.event, req.scope));
    } catch (err) {
      return failed(err);
    }
  }

  const ctx = contextOf(req.signal);
  if (!FORWARDED.has(method)) {
    try {
      return complete(await deps.dispatch({ jsonrpc: "2.0", id, method, params }, ctx));
    } catch (err) {
      return failed(err);
    }
  }
  // a forwarded request: its stream carries the upstream's progress and requests while the answer comes as the call's reply
  const streamId = randomBytes(12).toString("base64url");
  const call = new AbortController();
  const end = await followCall(
    deps,
    { sid, streamId, requestId: ctx.requestId, capabilities: declared, canAsk: MAY_REQUIRE_INPUT.has(method), out },
    req.signal,
    async (onEvent, settle) => {
      const stop = await deps.follow(sid, streamId, onEvent);
      deps.dispatch({ jsonrpc: "2.0", id, method, params }, { ...ctx, streamId, signal: call.signal }).then(
        (result) => settle({ kind: "result", result }),
        (err: unknown) => settle({ kind: "error", err }),
      );
      return stop;
    },
  );
  // the call goes on upstream after an input_required (the client's repeated request meets it); else it ends with the client
  if (end.kind === "input") return inputRequired(end);
  if (end.kind === "gone") call.abort(req.signal.reason ?? "the client closed the request");
  if (end.kind === "result") return complete(end.result);
  if (end.kind === "error") return failed(end.err);
  return errorAnswer(id, { code: -32001, message: "cancelled by the client" });
}

type InputRound = { kind: "input"; gid: string; streamId: string; requestId: string; after: string; ask: ClientBoundMessage[] };
type CallEnd =
  | InputRound
  | { kind: "result"; result: Result }
  | { kind: "error"; err: unknown }
  | { kind: "event"; event: Extract<StreamEvent, { reply: unknown }> }
  | { kind: "gone" }
  | { kind: "timeout" };

/**
 * Follows one call's stream until it ends for this request: its answer, a request of the
 * upstream the client must answer (`input`), the client gone, or (a repeated call, which waits
 * only on the stream) the call timeout. Progress goes to `out` as it comes; an upstream's
 * request the client did not declare the capability for is refused at once (method not found).
 */
async function followCall(
  deps: StatelessDeps,
  o: { sid: string; gid?: string; streamId: string; requestId: string; capabilities: Result; canAsk: boolean; out: StatelessOutput },
  signal: AbortSignal,
  start: (onEvent: (e: StreamEvent) => void, settle: (end: CallEnd) => void) => Promise<Stop>,
): Promise<CallEnd> {
  let settle!: (end: CallEnd) => void;
  const ended = new Promise<CallEnd>((resolve) => (settle = resolve));
  const onEvent = (event: StreamEvent) => {
    if (!("message" in event)) {
      // a repeated call has no reply of its own: the answer the actor keeps on the stream is it
      if (o.gid !== undefined && event.requestId === o.requestId) settle({ kind: "event", event });
      return;
    }
    const m = event.message;
    if (m.id === undefined) {
      if (m.method === "notifications/progress") o.out.notify(m);
      return;
    }
    const gid = parseServerRequestId(m.id)?.gid;
    if (gid === undefined) return;
    const { ask, refuse } = triageServerRequests([m], o.canAsk ? o.capabilities : {});
    for (const a of refuse) void deps.answer(o.sid, gid, a);
    if (ask.length > 0) settle({ kind: "input", gid, streamId: o.streamId, requestId: o.requestId, after: event.uid, ask });
  };
  const gone = () => settle({ kind: "gone" });
  signal.addEventListener("abort", gone, { once: true });
  const timer = o.gid === undefined ? undefined : setTimeout(() => settle({ kind: "timeout" }), deps.callTimeoutMs);
  let stop: Stop | undefined;
  try {
    if (signal.aborted) return { kind: "gone" };
    stop = await start(onEvent, settle);
    return await ended;
  } catch (err) {
    return { kind: "error", err };
  } finally {
    signal.removeEventListener("abort", gone);
    clearTimeout(timer);
    stop?.();
  }
}

/**
 * `subscriptions/listen`: a held stream. Its first event acknowledges what mcpgw honours: the
 * catalog's list changes of this endpoint (from discovery, as every worker's catalog cache sees
 * them), and the resources the credential's upstream sessions subscribed to (a URI no gateway
 * serves, or whose upstream refuses, is left out). Each event carries the listen request's id;
 * the stream ends when the client closes it, or gracefully (the listen result) when the worker
 * stops. The upstream subscriptions stay with the upstream session (another listen stream of
 * the credential may rely on them) and end with it.
 */
async function listen(
  deps: StatelessDeps,
  id: string | number,
  params: unknown,
  req: { scope: string | null; signal: AbortSignal; contextOf(signal: AbortSignal): StatelessContext },
  out: StatelessOutput,
): Promise<StatelessAnswer> {
  const parsed = SubscriptionsListenParamsSchema.safeParse(params);
  if (!parsed.success) return errorAnswer(id, { code: REVISION_ERROR.invalidParams, message: `Invalid params for subscriptions/listen: ${parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}` });
  const asked = parsed.data.notifications;
  const honoured: Record<CatalogList, boolean> = { tools: asked.toolsListChanged === true, prompts: asked.promptsListChanged === true, resources: asked.resourcesListChanged === true };
  const meta = { [META.subscriptionId]: id };
  const filter: Result = Object.fromEntries((Object.keys(honoured) as CatalogList[]).filter((l) => honoured[l]).map((l) => [`${l}ListChanged`, true]));
  let uris: string[] = [];
  const wanted = [...new Set(asked.resourceSubscriptions ?? [])];
  // followed before subscribing, so no update after a subscription is missed; one under a subscribed URI counts (the revision allows sub-resources)
  const stopUpdates = wanted.length === 0
    ? () => {}
    : await deps.followSessionNotices(req.contextOf(req.signal).sid, (event) => {
        if (!("message" in event) || event.message.method !== "notifications/resources/updated") return;
        const uri = event.message.params?.uri;
        if (typeof uri === "string" && uris.some((u) => uri === u || uri.startsWith(u))) out.notify({ ...event.message, params: { ...event.message.params, _meta: meta } });
      });
  const subscribed = await Promise.all(
    wanted.map((uri) =>
      deps.dispatch({ jsonrpc: "2.0", id, method: "resources/subscribe", params: { uri } }, req.contextOf(req.signal)).then(
        () => uri,
        () => null,
      ),
    ),
  );
  uris = subscribed.filter((u): u is string => u !== null);
  if (uris.length > 0) filter.resourceSubscriptions = uris;
  const stopChanges = deps.onCatalogChange(req.scope, (lists) => {
    for (const l of lists) if (honoured[l]) out.notify({ jsonrpc: "2.0", method: LIST_CHANGED[l], params: { _meta: meta } });
  });
  const stop = () => {
    stopChanges();
    stopUpdates();
  };
  let end = () => {};
  try {
    out.notify({ jsonrpc: "2.0", method: "notifications/subscriptions/acknowledged", params: { notifications: filter, _meta: meta } });
    await new Promise<void>((resolve) => {
      end = resolve;
      if (req.signal.aborted || deps.closing.aborted) return resolve();
      req.signal.addEventListener("abort", end);
      deps.closing.addEventListener("abort", end);
    });
  } finally {
    req.signal.removeEventListener("abort", end);
    deps.closing.removeEventListener("abort", end);
    stop();
  }
  return { status: 200, body: { jsonrpc: "2.0", id, result: { _meta: meta } } };
}

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { StatelessIdentity } from "../actors/statelessIdentity.ts";
import { META } from "../protocol/revision2026.ts";
import { serverRequestId, type StreamEvent } from "../protocol/upstream.ts";
import { answerStateless, type StatelessContext, type StatelessDeps } from "../runtime/statelessRequests.ts";

const identity = new StatelessIdentity(randomBytes(32).toString("hex"));
const seen: Array<{ request: { method: string; params?: Record<string, unknown> }; ctx: StatelessContext }> = [];
const deps: StatelessDeps = {
  identity,
  dispatch: async (request, ctx) => {
    seen.push({ request, ctx });
    if (request.method === "tools/call" && request.params?.name === "missing") throw Object.assign(new Error("Unknown tool: missing"), { code: -32602 });
    if (request.method === "tools/call" && request.params?.name === "crash") throw new Error("secret internals");
    if (request.method === "tools/list") return { tools: [{ name: "echo", inputSchema: { type: "object" } }] };
    return { content: [{ type: "text", text: "ok" }] };
  },
  capabilities: () => ({ tools: { listChanged: true }, tasks: {} }),
  serverInfo: (g) => ({ name: g ? `mcpgw/${g}` : "mcpgw", version: "0.1.0" }),
  listTtlMs: 30_000,
  now: () => new Date(0),
  callTimeoutMs: 5_000,
  follow: async () => () => {},
  replay: async () => () => {},
  answer: async () => false,
  cancel: () => {},
  settleEvent: () => ({}),
  followSessionNotices: async () => () => {},
  onCatalogChange: () => () => {},
  closing: new AbortController().signal,
};
const envelope = { [META.protocolVersion]: "2026-07-28", [META.clientCapabilities]: { elicitation: {} }, [META.clientInfo]: { name: "py", version: "2.3.0" } };
const headersFor = (method: string, extra: Record<string, string> = {}) => ({ "mcp-protocol-version": "2026-07-28", "mcp-method": method, ...extra });
const ask = (body: unknown, headers: Record<string, string>, credential = "token-a") =>
  answerStateless(deps, { body, headers, credential, owner: "a".repeat(64), scope: null, signal: AbortSignal.timeout(5_000) });

describe("the edge's stateless path (answerStateless), with a fake dispatch table", () => {
  it("answers server/discover itself", async () => {
    const r = await ask({ jsonrpc: "2.0", id: 1, method: "server/discover", params: { _meta: envelope } }, headersFor("server/discover"));
    assert.equal(r.status, 200);
    const result = (r.body as { result: Record<string, unknown> }).result;
    assert.deepEqual(result.supportedVersions, ["2026-07-28"]);
    assert.deepEqual(result.capabilities, { tools: { listChanged: true } });
  });

  it("dispatches a list under the credential's key, with the revision's hints, and keeps the envelope from upstreams", async () => {
    seen.length = 0;
    const r = await ask({ jsonrpc: "2.0", id: 2, method: "tools/list", params: { _meta: { ...envelope, progressToken: 7 } } }, headersFor("tools/list"));
    assert.equal(r.status, 200);
    const result = (r.body as { result: Record<string, unknown> }).result;
    assert.equal(result.ttlMs, 30_000);
    assert.equal(result.cacheScope, "private");
    assert.equal(result.resultType, "complete");
    assert.deepEqual(result._meta, { [META.serverInfo]: { name: "mcpgw", version: "0.1.0" } });
    const { request, ctx } = seen[0]!;
    assert.equal(ctx.sid, identity.sessionKeyOf("token-a", undefined, { elicitation: {} }));
    assert.deepEqual(ctx.record.capabilities, { elicitation: {} });
    assert.deepEqual(request.params?._meta, { progressToken: 7 }, "only the client's own _meta travels on");
  });

  it("keys two credentials, and a partition, apart; fresh request ids per request", async () => {
    seen.length = 0;
    const call = { jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "echo", _meta: envelope } };
    await ask(call, headersFor("tools/call", { "mcp-name": "echo" }), "token-a");
    await ask(call, headersFor("tools/call", { "mcp-name": "echo" }), "token-b");
    await ask(call, headersFor("tools/call", { "mcp-name": "echo", "mcpgw-partition": "agent-2" }), "token-a");
    await ask(call, headersFor("tools/call", { "mcp-name": "echo" }), "token-a");
    const sids = seen.map((s) => s.ctx.sid);
    assert.equal(new Set(sids.slice(0, 3)).size, 3);
    assert.equal(sids[3], sids[0]);
    assert.equal(new Set(seen.map((s) => s.ctx.requestId)).size, 4, "one JSON-RPC id reused by a client is four requests");
  });

  it("refuses what the revision refuses, changing nothing, with its status", async () => {
    seen.length = 0;
    const cases: Array<[unknown, Record<string, string>, number, number]> = [
      [[{ jsonrpc: "2.0", id: 1, method: "tools/list" }], headersFor("tools/list"), 400, -32600],
      [{ jsonrpc: "2.0", id: 1, method: "tools/list", params: {} }, headersFor("tools/list"), 400, -32602],
      [{ jsonrpc: "2.0", id: 1, method: "tools/list", params: { _meta: envelope } }, headersFor("prompts/list"), 400, -32020],
      [{ jsonrpc: "2.0", id: 1, method: "tools/list", params: { _meta: { ...envelope, [META.protocolVersion]: "2099-01-01" } } }, { ...headersFor("tools/list"), "mcp-protocol-version": "2099-01-01" }, 400, -32022],
      [{ jsonrpc: "2.0", id: 1, method: "initialize", params: { _meta: envelope } }, headersFor("initialize"), 404, -32601],
      [{ jsonrpc: "2.0", id: 1, method: "logging/setLevel", params: { level: "info", _meta: envelope } }, headersFor("logging/setLevel"), 404, -32601],
      [{ jsonrpc: "2.0", id: 1, method: "tools/list", params: { _meta: envelope } }, headersFor("tools/list", { "mcpgw-partition": "no spaces" }), 400, -32602],
      [{ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "echo", requestState: "forged", _meta: envelope } }, headersFor("tools/call", { "mcp-name": "echo" }), 400, -32602],
    ];
    for (const [body, headers, status, code] of cases) {
      const r = await ask(body, headers);
      assert.equal(r.status, status, JSON.stringify(body));
      assert.equal((r.body as { error: { code: number } }).error.code, code, JSON.stringify(r.body));
    }
    assert.equal(seen.length, 0, "nothing refused reached the dispatch table");
  });

  it("passes the dispatch table's JSON-RPC errors through and hides anything else", async () => {
    const missing = await ask({ jsonrpc: "2.0", id: 4, method: "tools/call", params: { name: "missing", _meta: envelope } }, headersFor("tools/call", { "mcp-name": "missing" }));
    assert.deepEqual((missing.body as { error: unknown }).error, { code: -32602, message: "Unknown tool: missing" });
    const crash = await ask({ jsonrpc: "2.0", id: 5, method: "tools/call", params: { name: "crash", _meta: envelope } }, headersFor("tools/call", { "mcp-name": "crash" }));
    assert.equal(crash.status, 200);
    assert.doesNotMatch(JSON.stringify(crash.body), /secret internals/);
  });

  it("acknowledges a notification at a served version and tells an unserved one", async () => {
    assert.deepEqual(await ask({ jsonrpc: "2.0", method: "notifications/cancelled", params: {} }, headersFor("notifications/cancelled")), { status: 202, body: null });
    const r = await ask({ jsonrpc: "2.0", method: "notifications/cancelled" }, { "mcp-protocol-version": "2099-01-01" });
    assert.equal(r.status, 400);
  });
});

describe("a forwarded stateless request while its call runs: progress, the upstream's requests, the client leaving", () => {
  const GID = "0123456789abcdef";
  const caps = { elicitation: {} };
  const callBody = (extra: Record<string, unknown> = {}) => ({ jsonrpc: "2.0", id: 9, method: "tools/call", params: { name: "echo", ...extra, _meta: { ...envelope, [META.clientCapabilities]: caps } } });
  const message = (uid: string, m: Record<string, unknown>): StreamEvent => ({ uid, gid: GID, message: { jsonrpc: "2.0", ...m } as never });

  /** A dispatch that never answers by itself, a stream the test writes to, and what reached the upstream session. */
  function harness(answerTaken = true) {
    const h = {
      onEvent: undefined as ((e: StreamEvent) => void) | undefined,
      callSignal: undefined as AbortSignal | undefined,
      answered: [] as unknown[],
      notified: [] as unknown[],
      deps: undefined as unknown as StatelessDeps,
    };
    h.deps = {
      ...deps,
      dispatch: (_request, ctx) => {
        h.callSignal = ctx.signal;
        return new Promise(() => {});
      },
      follow: async (_sid, _stream, onEvent) => {
        h.onEvent = onEvent;
        return () => (h.onEvent = undefined);
      },
      replay: async (_sid, _stream, _after, onEvent) => {
        h.onEvent = onEvent;
        return () => (h.onEvent = undefined);
      },
      answer: async (_sid, gid, a) => {
        h.answered.push({ gid, ...a });
        return answerTaken;
      },
      settleEvent: (event) => ({ content: [{ type: "text", text: JSON.stringify(event.reply) }] }),
    };
    return h;
  }
  const until = async (what: () => boolean) => {
    for (let i = 0; i < 1000 && !what(); i++) await new Promise((r) => setImmediate(r));
    assert.ok(what());
  };
  const send = (h: ReturnType<typeof harness>, body: unknown, signal: AbortSignal) =>
    answerStateless(h.deps, { body, headers: headersFor("tools/call", { "mcp-name": "echo" }), credential: "token-a", owner: "a".repeat(64), scope: null, signal }, { notify: (m) => h.notified.push(m) });

  it("streams progress, refuses what the request did not declare, answers input_required for what it did; the call outlives the request then", async () => {
    const h = harness();
    const client = new AbortController();
    const pending = send(h, callBody(), client.signal);
    await until(() => h.onEvent !== undefined && h.callSignal !== undefined);
    h.onEvent!(message("n-1", { method: "notifications/progress", params: { progressToken: 1, progress: 1 } }));
    h.onEvent!(message("n-2", { id: serverRequestId(GID, "n", 2), method: "sampling/createMessage", params: {} }));
    h.onEvent!(message("n-3", { id: serverRequestId(GID, "n", 3), method: "elicitation/create", params: { message: "name?" } }));
    const r = await pending;
    assert.equal(h.notified.length, 1, "the progress notice went out before the answer");
    assert.deepEqual(h.answered, [{ gid: GID, id: serverRequestId(GID, "n", 2), error: { code: -32601, message: "the client did not declare the capability for sampling/createMessage" } }]);
    const result = (r.body as { result: { resultType: string; inputRequests: Record<string, unknown>; requestState: string } }).result;
    assert.equal(result.resultType, "input_required");
    assert.deepEqual(Object.keys(result.inputRequests), [serverRequestId(GID, "n", 3)]);
    const state = identity.openState(identity.sessionKeyOf("token-a", undefined, caps), result.requestState);
    assert.equal(state?.gid, GID);
    assert.equal((state?.payload as { after: string }).after, "n-3", "the next round reads on after the request it asked");
    client.abort();
    assert.equal(h.callSignal!.aborted, false, "the call waits upstream for the client's answers");

    // the repeated request: the answer goes to the actor, the call's answer comes from its stream
    const again = harness();
    const repeated = send(again, callBody({ requestState: result.requestState, inputResponses: { [serverRequestId(GID, "n", 3)]: { action: "accept", content: { name: "ada" } } } }), new AbortController().signal);
    await until(() => again.onEvent !== undefined);
    assert.deepEqual(again.answered, [{ gid: GID, id: serverRequestId(GID, "n", 3), result: { action: "accept", content: { name: "ada" } } }]);
    again.onEvent!({ uid: "n-4", gid: GID, requestId: "someone-else", reply: { ok: true, data: { result: { wrong: true } } } });
    again.onEvent!({ uid: "n-5", gid: GID, requestId: (state!.payload as { call: string }).call, reply: { ok: true, data: { result: {} } } });
    const done = (await repeated).body as { result: { resultType: string; content: unknown } };
    assert.equal(done.result.resultType, "complete");
    assert.doesNotMatch(JSON.stringify(done.result.content), /wrong/);

    // once no actor waits for those answers, the same state is refused
    const stale = harness(false);
    const replayed = await send(stale, callBody({ requestState: result.requestState, inputResponses: { [serverRequestId(GID, "n", 3)]: { action: "accept" } } }), new AbortController().signal);
    assert.deepEqual([replayed.status, (replayed.body as { error: { code: number } }).error.code], [400, -32602]);
    assert.equal(stale.onEvent, undefined, "nothing followed");
  });

  it("a client that leaves before anything is asked of it cancels its call", async () => {
    const h = harness();
    const client = new AbortController();
    const pending = send(h, callBody(), client.signal);
    await until(() => h.callSignal !== undefined);
    client.abort();
    await pending;
    assert.equal(h.callSignal!.aborted, true);
    assert.equal(h.onEvent, undefined, "its stream is no longer followed");
  });
});

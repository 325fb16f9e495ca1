// The edge's side of the relay against real workers and a real nats-server: SSE streams with
// event ids, stream events (as the upstream session actors publish them, on the contract's
// subjects) reaching the stream they name, resumption at another worker from the stream log,
// a client's answer to a server request routed to the actor that asked, and what a client
// says to all of its upstream sessions (log level, roots).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CreateMessageRequestSchema, LoggingMessageNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { DownstreamSessionSchema, sessionKey } from "../protocol/edge.ts";
import { KEYS, STREAM_GET, subjects } from "../protocol/subjects.ts";
import { serverRequestId, SessionWideMessageSchema, UpstreamAnswerRequestSchema, type StreamEvent } from "../protocol/upstream.ts";
import { decodeJson, encodeJson } from "../runtime/bus.ts";
import { publishStreamEvent } from "../runtime/streamLog.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { INIT, putCatalog, raw, soleAnswer, sseEvents, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const BOUND_MS = 20_000;

describe("edge streams: SSE ids, stream events, resumption at any worker, session-wide messages", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let a: TestWorker;
  let b: TestWorker;
  let gid: string;
  let path: string;

  const open = async (w: TestWorker) => {
    const init = await raw(w.edge.port, { path, body: INIT });
    assert.equal(init.status, 200, init.body);
    const id = String(init.headers["mcp-session-id"]);
    return { id, sid: sessionKey(id), headers: { "mcp-session-id": id, "mcp-protocol-version": "2025-06-18" } };
  };

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    a = await startTestWorker(nats, { MCPGW_WORKER_ID: "streams-a" });
    b = await startTestWorker(nats, { MCPGW_WORKER_ID: "streams-b" });
    gid = (await a.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("counter") })).id;
    await putCatalog(a, gid, { tools: [{ name: "echo", inputSchema: { type: "object" } }], resources: [{ uri: "fixture://info", name: "info" }] });
    path = "/gateways/counter/mcp";
    await until("both edges see the gateway", () => a.edge.cache.gatewayByName("counter") !== undefined && b.edge.cache.gatewayByName("counter") !== undefined, BOUND_MS);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("answers a call as JSON in one response when its answer comes first; as an SSE stream that starts with a priming event, every event with an id <streamId>.<uid>, when something comes before it (in process or across NATS alike); a list as plain JSON", async () => {
    const { headers } = await open(a);
    const body = (id: number, name: string, args: Record<string, unknown>, meta?: Record<string, unknown>) =>
      JSON.stringify({ jsonrpc: "2.0", id, method: "tools/call", params: { name, arguments: args, ...(meta ? { _meta: meta } : {}) } });
    // the first call places the session's actor at A (its edge)
    assert.match((await raw(a.edge.port, { path, headers, body: body(6, "echo", { text: "placed" }) })).body, /placed/);

    // in process, nothing before the answer: JSON, its length given (streamed only if slower than the priming delay)
    const call = await soleAnswer(a.edge.port, { path, headers, body: body(7, "echo", { text: "hi" }) });
    assert.equal(call.headers["mcp-session-id"], headers["mcp-session-id"]);
    assert.deepEqual(call.message, { jsonrpc: "2.0", id: 7, result: { content: [{ type: "text", text: "hi" }] } });

    const streamed = (r: Awaited<ReturnType<typeof raw>>) => {
      assert.equal(r.status, 200);
      assert.match(String(r.headers["content-type"]), /^text\/event-stream/);
      const [priming, ...rest] = sseEvents(r.body);
      assert.match(priming!.id!, /^[A-Za-z0-9_-]+\.0$/);
      assert.equal(priming!.data.trim(), "");
      const streamId = priming!.id!.split(".")[0];
      for (const e of rest) assert.equal(e.id!.split(".")[0], streamId);
      return rest.map((e) => JSON.parse(e.data) as { id?: number; method?: string; result?: unknown });
    };
    // progress before the answer: the stream starts with its priming event
    const progress = streamed(await raw(a.edge.port, { path, headers, body: body(12, "progress", { steps: 2 }, { progressToken: "p" }) }));
    assert.deepEqual(progress.map((m) => m.method ?? m.id), ["notifications/progress", "notifications/progress", 12]);
    // through B, the call crosses NATS to the actor at A; its answer, the first thing to say, is JSON as in process
    const viaB = await soleAnswer(b.edge.port, { path, headers, body: body(13, "echo", { text: "via B" }) });
    assert.deepEqual(viaB.message, { jsonrpc: "2.0", id: 13, result: { content: [{ type: "text", text: "via B" }] } });

    const list = await raw(a.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", id: 8, method: "tools/list" }) });
    assert.match(String(list.headers["content-type"]), /^application\/json/);
    assert.ok(JSON.parse(list.body).result.tools.some((t: { name: string }) => t.name === "echo"));
    assert.equal(list.headers["mcp-protocol-version"], "2025-06-18");
    const badVersion = await raw(a.edge.port, { path, headers: { ...headers, "mcp-protocol-version": "1999-01-01" }, body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "tools/list" }) });
    assert.equal(badVersion.status, 400);
    const unknown = await raw(a.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", id: 10, method: "no/such" }) });
    assert.equal(JSON.parse(unknown.body).error.code, -32601);
    const badParams = await soleAnswer(a.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", id: 11, method: "tools/call", params: { arguments: 3 } }) });
    // refused before any upstream: an answer with nothing before it, so JSON
    assert.equal((badParams.message as { error: { code: number } }).error.code, -32602);
  });

  it("resumes a POST stream at another worker from the stream log: the events after Last-Event-ID, the final answer as the live path gives it, then the end", async () => {
    const { sid, headers } = await open(a);
    const streamId = "resumeMe01";
    const progress: StreamEvent = { uid: "u1", gid, message: { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } } };
    const reply: StreamEvent = { uid: "u2", gid, requestId: "n5", reply: { ok: true, data: { rpcError: { code: -32602, message: "the upstream's own error", data: { why: 1 } } } } };
    publishStreamEvent(a.nc, s, sid, streamId, progress);
    publishStreamEvent(a.nc, s, sid, streamId, reply);

    const all = await raw(b.edge.port, { method: "GET", path, headers: { ...headers, "last-event-id": `${streamId}.0` }, timeoutMs: BOUND_MS });
    assert.equal(all.status, 200);
    const events = sseEvents(all.body);
    assert.deepEqual(events.map((e) => e.id), [`${streamId}.u1`, `${streamId}.u2`]);
    assert.equal(JSON.parse(events[0]!.data).method, "notifications/progress");
    assert.deepEqual(JSON.parse(events[1]!.data), { jsonrpc: "2.0", id: 5, error: { code: -32602, message: "the upstream's own error", data: { why: 1 } } });

    const after1 = await raw(a.edge.port, { method: "GET", path, headers: { ...headers, "last-event-id": `${streamId}.u1` }, timeoutMs: BOUND_MS });
    assert.deepEqual(sseEvents(after1.body).map((e) => e.id), [`${streamId}.u2`]);

    // a session's stream is only its own: another session resuming the same stream id gets nothing of it
    const other = await open(b);
    const res = await fetch(`http://127.0.0.1:${b.edge.port}${path}`, { headers: { ...other.headers, accept: "text/event-stream", "last-event-id": `${streamId}.0` } });
    const reader = res.body!.getReader();
    const first = await Promise.race([reader.read(), new Promise((r) => setTimeout(() => r("quiet"), 1_000))]);
    assert.equal(first, "quiet", "nothing of another session's stream");
    await reader.cancel();

    const garbled = await raw(b.edge.port, { method: "GET", path, headers: { ...headers, "last-event-id": "not an id" } });
    assert.equal(garbled.status, 400);
  });

  it("writes stream events to the SDK client's GET stream: a log message, and a server request whose answer goes to the actor that asked, from any worker", async () => {
    const transport = new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${a.edge.port}${path}`));
    const client = new Client({ name: "relay", version: "1" }, { capabilities: { sampling: {} } });
    const logs: string[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => void logs.push(String(n.params.data)));
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => ({ model: "m", role: "assistant", content: { type: "text", text: `sampled ${String((req.params.messages[0]!.content as { text: string }).text)}` } }));
    await client.connect(transport);
    const sid = sessionKey(transport.sessionId!);
    await until("the edge holds the GET stream", () => a.edge.listeningSessions().includes(sid), BOUND_MS);

    // the actor of (sid, gid) waits for its answer on its `answer` op
    const answers: unknown[] = [];
    const sub = b.nc.subscribe(s.upstream.op(sid, gid, "answer"), { callback: (_e, m) => void (answers.push(decodeJson(m.data)), m.respond(encodeJson({ ok: true, data: {} }))) });
    await b.nc.flush();
    try {
      publishStreamEvent(b.nc, s, sid, STREAM_GET, { uid: "log1", gid, message: { jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "from upstream" } } });
      const id = serverRequestId(gid, "nonce1", 1);
      publishStreamEvent(b.nc, s, sid, STREAM_GET, {
        uid: "req1",
        gid,
        message: { jsonrpc: "2.0", id, method: "sampling/createMessage", params: { messages: [{ role: "user", content: { type: "text", text: "q" } }], maxTokens: 5 } },
      });
      await until("the log message and the answer", () => logs.length === 1 && answers.length === 1, BOUND_MS);
      assert.deepEqual(logs, ["from upstream"]);
      assert.deepEqual(UpstreamAnswerRequestSchema.parse(answers[0]), { id, result: { model: "m", role: "assistant", content: { type: "text", text: "sampled q" } } });
    } finally {
      sub.unsubscribe();
      await client.close();
    }
  });

  it("records logging/setLevel in the client session and tells its upstream sessions; roots list_changed too", async () => {
    const { sid, headers } = await open(a);
    const told: unknown[] = [];
    const sub = b.nc.subscribe(s.upstream.sessionWide(sid), { callback: (_e, m) => void told.push(SessionWideMessageSchema.parse(decodeJson(m.data))) });
    await b.nc.flush();
    try {
      const set = await raw(a.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "logging/setLevel", params: { level: "warning" } }) });
      assert.deepEqual(JSON.parse(set.body), { jsonrpc: "2.0", id: 1, result: {} });
      const record = DownstreamSessionSchema.parse((await a.stores.sessions.get(KEYS.downstreamSession(sid)))!.json());
      assert.equal(record.logLevel, "warning");
      const roots = await raw(b.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/roots/list_changed" }) });
      assert.equal(roots.status, 202);
      const bad = await raw(a.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "logging/setLevel", params: { level: "loud" } }) });
      assert.equal(JSON.parse(bad.body).error.code, -32602);
      await until("both messages", () => told.length === 2, BOUND_MS);
      assert.deepEqual(told, [{ method: "logging/setLevel", params: { level: "warning" } }, { method: "notifications/roots/list_changed" }]);
      assert.equal(DownstreamSessionSchema.parse((await a.stores.sessions.get(KEYS.downstreamSession(sid)))!.json()).logLevel, "warning", "a refused level changes nothing");
    } finally {
      sub.unsubscribe();
    }
  });
});

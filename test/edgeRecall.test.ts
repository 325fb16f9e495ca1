import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { sessionKey } from "../protocol/edge.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import type { StreamEvent } from "../protocol/upstream.ts";
import { SessionLinks } from "../runtime/edge/sessionLinks.ts";
import { Refusals } from "../runtime/bus.ts";
import { publishStreamEvent } from "../runtime/streamLog.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { INIT, putCatalog, raw, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";

// A worker remembers the client sessions it served (SessionStore.recall): a call reads no
// record from KV. These tests attack that memory with the races it must lose to: a session
// ended elsewhere (a DELETE at another worker, the idle sweep), and `views` changed elsewhere.

const BOUND_MS = 30_000;
const PATH = "/gateways/counter/mcp";

/** The JSON-RPC answer of a POST: plain JSON, or the last event of its SSE stream. */
function answerOf(body: string): { result?: any; error?: { code: number; message: string } } {
  const events = body
    .split("\n\n")
    .map((block) => block.split("\n").find((l) => l.startsWith("data: "))?.slice(6))
    .filter((d): d is string => !!d);
  return JSON.parse(events.at(-1) ?? body);
}

async function twoWorkers(env: Record<string, string> = {}) {
  const nats = await startNats();
  const fixture = await startFixtureHttp();
  const a = await startTestWorker(nats, { MCPGW_WORKER_ID: "recall-a", ...env });
  const b = await startTestWorker(nats, { MCPGW_WORKER_ID: "recall-b", ...env });
  const gid = (await a.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("counter") })).id;
  const tools = (w: TestWorker) => (w.edge.cache.gatewayByName("counter") ? w.edge.cache.view(gid).tools.length : 0);
  await until("discovery's catalog at both edges", () => tools(a) > 1 && tools(b) > 1, BOUND_MS);
  // then the shared catalog lists one tool; the upstream itself has more (a session's own list shows them)
  await putCatalog(a, gid, { tools: [{ name: "increment", inputSchema: { type: "object" } }] });
  await until("the one-tool catalog at both edges", () => tools(a) === 1 && tools(b) === 1, BOUND_MS);
  const open = async () => {
    const init = await raw(a.edge.port, { path: PATH, body: INIT });
    assert.equal(init.status, 200, init.body);
    const id = String(init.headers["mcp-session-id"]);
    return { sid: sessionKey(id), headers: { "mcp-session-id": id, "mcp-protocol-version": "2025-06-18" } };
  };
  let n = 100;
  const post = (w: TestWorker, headers: Record<string, string>, method: string, params: Record<string, unknown> = {}) =>
    raw(w.edge.port, { path: PATH, headers, body: JSON.stringify({ jsonrpc: "2.0", id: n++, method, params }), timeoutMs: BOUND_MS });
  const increment = (w: TestWorker, headers: Record<string, string>) => post(w, headers, "tools/call", { name: "increment", arguments: {} });
  const stop = async () => {
    await a.stop();
    await b.stop();
    await fixture.close();
    await nats.stop();
  };
  return { nats, a, b, gid, open, post, increment, stop };
}

describe("edge: a worker's memory of client sessions loses every race it must lose", () => {
  let sys: Awaited<ReturnType<typeof twoWorkers>>;
  let spy: NatsConnection;
  /** subjects and bodies of the record reads (JetStream direct and message gets) */
  const reads: string[] = [];

  before(async () => {
    sys = await twoWorkers();
    spy = await sys.nats.connect("runtime");
    for (const subject of ["$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>"]) {
      spy.subscribe(subject, { callback: (_e, m) => void reads.push(`${m.subject} ${new TextDecoder().decode(m.data)}`) });
    }
    await spy.flush();
  });
  after(async () => {
    await sys?.stop();
  });

  it("serves a session's calls at another worker without reading its record again", async () => {
    const { sid, headers } = await sys.open();
    assert.equal((await sys.increment(sys.b, headers)).status, 200);
    await spy.flush();
    const before = reads.filter((r) => r.includes(KEYS.downstreamSession(sid))).length;
    for (let i = 0; i < 3; i++) {
      const r = await sys.increment(sys.b, headers);
      assert.equal(answerOf(r.body).result?.isError, undefined, r.body);
    }
    await spy.flush();
    assert.equal(reads.filter((r) => r.includes(KEYS.downstreamSession(sid))).length, before, "no read of ds.<sid> for the calls");
  });

  it("refuses at worker B a session deleted at worker A, though B served it just before", async () => {
    const { sid, headers } = await sys.open();
    assert.equal((await sys.increment(sys.b, headers)).status, 200);
    const deleted = await raw(sys.a.edge.port, { method: "DELETE", path: PATH, headers });
    assert.equal(deleted.status, 200);
    const call = await sys.increment(sys.b, headers);
    assert.equal(call.status, 404, call.body);
    assert.equal(JSON.parse(call.body).error.code, -32001);
    const get = await raw(sys.b.edge.port, { method: "GET", path: PATH, headers, timeoutMs: BOUND_MS });
    assert.equal(get.status, 404);
    assert.notEqual((await sys.a.stores.sessions.get(KEYS.downstreamSession(sid)))?.operation, "PUT", "the record is gone");
  });

  it("lists at worker B with the views an actor wrote after B last read the record", async () => {
    const { sid, headers } = await sys.open();
    assert.equal((await sys.increment(sys.b, headers)).status, 200);
    const shared = answerOf((await sys.post(sys.b, headers, "tools/list")).body).result.tools.map((t: { name: string }) => t.name);
    assert.deepEqual(shared, ["increment"], "the shared catalog");
    // what an upstream session actor records on its upstream's list_changed (runtime/hosts/upstreamActor.ts)
    await sys.a.edge.sessions.update(sid, (r) => ({ ...r, views: { [sys.gid]: ["tools"] } }));
    const own = answerOf((await sys.post(sys.b, headers, "tools/list")).body).result.tools.map((t: { name: string }) => t.name);
    assert.ok(own.includes("increment") && own.length > 1, `the session's own list from its upstream session: ${own.join(", ")}`);
  });
});

describe("edge: a session the idle sweep ended is not served from memory", () => {
  const IDLE_TTL_MS = 10_000;
  let sys: Awaited<ReturnType<typeof twoWorkers>>;
  before(async () => {
    // the TTL is the time from the initialize to the first call: 2 s was too short on a loaded machine
    sys = await twoWorkers({ MCPGW_EDGE_SESSION_IDLE_TTL: `${IDLE_TTL_MS}ms` });
  });
  after(async () => {
    await sys?.stop();
  });

  it("answers 404 at the worker that served the session once a sweep ended it", async () => {
    // The sweep deletes the record, then publishes `closed`: a call between the two is served (it
    // came before the end). Wait for the event, then flush B's connection: the server queued the
    // event to B before its PONG, so B has forgotten the session when the flush resolves. The
    // listener is in place before the session exists, so no sweep can end it unheard.
    const spy = await sys.nats.connect("runtime");
    const ended: string[] = [];
    spy.subscribe(subjects("mcpgw").evt.sessionAll, { callback: (_e, m) => void (m.subject.endsWith(".closed") && ended.push(m.subject)) });
    await spy.flush();
    const { sid, headers } = await sys.open();
    assert.equal((await sys.increment(sys.b, headers)).status, 200);
    await until("a sweep ended the idle session and published its end", () => ended.includes(subjects("mcpgw").evt.sessionClosed(sid)), IDLE_TTL_MS + BOUND_MS);
    await spy.close();
    await sys.b.nc.flush();
    assert.notEqual((await sys.a.stores.sessions.get(KEYS.downstreamSession(sid)))?.operation, "PUT", "the record is gone");
    const call = await sys.increment(sys.b, headers);
    assert.equal(call.status, 404, call.body);
  });
});

describe("edge: a session's stream subscription lingers after its last request at a worker", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });

  it("keeps the subscription after the last request, delivers on it when a stream is held again, drops it when the session ends", async () => {
    const nc = await nats.connect("runtime");
    const { log } = memoryLogger("silent");
    const links = new SessionLinks(nc, subjects("mcpgw"), { log, refusals: new Refusals() });
    try {
      const release = links.addRequest("sess1", "n1", () => {});
      release();
      assert.equal(links.subscribedSessions(), 1, "lingering after the request");
      const delivered: StreamEvent[] = [];
      const unhold = await links.hold("sess1", "post1", { scope: null, deliver: (e) => void delivered.push(e), close: () => {} });
      assert.equal(links.subscribedSessions(), 1, "the same subscription");
      const sender = await nats.connect("runtime");
      publishStreamEvent(sender, subjects("mcpgw"), "sess1", "post1", { uid: "u1", message: { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } } });
      publishStreamEvent(sender, subjects("mcpgw"), "sess1", "post1", { uid: "u2", requestId: "n1", reply: { ok: true, data: { result: {} } } });
      await sender.flush();
      await until("the message", () => delivered.length === 1, BOUND_MS);
      await nc.flush();
      assert.deepEqual(delivered.map((e) => e.uid), ["u1"], "a message is delivered live; the answer's copy is not");
      unhold();
      assert.equal(links.subscribedSessions(), 1);
      links.ended("sess1");
      assert.equal(links.subscribedSessions(), 0, "an ended session's subscription goes");
    } finally {
      links.stop();
    }
  });
});

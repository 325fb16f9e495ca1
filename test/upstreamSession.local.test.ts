// Local placement and in-process calls (issue 11): two in-process workers on one nats-server,
// the HTTP fixture upstream. A client's first call places its upstream session actor at the
// worker that received it; calls there are handed to the actor in process (no call request,
// reply or answer copy on the bus) while calls through the other worker reach it over NATS
// (request and reply; no answer copy when the answer was delivered); an answer the client's
// stream lost before it was delivered stays resumable from the stream log, in process and
// through the other worker, and so does one whose reply found the other worker's connection gone.
import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { sessionKey } from "../protocol/edge.ts";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, INIT, raw, soleAnswer, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
/** hang bound of one step */
const BOUND_MS = 30_000;
const text = (r: unknown) => ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? "");

describe("upstream sessions: local placement and in-process calls", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let a: TestWorker;
  let b: TestWorker;
  let observer: NatsConnection;
  let gid: string;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    a = await startTestWorker(nats);
    b = await startTestWorker(nats);
    observer = await nats.connect("runtime");
    const admin = await nats.connect("admin");
    gid = (await request(admin, s.admin.gateway("add"), { name: "counter", transport: "streamable-http", url: fixture.url("counter") }, GatewayViewSchema, BOUND_MS)).id;
    await admin.close();
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  /** An SDK client whose requests go to the edge `target.url` names (the edge is stateless: any worker serves any session). */
  async function client(first: TestWorker) {
    const target = { url: first.edge.url };
    const routed: typeof fetch = (input, init) => {
      const u = new URL(input instanceof Request ? input.url : String(input));
      u.host = new URL(target.url).host;
      return fetch(u, init);
    };
    const { client, transport } = await connectClient(first.edge.url, { fetch: routed });
    await until("the gateway's tools at the edge", async () => (await client.listTools()).tools.some((t) => t.name === "counter__increment"), BOUND_MS);
    return { client, target, sid: () => sessionKey(transport.sessionId!) };
  }
  const hosts = (w: TestWorker, sid: string) => w.upstream.sessions().some((x) => x.sid === sid && x.gid === gid);
  const useCount = (w: TestWorker, sid: string) => w.upstream.sessions().find((x) => x.sid === sid && x.gid === gid)?.useCount ?? 0;
  /** call answers kept in the stream log for a session */
  async function storedAnswers(sid: string): Promise<number> {
    const jsm = await jetstreamManager(observer);
    const subjectsOf = (await jsm.streams.info(a.stores.streamLogName, { subjects_filter: s.stream.session(sid) })).state.subjects ?? {};
    return Object.entries(subjectsOf).reduce((n, [subject, count]) => n + (subject.endsWith(".answer") ? count : 0), 0);
  }

  it("a client's first call places its actor at the worker that received it; a session hosted elsewhere is served there", async () => {
    const viaA = await client(a);
    const viaB = await client(b);
    assert.equal(text(await viaA.client.callTool({ name: "counter__increment", arguments: {} })), "1");
    assert.equal(text(await viaB.client.callTool({ name: "counter__increment", arguments: {} })), "1");
    assert.ok(hosts(a, viaA.sid()) && !hosts(b, viaA.sid()), "A's client's session is hosted at A");
    assert.ok(hosts(b, viaB.sid()) && !hosts(a, viaB.sid()), "B's client's session is hosted at B");

    // A's client now calls through B: the actor at A serves it, B starts none
    viaA.target.url = b.edge.url;
    assert.equal(text(await viaA.client.callTool({ name: "counter__increment", arguments: {} })), "2");
    assert.ok(!hosts(b, viaA.sid()), "no second actor for the key at B");
    assert.equal(useCount(a, viaA.sid()), 2);
    await viaA.client.close();
    await viaB.client.close();
  });

  it("the first call of a session created at this worker looks for no actor on the bus: it is placed here at once", async () => {
    const c = await client(a);
    const sid = c.sid();
    assert.ok(!hosts(a, sid) && !hosts(b, sid));
    // a listener at the actor's address that never answers: a look on the bus would wait on it
    let busCalls = 0;
    const sub = observer.subscribe(s.upstream.op(sid, gid, "call"), { callback: () => void busCalls++ });
    await observer.flush();
    const first = c.client.callTool({ name: "counter__increment", arguments: {} }, undefined, { timeout: BOUND_MS });
    assert.equal(text(await first), "1");
    await a.nc.flush();
    await observer.flush();
    assert.equal(busCalls, 0, "no call request on the bus");
    assert.ok(hosts(a, sid) && !hosts(b, sid), "the actor is at the worker that created the session");
    sub.unsubscribe();
    await c.client.close();
  });

  it("calls through the hosting worker put nothing of the call on the bus; through the other worker, the request and its reply (a delivered answer is not kept)", async () => {
    const c = await client(a);
    await c.client.callTool({ name: "counter__increment", arguments: {} });
    const sid = c.sid();
    assert.ok(hosts(a, sid));
    let busCalls = 0;
    let answerCopies = 0;
    const sub = observer.subscribe(s.upstream.op(sid, gid, "call"), { callback: () => void busCalls++ });
    // every answer copy published for this session, whoever publishes it
    const copies = observer.subscribe(s.stream.session(sid), { callback: (_e, m) => void (m.subject.endsWith(".answer") && answerCopies++) });
    await observer.flush();

    for (let i = 0; i < 5; i++) await c.client.callTool({ name: "counter__increment", arguments: {} });
    await a.nc.flush();
    await observer.flush();
    assert.equal(busCalls, 0, "no call request on the bus");
    assert.equal(answerCopies, 0, "no answer kept: each was delivered on its open stream");

    c.target.url = b.edge.url;
    for (let i = 0; i < 3; i++) await c.client.callTool({ name: "counter__increment", arguments: {} });
    // the server queues each call to the observer before the actor gets it: all are here after a flush
    await observer.flush();
    assert.equal(busCalls, 3, "each call through B is a request to the actor's address");
    assert.equal(text(await c.client.callTool({ name: "counter__increment", arguments: {} })), "10");
    // a round trip of each worker to the server after its answers' writes, then of the observer:
    // a copy either worker published is delivered to the observer by then
    await b.nc.flush();
    await a.nc.flush();
    await observer.flush();
    assert.equal(answerCopies, 0, "no answer kept: B delivered each on its open stream");
    sub.unsubscribe();
    copies.unsubscribe();
    await c.client.close();
  });

  /** An initialized raw session, its first call sent to `first` (which places its actor there). */
  async function rawSession(first: TestWorker) {
    const init = await raw(first.edge.port, { body: INIT });
    const id = String(init.headers["mcp-session-id"]);
    const headers = { "mcp-session-id": id, "mcp-protocol-version": "2025-06-18" };
    await raw(first.edge.port, { headers, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) });
    const placed = await raw(first.edge.port, { headers, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "counter__increment", arguments: {} } }) });
    assert.match(placed.body, /"text":"1"/);
    return { headers, sid: sessionKey(id) };
  }

  /**
   * Opens a call's POST stream at `via` (a 3 s sleep, JSON-RPC id 3: slower than the priming delay
   * of 1-2 s, so an in-process call streams too), and once its priming event is in: with `drop`, the client drops the stream; then `after` runs. Resolves with the stream's id.
   */
  function sleepCall(via: TestWorker, headers: Record<string, string>, then: { drop: boolean; after?: () => void }): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        { host: "127.0.0.1", port: via.edge.port, method: "POST", path: "/mcp", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers } },
        (res) => {
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => {
            const m = /id: ([A-Za-z0-9_-]+)\.0\n/.exec(chunk);
            if (m) {
              if (then.drop) req.destroy();
              then.after?.();
              resolve(m[1]!);
            }
          });
        },
      );
      req.on("error", () => {});
      req.setTimeout(BOUND_MS, () => reject(new Error("no priming event")));
      req.end(JSON.stringify({ jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "counter__sleep", arguments: { ms: 3000 } } }));
    });
  }

  /** The answer of id 3 on `streamId`, resumed at `at` from the stream log. */
  async function resumed(at: TestWorker, headers: Record<string, string>, streamId: string): Promise<string> {
    const r = await raw(at.edge.port, { method: "GET", headers: { ...headers, accept: "text/event-stream", "last-event-id": `${streamId}.0` }, timeoutMs: BOUND_MS });
    return r.body;
  }

  it("a quick call through the other worker is answered as one JSON response, as in process; a slow one streams, priming event first", async () => {
    const { headers, sid } = await rawSession(a);
    assert.ok(hosts(a, sid) && !hosts(b, sid));
    // JSON, its length given (streamed, the answer alone, only if slower than the priming delay)
    const quick = await soleAnswer(b.edge.port, { headers, body: JSON.stringify({ jsonrpc: "2.0", id: 4, method: "tools/call", params: { name: "counter__increment", arguments: {} } }) });
    assert.match(JSON.stringify(quick.message), /"id":4,.*"text":"2"/);
    // slower than the priming delay (1-2 s): resumable from the priming event on, at any worker
    const slow = await raw(b.edge.port, { headers, body: JSON.stringify({ jsonrpc: "2.0", id: 5, method: "tools/call", params: { name: "counter__sleep", arguments: { ms: 2500 } } }), timeoutMs: BOUND_MS });
    assert.match(String(slow.headers["content-type"]), /^text\/event-stream/);
    assert.match(slow.body, /^id: [A-Za-z0-9_-]+\.0\ndata: \n\n/);
    assert.match(slow.body, /slept 2500/);
  });

  it("an in-process call whose client stream closed before its answer: the answer is kept, and a resumption gets it", async () => {
    const { headers, sid } = await rawSession(a);
    assert.ok(hosts(a, sid));
    const stored = await storedAnswers(sid);
    const streamId = await sleepCall(a, headers, { drop: true });
    await until("the lost answer kept on its stream", async () => (await storedAnswers(sid)) === stored + 1, BOUND_MS);
    const body = await resumed(a, headers, streamId);
    assert.match(body, /"id":3/);
    assert.match(body, /slept 3000/);
  });

  it("a call through the other worker whose client stream closed before its answer: that worker keeps the answer, and a resumption gets it", async () => {
    const { headers, sid } = await rawSession(a);
    assert.ok(hosts(a, sid) && !hosts(b, sid));
    const stored = await storedAnswers(sid);
    const streamId = await sleepCall(b, headers, { drop: true });
    await until("the lost answer kept on its stream", async () => (await storedAnswers(sid)) === stored + 1, BOUND_MS);
    // resumed at the hosting worker: the copy is in the log, wherever it was published from
    const body = await resumed(a, headers, streamId);
    assert.match(body, /"id":3/);
    assert.match(body, /slept 3000/);
  });

  it("a call through a worker whose NATS connection is gone when the answer comes: the hosting actor keeps the answer, and a resumption gets it", async () => {
    const c = await startTestWorker(nats);
    try {
      const { headers, sid } = await rawSession(a);
      const stored = await storedAnswers(sid);
      // C loses its connection (its inbox with it) while the upstream still sleeps
      const streamId = await sleepCall(c, headers, { drop: false, after: () => void c.nc.close() });
      await until("the answer nobody took kept on its stream", async () => (await storedAnswers(sid)) === stored + 1, BOUND_MS);
      const body = await resumed(a, headers, streamId);
      assert.match(body, /"id":3/);
      assert.match(body, /slept 3000/);
    } finally {
      await c.stop().catch(() => {});
    }
  });
});

// Local placement and in-process calls (issue 11): two in-process workers on one nats-server,
// the HTTP fixture upstream. A client's first call places its upstream session actor at the
// worker that received it; calls there are handed to the actor in process (no call request,
// reply or answer copy on the bus) while calls through the other worker reach it over NATS;
// an answer the client's stream lost before it was delivered stays resumable from the stream log.
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
import { connectClient, INIT, raw, until } from "./helpers/edge.ts";
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

  it("calls through the hosting worker put nothing of the call on the bus; through the other worker, the request and the answer's copy", async () => {
    const c = await client(a);
    await c.client.callTool({ name: "counter__increment", arguments: {} });
    const sid = c.sid();
    assert.ok(hosts(a, sid));
    let busCalls = 0;
    const sub = observer.subscribe(s.upstream.op(sid, gid, "call"), { callback: () => void busCalls++ });
    await observer.flush();
    const storedBefore = await storedAnswers(sid);

    for (let i = 0; i < 5; i++) await c.client.callTool({ name: "counter__increment", arguments: {} });
    assert.equal(busCalls, 0, "no call request on the bus");
    assert.equal(await storedAnswers(sid), storedBefore, "no answer kept: each was delivered on its open stream");

    c.target.url = b.edge.url;
    for (let i = 0; i < 3; i++) await c.client.callTool({ name: "counter__increment", arguments: {} });
    assert.equal(busCalls, 3, "each call through B is a request to the actor's address");
    await until("the answers of B's calls kept for resumption", async () => (await storedAnswers(sid)) === storedBefore + 3, BOUND_MS);
    assert.equal(text(await c.client.callTool({ name: "counter__increment", arguments: {} })), "10");
    sub.unsubscribe();
    await c.client.close();
  });

  it("an in-process call whose client stream closed before its answer: the answer is kept, and a resumption gets it", async () => {
    const init = await raw(a.edge.port, { body: INIT });
    const id = String(init.headers["mcp-session-id"]);
    const headers = { "mcp-session-id": id, "mcp-protocol-version": "2025-06-18" };
    const sid = sessionKey(id);
    await raw(a.edge.port, { headers, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) });
    // placed at A, which the rest of the test calls
    const first = await raw(a.edge.port, { headers, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "counter__increment", arguments: {} } }) });
    assert.match(first.body, /"text":"1"/);
    assert.ok(hosts(a, sid));
    const stored = await storedAnswers(sid);

    // the call's stream is opened, then dropped by the client after its priming event
    const streamId = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        { host: "127.0.0.1", port: a.edge.port, method: "POST", path: "/mcp", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...headers } },
        (res) => {
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => {
            const m = /id: ([A-Za-z0-9_-]+)\.0\n/.exec(chunk);
            if (m) {
              req.destroy();
              resolve(m[1]!);
            }
          });
        },
      );
      req.on("error", () => {});
      req.setTimeout(BOUND_MS, () => reject(new Error("no priming event")));
      req.end(JSON.stringify({ jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "counter__sleep", arguments: { ms: 1000 } } }));
    });
    await until("the lost answer kept on its stream", async () => (await storedAnswers(sid)) === stored + 1, BOUND_MS);
    const resumed = await raw(a.edge.port, { method: "GET", headers: { ...headers, accept: "text/event-stream", "last-event-id": `${streamId}.0` }, timeoutMs: BOUND_MS });
    assert.match(resumed.body, /"id":3/);
    assert.match(resumed.body, /slept 1000/);
  });
});

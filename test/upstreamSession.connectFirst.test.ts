// A new session's connect and first call (issue 11): on a gateway's own endpoint the upstream
// session opens at the client's initialize, and the first call, even one that arrives while that
// handshake is still under way, is served by it in process (one upstream session, nothing on the
// bus: an actor that holds its claim takes calls while it connects); on the federated endpoint
// nothing opens before a call. The upstream handshake runs while
// the claim is made: a claim held by a live actor elsewhere closes the connection opened for it,
// unused. In-process workers on a real nats-server, the HTTP fixture upstream.
import assert from "node:assert/strict";
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { sessionKey } from "../protocol/edge.ts";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { encodeJson, request } from "../runtime/bus.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, INIT, raw, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
/** hang bound of one step */
const BOUND_MS = 30_000;
const text = (r: unknown) => ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? "");

/**
 * A proxy in front of the fixture that holds every `initialize` until `release()`: the test
 * decides when an upstream handshake may go on.
 */
async function gatedProxy(target: string) {
  let open!: () => void;
  let gate = new Promise<void>((r) => (open = r));
  const forward = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    if (/"method"\s*:\s*"initialize"/.test(body.toString("utf8"))) await gate;
    const url = new URL(target);
    const out = httpRequest({ host: url.hostname, port: url.port, path: url.pathname, method: req.method, headers: req.headers }, (up) => {
      // headers go on as they arrive, as a proxy's do: an SSE stream's come before any event
      res.writeHead(up.statusCode ?? 502, up.headers).flushHeaders();
      up.pipe(res);
    });
    out.on("error", () => res.destroy());
    out.end(body);
  };
  const server = createServer((req, res) => void forward(req, res));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`,
    release: () => open(),
    hold: () => (gate = new Promise<void>((r) => (open = r))),
    close: () => (server.closeAllConnections(), new Promise<void>((r) => server.close(() => r()))),
  };
}

/** Every message on `subject` from now on, counted. */
function counting(nc: NatsConnection, subject: string) {
  let n = 0;
  const sub = nc.subscribe(subject, { callback: () => void n++ });
  return { count: () => n, stop: () => sub.unsubscribe() };
}

describe("a new session's connect and first call", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let gate: Awaited<ReturnType<typeof gatedProxy>>;
  let a: TestWorker;
  let b: TestWorker;
  let observer: NatsConnection;
  let gid: string;
  let gatedGid: string;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    gate = await gatedProxy(fixture.url("gated"));
    gate.release();
    a = await startTestWorker(nats);
    b = await startTestWorker(nats);
    observer = await nats.connect("runtime");
    const admin = await nats.connect("admin");
    gid = (await request(admin, s.admin.gateway("add"), { name: "counter", transport: "streamable-http", url: fixture.url("counter") }, GatewayViewSchema, BOUND_MS)).id;
    gatedGid = (await request(admin, s.admin.gateway("add"), { name: "gated", transport: "streamable-http", url: gate.url }, GatewayViewSchema, BOUND_MS)).id;
    await admin.close();
    await until("both gateways discovered", () => [gid, gatedGid].every((g) => a.edge.cache.view(g).toolRoutes.has("increment")), BOUND_MS);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await gate?.close();
    await fixture?.close();
    await nats?.stop();
  });

  const actorOf = (w: TestWorker, sid: string, g: string) => w.upstream.sessions().find((x) => x.sid === sid && x.gid === g);

  it("on a gateway's own endpoint the upstream session opens at initialize, and the first call is served by it in process", async () => {
    const opened = fixture.gateway("counter").opened.length;
    const { client, transport } = await connectClient(a.edge.url.replace(/\/mcp$/, "/gateways/counter/mcp"));
    const sid = sessionKey(transport.sessionId!);
    await until("the upstream session open before any call", () => actorOf(a, sid, gid)?.state === "ready", BOUND_MS);
    assert.equal(fixture.gateway("counter").opened.length, opened + 1, "one upstream initialize");
    assert.equal(actorOf(b, sid, gid), undefined, "no actor at the other worker");

    const calls = counting(observer, s.upstream.op(sid, gid, "call"));
    const spawns = counting(observer, s.upstream.spawn);
    await observer.flush();
    assert.equal(text(await client.callTool({ name: "increment", arguments: {} })), "1");
    await observer.flush();
    assert.equal(calls.count() + spawns.count(), 0, "the first call crossed no NATS");
    assert.equal(actorOf(a, sid, gid)?.useCount, 1);
    assert.equal(fixture.gateway("counter").opened.length, opened + 1, "still one upstream initialize");
    calls.stop();
    spawns.stop();
    await client.close();
  });

  it("on the federated endpoint nothing opens before the first call", async () => {
    const { client, transport } = await connectClient(a.edge.url);
    const sid = sessionKey(transport.sessionId!);
    await client.listTools();
    assert.equal(actorOf(a, sid, gid), undefined, "no upstream session after initialize and a list");
    assert.equal(text(await client.callTool({ name: "counter__increment", arguments: {} })), "1");
    assert.equal(actorOf(a, sid, gid)?.useCount, 1);
    await client.close();
  });

  it("a first call that arrives while the handshake begun at initialize is under way waits for it in process: one upstream session", async () => {
    gate.hold();
    const opened = fixture.gateway("gated").opened.length;
    const port = a.edge.port;
    const path = "/gateways/gated/mcp";
    const init = await raw(port, { path, body: INIT });
    const clientSessionId = String(init.headers["mcp-session-id"]);
    const sid = sessionKey(clientSessionId);
    const headers = { "mcp-session-id": clientSessionId, "mcp-protocol-version": "2025-06-18" };
    assert.equal((await raw(port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) })).status, 202);
    await until("the early handshake waiting on the upstream's initialize", () => actorOf(a, sid, gatedGid)?.state === "connecting", BOUND_MS);

    const calls = counting(observer, s.upstream.op(sid, gatedGid, "call"));
    const spawns = counting(observer, s.upstream.spawn);
    await observer.flush();
    // the call's stream opens (its priming event) only once the edge has handed the call to the caller
    const answer = new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        { host: "127.0.0.1", port, method: "POST", path, headers: { ...headers, "content-type": "application/json", accept: "application/json, text/event-stream" } },
        (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (c: string) => {
            body += c;
            gate.release();
          });
          res.on("end", () => resolve(body));
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "increment", arguments: {} } }));
    });
    const body = await answer;
    assert.match(body, /"text":"1"/, body);
    await observer.flush();
    assert.equal(calls.count() + spawns.count(), 0, "the call waited for the handshake in process");
    assert.equal(actorOf(a, sid, gatedGid)?.useCount, 1);
    assert.equal(fixture.gateway("gated").opened.length, opened + 1, "one upstream session opened");
    calls.stop();
    spawns.stop();
  });

  it("a claim held by a live actor elsewhere: the connection opened while claiming is closed, unused", async () => {
    const admin = await nats.connect("admin");
    const lostGid = (await request(admin, s.admin.gateway("add"), { name: "lost", transport: "streamable-http", url: fixture.url("lost") }, GatewayViewSchema, BOUND_MS)).id;
    await admin.close();
    const sid = "held-elsewhere";
    // a live holder: its claim in KV, and its address answering `status` (not `call`)
    await a.stores.sessions.create(KEYS.upstreamClaim(sid, lostGid), JSON.stringify({ worker: "elsewhere", since: new Date().toISOString() }));
    const holder = observer.subscribe(s.upstream.op(sid, lostGid, "status"), { callback: (_e, m) => void m.respond(encodeJson({ ok: true, data: {} })) });
    await observer.flush();
    const lost = fixture.gateway("lost");
    // the poller's discovery session, if it keeps one, is there before the activation
    await until("the gateway discovered", () => a.edge.cache.view(lostGid).toolRoutes.has("increment"), BOUND_MS);
    const [opened, open] = [lost.opened.length, lost.sessions.size];
    const outcome = await a.upstream.local.activate(sid, lostGid, { headers: {} }, {});
    assert.deepEqual(outcome, { worker: "elsewhere", created: false });
    assert.equal(actorOf(a, sid, lostGid), undefined, "no actor here");
    // the handshake it began while claiming ends, then the session is ended upstream (DELETE)
    await until("the unused upstream session closed", () => lost.opened.length > opened && lost.sessions.size === open, BOUND_MS);
    assert.equal(lost.opened.length, opened + 1, "one connection was opened for the lost claim");
    assert.equal(lost.stats.calls.increment ?? 0, 0, "no call reached the upstream");
    holder.unsubscribe();
  });
});

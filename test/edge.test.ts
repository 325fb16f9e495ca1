import assert from "node:assert/strict";
import { once } from "node:events";
import { Agent as HttpAgent, request as httpRequest } from "node:http";
import { after, before, describe, it } from "node:test";
import { ToolListChangedNotificationSchema, type Tool } from "@modelcontextprotocol/sdk/types.js";
import { sessionKey } from "../protocol/edge.ts";
import { SessionClosedEventSchema } from "../protocol/upstream.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { connectClient, INIT, putCatalog, putHealth, raw, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const TOKEN = "edge-test-token-0123456789";

describe("edge: federated catalog, sessions and HTTP hardening", () => {
  let nats: TestNats;
  let w: TestWorker;
  let secured: TestWorker;
  let gidA: string;
  let gidB: string;

  before(async () => {
    nats = await startNats();
    w = await startTestWorker(nats, { MCPGW_WORKER_ID: "edge-w1", MCPGW_EDGE_MAX_BODY: "65536" });
    secured = await startTestWorker(nats, { MCPGW_WORKER_ID: "edge-w2", MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: `other-token-abcdefghijkl,${TOKEN}` });
    gidA = (await w.registry.add({ name: "alpha", transport: "streamable-http", url: "http://127.0.0.1:1/mcp" })).id;
    gidB = (await w.registry.add({ name: "beta", transport: "streamable-http", url: "http://127.0.0.1:2/mcp" })).id;
    await putCatalog(w, gidA, {
      tools: [{ name: "echo", description: "a", inputSchema: { type: "object" } }],
      prompts: [{ name: "greet" }],
      resources: [{ uri: "fixture://info", name: "info" }],
      resourceTemplates: [{ uriTemplate: "fixture://items/{id}", name: "item" }],
    });
    await putCatalog(w, gidB, {
      tools: [{ name: "echo", description: "b", inputSchema: { type: "object" } }, { name: "add", inputSchema: { type: "object" } }],
      resources: [{ uri: "fixture://info", name: "info-b" }],
    });
  });
  after(async () => {
    await w?.stop();
    await secured?.stop();
    await nats?.stop();
  });

  it("lists the federated tools of two gateways under gateway-prefixed names (gateways by name, each in upstream order), and one gateway under its own names", async () => {
    const { client } = await connectClient(w.edge.url);
    await until("both catalogs", async () => (await client.listTools()).tools.length === 3);
    const tools = (await client.listTools()).tools;
    assert.deepEqual(
      tools.map((t) => [t.name, t.description]),
      [
        ["alpha__echo", "a"],
        ["beta__echo", "b"],
        ["beta__add", undefined],
      ],
    );
    assert.deepEqual((await client.listPrompts()).prompts.map((p) => p.name), ["alpha__greet"]);
    // the URI both offer is served by the first gateway by name, once, and the clash is logged
    assert.deepEqual((await client.listResources()).resources.map((r) => r.name), ["info"]);
    assert.ok(w.lines.some((l) => l.includes("resource fixture://info is offered by gateways alpha and beta; alpha serves it")));
    assert.deepEqual((await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate), ["fixture://items/{id}"]);
    await client.close();

    const one = await connectClient(w.edge.url.replace("/mcp", "/gateways/beta/mcp"));
    assert.deepEqual((await one.client.listTools()).tools.map((t) => t.name), ["echo", "add"]);
    assert.equal(one.client.getServerVersion()?.name, "mcpgw/beta");
    await one.client.close();
  });

  it("pages through a catalog of 10,000 tools with cursors", async () => {
    const big = (await w.registry.add({ name: "big", transport: "streamable-http", url: "http://127.0.0.1:3/mcp" })).id;
    await putCatalog(w, big, { tools: Array.from({ length: 10_000 }, (_, i) => ({ name: `t${i}`, inputSchema: { type: "object" } })) });
    const { client } = await connectClient(w.edge.url.replace("/mcp", "/gateways/big/mcp"));
    await until("the big catalog", async () => (await client.listTools()).tools.length > 0);
    const seen: Tool[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await client.listTools(cursor ? { cursor } : {});
      seen.push(...r.tools);
      cursor = r.nextCursor;
      pages++;
    } while (cursor);
    assert.equal(seen.length, 10_000);
    assert.equal(new Set(seen.map((t) => t.name)).size, 10_000);
    assert.equal(pages, 20, "default page size 500");
    await assert.rejects(client.listTools({ cursor: "bm9wZQ" }), /invalid cursor/);
    await client.close();
    await w.registry.remove({ id: big });
  });

  it("answers a tool of no gateway, and a tool of an unhealthy gateway, with a JSON-RPC error naming it; a name alpha did not list goes to alpha", async () => {
    const { client } = await connectClient(w.edge.url);
    await assert.rejects(client.callTool({ name: "gamma__nope" }), (err: any) => err.code === -32602 && /unknown tool: gamma__nope/.test(err.message));
    await assert.rejects(client.callTool({ name: "nope" }), (err: any) => err.code === -32602 && /unknown tool: nope/.test(err.message));
    // the upstream decides about a name discovery did not see (alpha's upstream is unreachable here)
    await assert.rejects(client.callTool({ name: "alpha__nope" }), (err: any) => err.code === -32000 && /gateway alpha unavailable/.test(err.message));
    await putHealth(w, gidB, "unhealthy");
    await until("beta hidden", async () => !(await client.listTools()).tools.some((t) => t.name.startsWith("beta")));
    // The edge refuses it itself: nothing is sent towards beta's upstream (no actor address,
    // no spawn request), so the refusal cannot wait on an upstream that does not answer.
    const towardsBeta: string[] = [];
    const onMsg = (_e: unknown, m: { subject: string; data: Uint8Array }) => {
      if (m.subject.split(".")[3] === gidB || new TextDecoder().decode(m.data).includes(gidB)) towardsBeta.push(m.subject);
    };
    const subs = [w.nc.subscribe(`${s.prefix}.upstream.*.${gidB}.*`, { callback: onMsg }), w.nc.subscribe(s.upstream.spawn, { callback: onMsg })];
    await w.nc.flush();
    try {
      // the SDK's request timeout (60 s) bounds a hang
      await assert.rejects(client.callTool({ name: "beta__echo", arguments: {} }), (err: any) => err.code === -32000 && /gateway beta unavailable \(unhealthy\)/.test(err.message));
      await w.nc.flush();
      assert.deepEqual(towardsBeta, []);
    } finally {
      subs.forEach((sub) => sub.unsubscribe());
    }
    await putHealth(w, gidB, "healthy");
    await until("beta back", async () => (await client.listTools()).tools.some((t) => t.name === "beta__add"));
    await client.close();
  });

  it("pushes tools/list_changed to connected clients whose view changed, and they see the new tool", async () => {
    const fed = await connectClient(w.edge.url);
    const other = await connectClient(w.edge.url.replace("/mcp", "/gateways/beta/mcp"));
    let fedNotices = 0;
    let otherNotices = 0;
    fed.client.setNotificationHandler(ToolListChangedNotificationSchema, () => void fedNotices++);
    other.client.setNotificationHandler(ToolListChangedNotificationSchema, () => void otherNotices++);
    // the SDK client opens its GET stream after initialization; a notice sent before the edge holds it is lost
    await until("the edge to hold both GET streams", () => [fed.transport.sessionId!, other.transport.sessionId!].every((id) => w.edge.listeningSessions().includes(sessionKey(id))), 20_000);
    await putCatalog(w, gidA, {
      tools: [{ name: "echo", description: "a", inputSchema: { type: "object" } }, { name: "fresh", inputSchema: { type: "object" } }],
      prompts: [{ name: "greet" }],
      resources: [{ uri: "fixture://info", name: "info" }],
      resourceTemplates: [{ uriTemplate: "fixture://items/{id}", name: "item" }],
    });
    await until("list_changed on the federated session", () => fedNotices > 0);
    assert.ok((await fed.client.listTools()).tools.some((t) => t.name === "alpha__fresh"));
    assert.equal(otherNotices, 0, "a session that only sees beta was not told");
    await fed.client.close();
    await other.client.close();
  });

  it("ends a session on DELETE, publishing its closed event; the session id is then unknown", async () => {
    const { client, transport } = await connectClient(w.edge.url);
    const id = transport.sessionId!;
    assert.match(id, /^[A-Za-z0-9_-]+$/);
    const sid = sessionKey(id);
    assert.ok(await w.stores.sessions.get(KEYS.downstreamSession(sid)));
    const closed = new Promise<unknown>((resolve) => {
      const sub = w.nc.subscribe(s.evt.sessionClosed(sid), { max: 1, callback: (_e, m) => resolve(m.json()) });
      void sub;
    });
    await w.nc.flush();
    await transport.terminateSession();
    const event = SessionClosedEventSchema.parse(await closed);
    assert.equal(event.sid, sid);
    const after = await raw(w.edge.port, { headers: { "mcp-session-id": id }, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }) });
    assert.equal(after.status, 404);
    await client.close();
  });

  it("ends an idle session with its closed event, but not one whose client listens on the GET stream", async () => {
    // its own prefix (buckets, subjects): a 1 s idle TTL must not sweep the other tests' sessions
    const idle = await startTestWorker(nats, { MCPGW_WORKER_ID: "edge-idle", MCPGW_SUBJECT_PREFIX: "idle", MCPGW_EDGE_SESSION_IDLE_TTL: "1s" });
    const si = subjects("idle");
    try {
      const closed: string[] = [];
      idle.nc.subscribe(si.evt.sessionAll, { callback: (_e, m) => void closed.push(SessionClosedEventSchema.parse(m.json()).sid) });
      const init = await raw(idle.edge.port, { body: INIT });
      const quiet = String(init.headers["mcp-session-id"]);
      const { client, transport } = await connectClient(idle.edge.url);
      const listening = sessionKey(transport.sessionId!);
      // listening means the edge holds its GET stream, which the SDK client opens just after initialization
      await until("the edge to hold the GET stream", () => idle.edge.listeningSessions().includes(listening), 20_000);
      await until("the quiet session ended", () => closed.includes(sessionKey(quiet)), 30_000);
      await new Promise((r) => setTimeout(r, 2_500)); // more than twice the TTL without a request
      assert.ok(!closed.includes(listening), "a listening client's session is kept");
      assert.ok(Array.isArray((await client.listTools()).tools));
      const gone = await raw(idle.edge.port, { headers: { "mcp-session-id": quiet }, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }) });
      assert.equal(gone.status, 404);
      await client.close();
    } finally {
      await idle.stop();
    }
  });

  it("refuses what it must: 401, DNS rebinding, 413, malformed JSON-RPC, missing and unknown sessions", async () => {
    const noToken = await raw(secured.edge.port, { body: INIT });
    assert.equal(noToken.status, 401);
    assert.match(String(noToken.headers["www-authenticate"]), /^Bearer/);
    const wrong = await raw(secured.edge.port, { body: INIT, headers: { authorization: `Bearer ${TOKEN.replace(/.$/, "X")}` } });
    assert.equal(wrong.status, 401);
    const good = await raw(secured.edge.port, { body: INIT, headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(good.status, 200, good.body);
    assert.match(String(good.headers["mcp-session-id"]), /^[A-Za-z0-9_-]+$/);
    const viaSdk = await connectClient(secured.edge.url, { token: TOKEN });
    assert.ok((await viaSdk.client.listTools()).tools.length > 0);
    await viaSdk.client.close();

    const rebound = await raw(w.edge.port, { body: INIT, headers: { host: `evil.example:${w.edge.port}` } });
    assert.equal(rebound.status, 403);
    assert.match(rebound.body, /Host header not allowed/);
    const badOrigin = await raw(w.edge.port, { body: INIT, headers: { origin: "http://evil.example" } });
    assert.equal(badOrigin.status, 403);
    const goodOrigin = await raw(w.edge.port, { body: INIT, headers: { host: `localhost:${w.edge.port}`, origin: `http://localhost:${w.edge.port}` } });
    assert.equal(goodOrigin.status, 200);

    const large = await raw(w.edge.port, { body: Buffer.alloc(70_000, 0x20) });
    assert.equal(large.status, 413);

    const notJson = await raw(w.edge.port, { body: "{nope" });
    assert.equal(notJson.status, 400);
    assert.equal(JSON.parse(notJson.body).error.code, -32700);
    const notRpc = await raw(w.edge.port, { body: JSON.stringify({ hello: "world" }) });
    assert.equal(JSON.parse(notRpc.body).error.code, -32600);
    const emptyBatch = await raw(w.edge.port, { body: "[]" });
    assert.equal(JSON.parse(emptyBatch.body).error.code, -32600);

    const noSession = await raw(w.edge.port, { body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }) });
    assert.equal(noSession.status, 400);
    const unknown = await raw(w.edge.port, { headers: { "mcp-session-id": "no-such-session" }, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }) });
    assert.equal(unknown.status, 404);
    const badId = await raw(w.edge.port, { headers: { "mcp-session-id": "a.b*c" }, body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" }) });
    assert.equal(badId.status, 404);
    const noGateway = await raw(w.edge.port, { path: "/gateways/nope/mcp", body: INIT });
    assert.equal(noGateway.status, 404);

    // still serving after all that
    const ok = await raw(w.edge.port, { body: INIT });
    assert.equal(ok.status, 200);
  });

  it("answers a 17 MB upload with a clean 413 and its JSON-RPC error, and the connection serves on", async () => {
    const MB = 1024 * 1024;
    const refusal = { jsonrpc: "2.0", id: null, error: { code: -32600, message: `request body larger than ${16 * MB} bytes` } };
    const headers = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json", accept: "application/json, text/event-stream" };
    const body = Buffer.alloc(17 * MB, 0x20);
    // undici's fetch (as the SDK's client sends): Content-Length known, refused before a byte is read
    for (let i = 0; i < 3; i++) {
      const res = await fetch(secured.edge.url, { method: "POST", headers, body });
      assert.equal(res.status, 413);
      assert.deepEqual(await res.json(), refusal);
    }
    // streamed in chunks (no Content-Length): refused part way through, with no reset of the
    // connection (EPIPE, ECONNRESET) at any time; the same socket then serves an initialize
    const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
    const socketErrors: string[] = [];
    try {
      const streamed = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpRequest({ host: "127.0.0.1", port: secured.edge.port, path: "/mcp", method: "POST", agent, headers: { ...headers, "transfer-encoding": "chunked" } }, (res) => {
          let text = "";
          res.setEncoding("utf8").on("data", (c: string) => (text += c));
          res.on("end", () => resolve({ status: res.statusCode!, body: text }));
        });
        req.on("error", reject);
        req.on("socket", (socket) => socket.on("error", (err: NodeJS.ErrnoException) => socketErrors.push(err.code ?? err.message)));
        void (async () => {
          for (let sent = 0; sent < body.length; sent += 64 * 1024) if (!req.write(body.subarray(sent, sent + 64 * 1024))) await once(req, "drain");
          req.end();
        })().catch(reject);
      });
      assert.deepEqual([streamed.status, JSON.parse(streamed.body)], [413, refusal]);
      const next = await new Promise<{ status: number; reused: boolean }>((resolve, reject) => {
        const req = httpRequest({ host: "127.0.0.1", port: secured.edge.port, path: "/mcp", method: "POST", agent, headers }, (res) => {
          res.resume().on("end", () => resolve({ status: res.statusCode!, reused: req.reusedSocket }));
        });
        req.on("error", reject);
        req.end(INIT);
      });
      assert.deepEqual(next, { status: 200, reused: true });
      assert.deepEqual(socketErrors, []);
    } finally {
      agent.destroy();
    }
  });

  it("answers an upload more than 16 MB over the limit with its 413 first, then cuts the connection", async () => {
    // w's limit is 64 KB; the client streams on, past the bound of what is read and dropped
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let closed!: Promise<unknown>;
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest({ host: "127.0.0.1", port: w.edge.port, path: "/mcp", method: "POST", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", "transfer-encoding": "chunked" } }, (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode!, body: text }));
      });
      req.on("socket", (socket) => (closed = once(socket, "close")));
      req.on("error", reject); // only before the answer: the cut comes after it
      void (async () => {
        for (let sent = 0; sent < 64 * 1024 * 1024 && !req.destroyed; sent += chunk.length) if (!req.write(chunk)) await Promise.race([once(req, "drain"), once(req, "close")]);
      })().catch(() => {});
    });
    assert.deepEqual([answer.status, JSON.parse(answer.body).error], [413, { code: -32600, message: "request body larger than 65536 bytes" }]);
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise((_, reject) => (bound = setTimeout(() => reject(new Error("the connection was not cut")), 30_000)))]);
    clearTimeout(bound);
  });

  it("answers /healthz and /readyz", async () => {
    assert.equal((await raw(w.edge.port, { method: "GET", path: "/healthz" })).status, 200);
    const ready = await raw(secured.edge.port, { method: "GET", path: "/readyz" });
    assert.equal(ready.status, 200, "no token needed for probes");
    assert.equal(JSON.parse(ready.body).status, "ready");
  });
});


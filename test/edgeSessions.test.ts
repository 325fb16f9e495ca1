import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { sessionKey } from "../protocol/edge.ts";
import { buckets, KEYS } from "../protocol/subjects.ts";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, putCatalog, raw, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const TOKEN_A = `token-a-${randomBytes(12).toString("hex")}`;
const TOKEN_B = `token-b-${randomBytes(12).toString("hex")}`;
const text = (r: unknown) => ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? "");
const decoder = new TextDecoder();

describe("edge: a client session belongs to the credential that created it", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w: TestWorker;
  let gid: string;
  let discovered: Awaited<ReturnType<typeof listCatalog>>;
  let spy: NatsConnection;
  /** every message on the bus while the tests run (KV writes, JetStream API calls and replies included) */
  const bus: Array<{ subject: string; data: string }> = [];
  const tap = (subject: string) => spy.subscribe(subject, { callback: (_e, m) => void bus.push({ subject: m.subject, data: decoder.decode(m.data) }) });
  /** client session ids the tests made: none may leave the edge */
  const clientIds: string[] = [];

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    spy = await nats.connect("runtime");
    // Not `>`: a listener on an actor's address would answer for it (no more "no responders",
    // so no spawn); actor addresses are tapped below once their actors exist.
    for (const subject of ["$KV.>", "$JS.>", "_INBOX.>", "mcpgw.evt.>", "mcpgw.internal.>", "mcpgw.admin.>"]) tap(subject);
    await spy.flush();
    w = await startTestWorker(nats, { MCPGW_WORKER_ID: "owner-w1", MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: `${TOKEN_A},${TOKEN_B}` });
    gid = (await w.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("counter") })).id;
    const discovery = new Client({ name: "discovery", version: "1" });
    await discovery.connect(new StreamableHTTPClientTransport(new URL(fixture.url("counter"))));
    discovered = await listCatalog(discovery, 10_000);
    await putCatalog(w, gid, discovered);
    await discovery.close();
  });
  after(async () => {
    await w?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("gives token B the same 404 for token A's session as for an unknown id, on POST, GET and DELETE; A's session is untouched", async () => {
    const a = await connectClient(w.edge.url, { token: TOKEN_A });
    const id = a.transport.sessionId!;
    clientIds.push(id);
    let notices = 0;
    a.client.setNotificationHandler(ToolListChangedNotificationSchema, () => void notices++);
    await a.client.callTool({ name: "counter__increment", arguments: {} });
    await a.client.callTool({ name: "counter__increment", arguments: {} });
    await until("the edge to hold A's GET stream", () => w.edge.listeningSessions().includes(sessionKey(id)), 20_000);
    const upstreamSessions = fixture.gateway("counter").opened.length;

    const unknownId = randomBytes(16).toString("base64url");
    const asB = (sessionId: string, method: string, body?: string) =>
      raw(w.edge.port, { method, headers: { authorization: `Bearer ${TOKEN_B}`, "mcp-session-id": sessionId }, body, timeoutMs: 20_000 });
    const call = (name: string) => JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name, arguments: {} } });
    for (const [method, body] of [
      ["POST", call("counter__get_count")],
      ["POST", call("counter__increment")],
      ["GET", undefined],
      ["DELETE", undefined],
    ] as const) {
      const stolen = await asB(id, method, body);
      const unknown = await asB(unknownId, method, body);
      assert.equal(stolen.status, 404, `${method} with B: ${stolen.body}`);
      assert.deepEqual([stolen.status, stolen.body], [unknown.status, unknown.body], `${method}: the same answer as an unknown id`);
      assert.equal(stolen.headers["mcp-session-id"], undefined);
    }

    // nothing reached A's upstream session, A's count is as A left it, A's GET stream still hears changes
    assert.equal(fixture.gateway("counter").opened.length, upstreamSessions, "no upstream session was opened for B");
    assert.equal(text(await a.client.callTool({ name: "counter__get_count", arguments: {} })), "2");
    assert.ok(w.edge.listeningSessions().includes(sessionKey(id)));
    await putCatalog(w, gid, { ...discovered, tools: [...discovered.tools, { name: "added", inputSchema: { type: "object" } }] });
    await until("tools/list_changed on A's GET stream", () => notices > 0, 20_000);

    // and the owner itself may still end it
    await a.transport.terminateSession();
    assert.equal((await w.stores.sessions.get(KEYS.downstreamSession(sessionKey(id))))?.operation, "DEL");
    await a.client.close();
  });

  it("keeps the client's session id out of every KV key and value, every bus message and every log line; tokens too", async () => {
    // a second session, used for calls and left open: its id would be in KV now if it were anywhere
    const b = await connectClient(w.edge.url, { token: TOKEN_B });
    clientIds.push(b.transport.sessionId!);
    await b.client.callTool({ name: "counter__increment", arguments: {} });
    // a call at the worker hosting the actor stays in process: one through a second worker crosses the bus
    const w2 = await startTestWorker(nats, { MCPGW_WORKER_ID: "owner-w2", MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: `${TOKEN_A},${TOKEN_B}` });
    const actors = tap("mcpgw.upstream.>");
    await spy.flush();
    await b.client.callTool({ name: "counter__increment", arguments: {} });
    const headersB = { authorization: `Bearer ${TOKEN_B}`, "mcp-session-id": b.transport.sessionId!, "mcp-protocol-version": b.transport.protocolVersion ?? "2025-06-18" };
    const getCount = JSON.stringify({ jsonrpc: "2.0", id: 99, method: "tools/call", params: { name: "counter__get_count", arguments: {} } });
    await until("a call through the second worker", async () => /"text":"2"/.test((await raw(w2.edge.port, { headers: headersB, body: getCount })).body), 20_000);
    actors.unsubscribe();
    await spy.flush();
    await w2.stop();

    const kv: string[] = [];
    for (const bucket of [w.stores.state, w.stores.gateways, w.stores.catalog, w.stores.sessions]) {
      for await (const key of await bucket.keys()) {
        const e = await bucket.get(key);
        kv.push(key, e ? e.string() : "");
      }
    }
    const keyB = sessionKey(b.transport.sessionId!);
    // the scans can find what they look for: the session keys are there
    assert.ok(kv.includes(KEYS.downstreamSession(keyB)));
    assert.ok(bus.some((m) => m.subject === `mcpgw.upstream.${keyB}.${gid}.call`), "the call went to the actor named by the key");
    assert.ok(bus.some((m) => m.subject === `mcpgw.evt.session.${sessionKey(clientIds[0]!)}.closed`), "A's closed event names its key");

    for (const secret of [...clientIds, TOKEN_A, TOKEN_B]) {
      assert.ok(!kv.some((s) => s.includes(secret)), `KV holds ${secret}`);
      const onBus = bus.find((m) => m.subject.includes(secret) || m.data.includes(secret));
      assert.equal(onBus, undefined, `bus message on ${onBus?.subject}`);
      assert.equal(w.lines.find((l) => l.includes(secret)), undefined);
      assert.equal(w2.lines.find((l) => l.includes(secret)), undefined);
    }
    await b.client.close();
  });

  it("lets viewer list the sessions bucket, which shows session keys and owner digests, never an id", async () => {
    const viewer = await nats.connect("viewer");
    const sessions = await new Kvm(viewer).open(buckets().sessions);
    const keys: string[] = [];
    for await (const k of await sessions.keys()) keys.push(k);
    const live = clientIds.slice(1).map((id) => KEYS.downstreamSession(sessionKey(id)));
    assert.ok(live.every((k) => keys.includes(k)), keys.join(" "));
    for (const k of keys) {
      assert.match(k, /^(ds\.[0-9a-f]{32}|up\.[0-9a-f]{32}\.[0-9a-f]{16})$/);
      const value = (await sessions.get(k))?.string() ?? "";
      for (const secret of [...clientIds, TOKEN_A, TOKEN_B]) assert.ok(!value.includes(secret), `${k} holds ${secret}`);
    }
  });
});

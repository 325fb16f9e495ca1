import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { sessionKey } from "../protocol/edge.ts";
import { subjects } from "../protocol/subjects.ts";
import { decodeJson } from "../runtime/bus.ts";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { ToolListChangedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import { connectClient, putCatalog, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const EVERYTHING = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js");

/**
 * One-shot discovery into the catalog bucket: lists the upstream with a real SDK client and
 * stores what it answered (the poller's discovery does this in production).
 */
async function discover(w: TestWorker, gid: string, transport: Transport): Promise<void> {
  const client = new Client({ name: "discovery", version: "1" });
  await client.connect(transport);
  const lists = await listCatalog(client, 10_000);
  await client.close();
  await putCatalog(w, gid, lists);
}

/** a hang bound, never reached by a working call */
const CALL_TIMEOUT = "30s";
const text = (r: unknown) => ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? "");

describe("edge: calls through upstream session actors", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w1: TestWorker;
  let w2: TestWorker;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    // the call timeout also bounds an upstream session's connect: server-everything over stdio
    // (a node process importing the SDK) takes more than 5 s to start on a loaded machine
    w1 = await startTestWorker(nats, { MCPGW_WORKER_ID: "up-w1", MCPGW_CALL_TIMEOUT: CALL_TIMEOUT, MCPGW_LIST_CHANGED_DEBOUNCE: "100ms" });
    w2 = await startTestWorker(nats, { MCPGW_WORKER_ID: "up-w2", MCPGW_CALL_TIMEOUT: CALL_TIMEOUT });
    const counter = await w1.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("counter") });
    await discover(w1, counter.id, new StreamableHTTPClientTransport(new URL(fixture.url("counter"))));
    const everything = await w1.registry.add({ name: "everything", transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } });
    await discover(w1, everything.id, new StdioClientTransport({ command: process.execPath, args: [EVERYTHING, "stdio"], stderr: "ignore" }));
    const flaky = await w1.registry.add({ name: "flaky", transport: "streamable-http", url: fixture.url("flaky") });
    await discover(w1, flaky.id, new StreamableHTTPClientTransport(new URL(fixture.url("flaky"))));
  });
  after(async () => {
    await w1?.stop();
    await w2?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("lists the federated tools of two gateways, one being server-everything, and calls both", async () => {
    const { client } = await connectClient(w1.edge.url);
    const names = (await client.listTools()).tools.map((t) => t.name);
    assert.ok(names.includes("counter__echo"), names.join(","));
    assert.ok(names.includes("everything__echo"), names.join(","));
    assert.equal(text(await client.callTool({ name: "counter__echo", arguments: { text: "from fixture" } })), "from fixture");
    assert.match(text(await client.callTool({ name: "everything__echo", arguments: { message: "from everything" } })), /from everything/);
    const progress: number[] = [];
    const r = await client.callTool({ name: "counter__progress", arguments: { steps: 3 } }, undefined, { onprogress: (p) => void progress.push(p.progress) });
    assert.equal(text(r), "done 3");
    assert.deepEqual(progress, [1, 2, 3], "progress notifications reach the request they belong to");
    await client.close();
  });

  it("keeps two clients' upstream sessions apart (isolation reproducer: 5 and 3)", async () => {
    const a = await connectClient(w1.edge.url, { name: "a" });
    const b = await connectClient(w1.edge.url, { name: "b" });
    for (let i = 0; i < 5; i++) await a.client.callTool({ name: "counter__increment", arguments: {} });
    for (let i = 0; i < 3; i++) await b.client.callTool({ name: "counter__increment", arguments: {} });
    assert.equal(text(await a.client.callTool({ name: "counter__get_count", arguments: {} })), "5");
    assert.equal(text(await b.client.callTool({ name: "counter__get_count", arguments: {} })), "3");
    await a.client.close();
    await b.client.close();
  });

  it("serves one session from two workers alternately, and goes on at one when the other is gone", async () => {
    const w3 = await startTestWorker(nats, { MCPGW_WORKER_ID: "up-w3", MCPGW_CALL_TIMEOUT: CALL_TIMEOUT });
    const ports = [w3.edge.port, w2.edge.port];
    const hits = new Map<number, number>();
    let n = 0;
    let onlyW2 = false;
    const alternating: typeof fetch = (input, init) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      url.port = String(onlyW2 ? w2.edge.port : ports[n++ % 2]);
      hits.set(Number(url.port), (hits.get(Number(url.port)) ?? 0) + 1);
      return fetch(url, init);
    };
    const { client } = await connectClient(w2.edge.url, { fetch: alternating });
    for (let i = 0; i < 4; i++) await client.callTool({ name: "counter__increment", arguments: {} });
    assert.equal(text(await client.callTool({ name: "counter__get_count", arguments: {} })), "4");
    assert.ok((hits.get(w3.edge.port) ?? 0) >= 3 && (hits.get(w2.edge.port) ?? 0) >= 3, JSON.stringify([...hits]));

    await w3.stop();
    await w3.nc.close();
    onlyW2 = true;
    // the session goes on: same session id, calls answered (the upstream session is respawned if it lived on w3)
    const r = await client.callTool({ name: "counter__increment", arguments: {} });
    assert.match(text(r), /^(1|5)$/);
    assert.ok((await client.listTools()).tools.length > 0);
    await client.close();
  });

  it("tells connected clients tools/list_changed when a tool is added upstream, and lists the new tool", async () => {
    const { client } = await connectClient(w1.edge.url);
    let notices = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => void notices++);
    await client.callTool({ name: "counter__get_count", arguments: {} }); // an upstream session exists to hear the change
    // its GET stream opens just after initialize; a notice sent before it is lost (the poll would catch it later)
    await until("the upstream session's GET stream", () => fixture.gateway("counter").stats.openGetStreams > 0);
    fixture.gateway("counter").toolbox.add("brand_new");
    await until("tools/list_changed", () => notices > 0, 20_000);
    assert.ok((await client.listTools()).tools.some((t) => t.name === "counter__brand_new"));
    fixture.gateway("counter").toolbox.remove("brand_new");
    await client.close();
  });

  it("answers a call to a gateway that is down with a clear error naming it, without hanging", async () => {
    const { client } = await connectClient(w1.edge.url);
    fixture.setDown("flaky", true);
    // The upstream answers 503: the call fails at once with "unavailable" naming the gateway,
    // not a timeout (-32001, "did not answer in time"), which would be a wait for nothing. The
    // SDK request timeout only stops a hang.
    await assert.rejects(client.callTool({ name: "flaky__echo", arguments: { text: "x" } }, undefined, { timeout: 30_000 }), (err: any) => {
      assert.equal(err.code, -32000, err.message);
      assert.match(err.message, /^MCP error -32000: gateway flaky unavailable: .*cannot connect/);
      assert.deepEqual(err.data, { gateway: "flaky" });
      return true;
    });
    assert.equal(fixture.gateway("flaky").stats.calls.echo ?? 0, 0, "the upstream never ran the tool");
    fixture.setDown("flaky", false);
    await client.close();
  });
  it("sends the upstream only the client headers its gateway lets through, filtered at the edge", async () => {
    const gw = await w1.registry.add({ name: "hdr", transport: "streamable-http", url: fixture.url("hdr"), passthroughHeaders: ["X-Tenant"] });
    await discover(w1, gw.id, new StreamableHTTPClientTransport(new URL(fixture.url("hdr"))));
    const withHeaders: typeof fetch = (input, init) => {
      const headers = new Headers(init?.headers);
      headers.set("x-tenant", "t1");
      headers.set("x-other", "no");
      return fetch(input, { ...init, headers });
    };
    const { client, transport } = await connectClient(w1.edge.url, { fetch: withHeaders });
    await until("the hdr gateway's tools", async () => (await client.listTools()).tools.some((t) => t.name === "hdr__echo"));
    // the first call places the actor (a subscriber of its subject before that would hide "no responders")
    assert.equal(text(await client.callTool({ name: "hdr__echo", arguments: { text: "first" } })), "first");
    // what the next call's message on the bus carries, seen by a second subscriber of the actor's call subject;
    // it is sent through the second worker's edge (a call at the hosting worker stays in process)
    const seen: Array<{ headers?: Record<string, string> }> = [];
    const sub = w1.nc.subscribe(subjects("mcpgw").upstream.op(sessionKey(transport.sessionId!), gw.id, "call"), { callback: (_e, m) => void seen.push(decodeJson(m.data) as { headers?: Record<string, string> }) });
    await w1.nc.flush();
    const viaW2 = await fetch(w2.edge.url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-session-id": transport.sessionId!,
        "mcp-protocol-version": transport.protocolVersion ?? "2025-06-18",
        "x-tenant": "t1",
        "x-other": "no",
      },
      body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "hdr__echo", arguments: { text: "h" } } }),
    });
    assert.match(await viaW2.text(), /"text":"h"/);
    sub.unsubscribe();
    assert.ok(seen.length > 0, "the call crossed the bus");
    for (const m of seen) assert.deepEqual(m.headers, { "x-tenant": "t1" });
    await client.close();
  });
});

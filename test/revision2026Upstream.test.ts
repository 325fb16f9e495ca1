// The 2026-07-28 upstream connection against the Python MCP SDK's stateless server (which
// offers nothing else), and against a session-era server it must tell apart.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { OutboundPolicy } from "../actors/outboundPolicy.ts";
import { CatalogSchema } from "../protocol/catalog.ts";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { AnswerTooLargeError } from "../runtime/mcpClient.ts";
import { OutboundRefusedError } from "../runtime/outboundConnector.ts";
import { listStatelessCatalog } from "../runtime/pollerEffects.ts";
import { connectEitherEra, connectStatelessUpstream, encodeHeaderValue, NotStatelessUpstreamError, type StatelessConnectOptions, type StatelessUpstream } from "../runtime/revision2026Upstream.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { pythonSkip, startPythonStatelessServer } from "./helpers/python.ts";
import { gatewayRecord } from "./helpers/gateways.ts";

const record = (url: string): GatewayRecord => gatewayRecord({ name: "py-stateless", transport: "streamable-http", url });

const text = (r: Record<string, unknown>) => ((r.content as Array<{ text?: string }>)[0]?.text ?? "");
const call = (signal = AbortSignal.timeout(30_000)) => ({ headers: {}, signal });

describe("an upstream that speaks only 2026-07-28 (the Python SDK's stateless server)", { skip: pythonSkip() }, () => {
  let server: { url: string; stop(): Promise<void> };
  let fixture: FixtureHttp;
  let conn: StatelessUpstream;
  const notifications: Array<{ method: string }> = [];
  const options = (url: string, extra: Partial<StatelessConnectOptions> = {}): StatelessConnectOptions => ({
    record: record(url),
    open: () => assert.fail("this gateway has no secrets"),
    capabilities: {},
    initialHeaders: {},
    timeoutMs: 30_000,
    outbound: { deny: [] },
    onNotification: (n) => void notifications.push(n),
    ...extra,
  });

  before(async () => {
    [server, fixture] = await Promise.all([startPythonStatelessServer(), startFixtureHttp()]);
    conn = await connectStatelessUpstream(options(server.url));
  });
  after(async () => {
    await conn?.close();
    await server?.stop();
    await fixture?.close();
  });

  it("connects with server/discover: the version both speak, what the upstream offers", () => {
    assert.equal(conn.version, "2026-07-28");
    assert.deepEqual(conn.discovered.supportedVersions, ["2026-07-28"]);
    assert.ok(conn.discovered.capabilities.tools);
    assert.equal(conn.discovered.instructions, "A stateless test upstream.");
  });

  it("lists tools, with the upstream's cache hints as it sent them", async () => {
    const r = await conn.request({ method: "tools/list" }, call());
    assert.ok("result" in r);
    const names = (r.result.tools as Array<{ name: string }>).map((t) => t.name).sort();
    assert.deepEqual(names, ["counter_add", "counter_new", "echo", "fail", "greet", "progress"]);
    assert.equal(r.result.ttlMs, 60_000);
    assert.equal(r.result.cacheScope, "public");
  });

  it("calls tools, with state carried in an explicit handle across separate requests", async () => {
    const echo = await conn.request({ method: "tools/call", params: { name: "echo", arguments: { text: "über" } } }, call());
    assert.ok("result" in echo);
    assert.equal(text(echo.result), "über");
    const made = await conn.request({ method: "tools/call", params: { name: "counter_new", arguments: {} } }, call());
    assert.ok("result" in made);
    const handle = text(made.result);
    for (const expected of ["2", "5"]) {
      const r = await conn.request({ method: "tools/call", params: { name: "counter_add", arguments: { handle, by: expected === "2" ? 2 : 3 } } }, call());
      assert.ok("result" in r);
      assert.equal(text(r.result), expected);
    }
  });

  it("passes the upstream's tool errors and JSON-RPC errors back unchanged", async () => {
    const tool = await conn.request({ method: "tools/call", params: { name: "fail", arguments: { message: "boom" } } }, call());
    assert.ok("result" in tool);
    assert.equal(tool.result.isError, true);
    const unknown = await conn.request({ method: "prompts/get", params: { name: "no-such-prompt" } }, call());
    assert.ok("rpcError" in unknown, JSON.stringify(unknown));
    assert.equal(typeof unknown.rpcError.code, "number");
    const noMethod = await conn.request({ method: "no/such/method" }, call());
    assert.ok("rpcError" in noMethod, JSON.stringify(noMethod));
    assert.equal(noMethod.rpcError.code, -32601);
  });

  it("relays progress from the request's own stream", async () => {
    const seen: number[] = [];
    const r = await conn.request({ method: "tools/call", params: { name: "progress", arguments: { steps: 3 } } }, { ...call(), onprogress: (p) => void seen.push(p.progress) });
    assert.ok("result" in r);
    assert.equal(text(r.result), "done 3");
    assert.deepEqual(seen, [1, 2, 3]);
  });

  it("ends a call at once when its signal aborts (closing the stream is the revision's cancellation)", async () => {
    const abort = new AbortController();
    const seen: number[] = [];
    const pending = conn.request({ method: "tools/call", params: { name: "progress", arguments: { steps: 100, pause: 0.2 } } }, {
      headers: {},
      signal: abort.signal,
      onprogress: (p) => {
        seen.push(p.progress);
        if (p.progress === 2) abort.abort(new Error("cancelled by the client"));
      },
    });
    await assert.rejects(pending, /cancelled by the client/);
    assert.ok(seen.length < 100);
    // the connection goes on serving
    const r = await conn.request({ method: "tools/call", params: { name: "echo", arguments: { text: "after" } } }, call());
    assert.ok("result" in r);
    assert.equal(text(r.result), "after");
  });

  it("ends an answer that grows past the limit where it is", async () => {
    const small = await connectStatelessUpstream(options(server.url, { maxAnswerBytes: 2_000 }));
    try {
      await assert.rejects(small.request({ method: "tools/call", params: { name: "echo", arguments: { text: "x".repeat(10_000) } } }, call()), AnswerTooLargeError);
    } finally {
      await small.close();
    }
  });

  it("discovers the upstream's catalog as the poller's discovery stores it", async () => {
    const lists = await listStatelessCatalog(conn, 30_000);
    assert.deepEqual(lists.tools.map((t) => t.name).sort(), ["counter_add", "counter_new", "echo", "fail", "greet", "progress"]);
    assert.deepEqual([lists.prompts.length, lists.resources.length, lists.resourceTemplates.length], [0, 0, 0]);
    assert.ok(CatalogSchema.pick({ tools: true, prompts: true, resources: true, resourceTemplates: true }).safeParse(lists).success);
  });

  it("tells a session-era upstream apart: its refusal of server/discover is no stateless upstream", async () => {
    await assert.rejects(connectStatelessUpstream(options(fixture.url("counter"))), NotStatelessUpstreamError);
  });

  it("connects in whichever era the upstream speaks, whatever era was known: a wrong one costs one more try", async () => {
    const base = { open: () => assert.fail("no secrets"), initialHeaders: {}, timeoutMs: 30_000, outbound: { deny: [] }, onNotification: () => {}, onClosed: () => {}, onError: () => {} };
    const cases = [
      [server.url, undefined, "stateless"],
      [server.url, "session", "stateless"],
      [fixture.url("era"), undefined, "session"],
      [fixture.url("era"), "stateless", "session"],
      [fixture.url("era"), "session", "session"],
    ] as const;
    for (const [url, known, want] of cases) {
      const opened = fixture.gateway("era").opened.length;
      const requests = fixture.gateway("era").stats.headers.length;
      const c = await connectEitherEra({ ...base, record: record(url) }, known);
      await c.conn.close();
      assert.equal(c.era, want, `${url} known as ${known}`);
      if (url === server.url) continue;
      assert.equal(fixture.gateway("era").opened.length - opened, 1, "one session opened");
      // initialize, initialized, its GET stream and DELETE; a probe first unless the era was known to be session
      const probes = fixture.gateway("era").stats.headers.filter((h, i) => i >= requests && h["mcp-protocol-version"] === "2026-07-28").length;
      assert.equal(probes, known === "session" ? 0 : 1);
    }
  });

  it("attack: an upstream address the outbound policy denies is never reached", async () => {
    const denyLoopback: OutboundPolicy = { deny: ["loopback"] };
    await assert.rejects(connectStatelessUpstream(options(server.url, { outbound: denyLoopback })), (err: Error) => err.cause instanceof OutboundRefusedError || err instanceof OutboundRefusedError);
  });

  it("mirrors names into headers as the revision encodes them", () => {
    assert.equal(encodeHeaderValue("echo"), "echo");
    assert.equal(encodeHeaderValue("über"), `=?base64?${Buffer.from("über").toString("base64")}?=`);
    assert.equal(encodeHeaderValue(" padded"), `=?base64?${Buffer.from(" padded").toString("base64")}?=`);
  });
});

// The edge's stateless (2026-07-28) path, driven by the Python SDK 2.3.0 client in `2026-07-28`
// and `auto` mode through a real worker, next to a 2025-11-25 session client on the same
// worker: the answers are the revision's as a real client reads them, two credentials keep
// their upstream state apart, and one credential's calls reuse one upstream session per gateway.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { putCatalog } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { callText, pythonSkip, runPythonClients } from "./helpers/python.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const TOKENS = ["token-a-0123456789", "token-b-0123456789", "token-c-0123456789", "token-s-0123456789"];

describe("the edge's stateless path, driven by the Python SDK 2.3.0 client", { skip: pythonSkip() }, () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w: TestWorker;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    w = await startTestWorker(nats, { MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: TOKENS.join(","), MCPGW_CALL_TIMEOUT: "30s", MCPGW_LIST_TTL: "30s" });
    const gid = (await w.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("py-path") })).id;
    const sdk = new Client({ name: "discovery", version: "1" });
    await sdk.connect(new StreamableHTTPClientTransport(new URL(fixture.url("py-path"))));
    await putCatalog(w, gid, await listCatalog(sdk, 30_000));
    await sdk.close();
  });
  after(async () => {
    await w?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("`2026-07-28` and `auto` clients list and call on both endpoints; two credentials keep separate upstream state; a session client works beside them", async () => {
    const inc = (name: string, n: number) => Array.from({ length: n }, () => [name, {}] as [string, Record<string, unknown>]);
    const virtual = w.edge.url.replace(/\/mcp$/, "/gateways/counter/mcp");
    const opened = fixture.gateway("py-path").opened.length;
    // the session client: its own upstream session, its own count, at the same time
    const session = new Client({ name: "session-client", version: "1" });
    await session.connect(new StreamableHTTPClientTransport(new URL(w.edge.url), { requestInit: { headers: { authorization: `Bearer ${TOKENS[3]}` } } }));
    const sessionCalls = (async () => {
      for (let i = 0; i < 2; i++) await session.callTool({ name: "counter__increment", arguments: {} });
      return session.callTool({ name: "counter__get_count", arguments: {} });
    })();
    const [a, b, auto] = await runPythonClients([
      { url: w.edge.url, mode: "2026-07-28", token: TOKENS[0], calls: [...inc("counter__increment", 5), ["counter__get_count", {}]] },
      { url: virtual, mode: "2026-07-28", token: TOKENS[1], calls: [...inc("increment", 3), ["get_count", {}]] },
      { url: virtual, mode: "auto", token: TOKENS[2], calls: [["echo", { text: "auto" }]] },
    ]);
    const sessionCount = await sessionCalls;
    await session.close();
    for (const r of [a!, b!, auto!]) {
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.protocolVersion, "2026-07-28", "auto negotiates the revision when discover answers");
      assert.equal(r.listTtlMs, 30_000, "lists carry MCPGW_LIST_TTL as the revision's ttlMs");
    }
    assert.ok(a!.tools?.includes("counter__increment"), JSON.stringify(a));
    assert.ok(b!.tools?.includes("increment"), JSON.stringify(b));
    assert.equal(callText(a!.calls?.at(-1)), "5");
    assert.equal(callText(b!.calls?.at(-1)), "3");
    assert.equal(callText(auto!.calls?.[0]), "auto");
    assert.equal((sessionCount.content as Array<{ text: string }>)[0]!.text, "2", "the session client's count is its own");
    assert.equal(fixture.gateway("py-path").opened.length - opened, 4, "one upstream session per credential (and one for the session client) for 18 calls");
  });

  it("a wrong token is refused before any state is touched; GET and DELETE of the revision are 405; an unserved version gets -32022", async () => {
    const opened = fixture.gateway("py-path").opened.length;
    const [bad] = await runPythonClients([{ url: w.edge.url, mode: "2026-07-28", token: "not-a-token-0123456789", calls: [["counter__increment", {}]] }]);
    assert.ok(bad!.error, JSON.stringify(bad));
    assert.equal(fixture.gateway("py-path").opened.length, opened);
    for (const method of ["GET", "DELETE"]) {
      const res = await fetch(w.edge.url, { method, headers: { authorization: `Bearer ${TOKENS[0]}`, accept: "text/event-stream", "mcp-protocol-version": "2026-07-28" } });
      assert.equal(res.status, 405, method);
      assert.equal(res.headers.get("allow"), "POST");
    }
    // a version mcpgw does not serve: the revision's error naming what it does, and no upstream touched
    const res = await fetch(w.edge.url, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKENS[0]}`, accept: "application/json, text/event-stream", "content-type": "application/json", "mcp-protocol-version": "2099-01-01", "mcp-method": "tools/list" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list", params: { _meta: { "io.modelcontextprotocol/protocolVersion": "2099-01-01", "io.modelcontextprotocol/clientCapabilities": {} } } }),
    });
    assert.equal(res.status, 400);
    const body = (await res.json()) as { error: { code: number; data: { supported: string[] } } };
    assert.deepEqual([body.error.code, body.error.data.supported], [-32022, ["2026-07-28"]]);
    assert.equal(fixture.gateway("py-path").opened.length, opened);
  });
});

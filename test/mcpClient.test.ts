// One upstream connection against a real MCP server over HTTP: what a close leaves behind.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import { GatewayRecordSchema, type GatewayRecord } from "../protocol/gateway.ts";
import { connectUpstream } from "../runtime/mcpClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { until } from "./helpers/wait.ts";

let fixture: FixtureHttp;

before(async () => {
  fixture = await startFixtureHttp();
});

after(async () => {
  await fixture?.close();
});

const record = (transport: "streamable-http" | "sse", url: string): GatewayRecord =>
  GatewayRecordSchema.parse({
    id: "0123456789abcdef",
    name: `close-${transport}`,
    transport,
    url,
    tags: [],
    description: "",
    enabled: true,
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
  });

describe("upstream connection close", () => {
  for (const transport of ["streamable-http", "sse"] as const) {
    it(`${transport}: a polite close leaves no socket open at the upstream`, async () => {
      const url = transport === "sse" ? fixture.sseUrl(`close-${transport}`) : fixture.url(`close-${transport}`);
      const conn = await connectUpstream({
        record: record(transport, url),
        open: () => assert.fail("this gateway has no secrets"),
        initialHeaders: {},
        timeoutMs: 5_000,
        outbound: DEFAULT_OUTBOUND_POLICY,
        onNotification: () => {},
        onClosed: () => {},
        onError: () => {},
      });
      await conn.client.listTools();
      assert.ok((await fixture.openConnections()) > 0, "the connection holds sockets while open");
      await conn.close();
      // the fixture keeps idle sockets for 60 s: only the client closing them ends them sooner
      await until("the upstream's sockets to close", async () => (await fixture.openConnections()) === 0);
    });
  }
});

describe("upstream connection handshake", () => {
  // The upstream answers initialize, then never the initialized notification: the SDK bounds
  // only the first half, so without a bound of its own the connect would wait forever.
  const connectFrozen = (name: string, timeoutMs: number, signal?: AbortSignal) => {
    fixture.setFrozenAfterInitialize(name, true);
    return connectUpstream({
      record: record("streamable-http", fixture.url(name)),
      open: () => assert.fail("this gateway has no secrets"),
      initialHeaders: {},
      timeoutMs,
      outbound: DEFAULT_OUTBOUND_POLICY,
      signal,
      onNotification: () => {},
      onClosed: () => {},
      onError: () => {},
    });
  };

  it("fails with a timeout when the upstream stops answering after initialize", async () => {
    await assert.rejects(connectFrozen("half-open", 500), /handshake not done within 500 ms/);
    assert.equal(fixture.gateway("half-open").opened.length, 1, "initialize was answered");
  });

  it("stops at once when aborted during the handshake's second half", async () => {
    const abort = new AbortController();
    const connecting = connectFrozen("half-open-abort", 600_000, abort.signal);
    await until("initialize answered", () => fixture.gateway("half-open-abort").opened.length === 1);
    abort.abort(new Error("poller stopped"));
    // the 10-minute timeout could not explain an end within the test's run
    await assert.rejects(connecting, /poller stopped/);
  });
});

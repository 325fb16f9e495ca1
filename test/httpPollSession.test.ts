// A poller's kept streamable-HTTP session against a real MCP server (the fixture over HTTP): one
// initialize, then pings and lists on the session as data; the upstream's errors as they came; a
// session the upstream forgot is a transport failure (the pool reconnects); the outbound policy holds.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { HttpPollSession } from "../runtime/httpPollSession.ts";
import { sharedUpstreamAgent } from "../runtime/mcpClient.ts";
import { PollConnections } from "../runtime/pollConnections.ts";
import { probeConnector } from "../runtime/pollerEffects.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { gatewayRecord } from "./helpers/gateways.ts";

let fixture: FixtureHttp;
const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
const connect = probeConnector(() => assert.fail("this gateway has no secrets"), DEFAULT_OUTBOUND_POLICY, agent);

before(async () => {
  fixture = await startFixtureHttp();
});

after(async () => {
  await agent.close();
  await fixture?.close();
});

const record = (name: string, url = fixture.url(name)): GatewayRecord =>
  gatewayRecord({ id: Buffer.from(name).toString("hex").padEnd(16, "0").slice(0, 16), name, transport: "streamable-http", url });

describe("HTTP poll session", () => {
  it("pings and lists on the one session it opened: one initialize for every poll", async () => {
    const conn = await connect(record("kept"), 5_000, () => {});
    for (let i = 0; i < 5; i++) await conn.check();
    const before = await conn.list();
    assert.ok(before.lists, "no fingerprint known: the lists are parsed");
    assert.deepEqual(await conn.list(undefined, before.fingerprint), { fingerprint: before.fingerprint, lists: null }, "the same lists again: not parsed");
    fixture.gateway("kept").toolbox.add("new_tool");
    const { lists, fingerprint } = await conn.list(undefined, before.fingerprint);
    assert.notEqual(fingerprint, before.fingerprint);
    assert.ok(lists, "a list changed: parsed");
    assert.ok(lists.tools.some((t) => t.name === "echo") && lists.tools.some((t) => t.name === "new_tool"));
    assert.ok(lists.prompts.length > 0 && lists.resources.length > 0);
    assert.equal(fixture.gateway("kept").stats.initializes, 1);
    assert.equal(fixture.gateway("kept").sessions.size, 1);
    await conn.close();
    assert.equal(fixture.gateway("kept").sessions.size, 0, "close ends the upstream session (DELETE)");
  });

  it("hands on the upstream's own JSON-RPC error with its code, and keeps the session", async () => {
    const conn = await connect(record("errors"), 5_000, () => {});
    await conn.check();
    // the same session as data, as the connector keeps it: an unknown method is the upstream's own error
    const sessionId = [...fixture.gateway("errors").sessions.keys()][0]!;
    const session = new HttpPollSession({ record: record("errors"), open: () => "", dispatcher: agent, sessionId, protocolVersion: "2025-06-18", capabilities: {} });
    await assert.rejects(session.request("no/such/method", undefined, { timeout: 5_000 }), (err: unknown) => err instanceof McpError && err.code === ErrorCode.MethodNotFound);
    await session.ping({ timeout: 5_000 });
    assert.equal(fixture.gateway("errors").stats.initializes, 1);
    await conn.close();
  });

  it("a session the upstream forgot fails as a transport error, and the pool's retry opens a new one", async () => {
    const pool = new PollConnections(connect, 2);
    const gw = record("forgot");
    await pool.use(gw, 5_000, (c) => c.check());
    const kept = fixture.gateway("forgot");
    await fixture.dropSessions("forgot");
    // the kept session is gone upstream: the ping fails as ConnectionClosed, the pool reconnects once
    await pool.use(gw, 5_000, (c) => c.check());
    assert.equal(kept.stats.initializes, 2);
    await pool.closeAll();
  });

  it("a frozen upstream is a timeout, not a transport failure", async () => {
    const conn = await connect(record("frozen"), 2_000, () => {});
    fixture.setFrozen("frozen", true);
    await assert.rejects(conn.check(), (err: unknown) => err instanceof McpError && err.code === ErrorCode.RequestTimeout);
    fixture.setFrozen("frozen", false);
    await conn.close();
  });

  it("an upstream answering 503 fails the poll as a transport failure", async () => {
    const conn = await connect(record("down"), 5_000, () => {});
    fixture.setDown("down", true);
    await assert.rejects(conn.check(), (err: unknown) => err instanceof McpError && err.code === ErrorCode.ConnectionClosed && /HTTP 503/.test(err.message));
    fixture.setDown("down", false);
    await conn.close();
  });
});

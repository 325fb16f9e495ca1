// One upstream connection against a real MCP server over HTTP: what a close leaves behind,
// what a shared keep-alive agent keeps apart, what each call carries, when a session opens
// its standalone stream, and how an answer that grows too large or breaks off ends.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { AnswerTooLargeError, connectUpstream, sharedUpstreamAgent, UpstreamRequestError, type ConnectOptions } from "../runtime/mcpClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startRawUpstream, type RawUpstream } from "./fixtures/rawUpstream.ts";
import { until } from "./helpers/wait.ts";
import { gatewayRecord } from "./helpers/gateways.ts";

let fixture: FixtureHttp;
let raw: RawUpstream;

before(async () => {
  fixture = await startFixtureHttp();
  raw = await startRawUpstream();
});

after(async () => {
  await fixture?.close();
  await raw?.close();
});

const record = (transport: "streamable-http" | "sse", url: string, extra: Record<string, unknown> = {}): GatewayRecord =>
  gatewayRecord({ ...extra, name: `close-${transport}`, transport, url });

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

const connect = (url: string, more: Partial<ConnectOptions> = {}) =>
  connectUpstream({
    record: record("streamable-http", url),
    open: () => assert.fail("this gateway has no secrets"),
    initialHeaders: {},
    timeoutMs: 20_000,
    outbound: DEFAULT_OUTBOUND_POLICY,
    onNotification: () => {},
    onClosed: () => {},
    onError: () => {},
    ...more,
  });

const never = () => new AbortController().signal;
const textOf = (outcome: unknown) => ((outcome as { result: { content: Array<{ text: string }> } }).result.content[0]!.text);

describe("connections sharing one keep-alive agent", () => {
  it("closing one session ends its own requests and standalone stream; the other goes on over the same agent", async () => {
    const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
    try {
      const a = await connect(fixture.url("shared-a"), { dispatcher: agent });
      const b = await connect(fixture.url("shared-b"), { dispatcher: agent });
      // the fixture declares list changes and logging: each session listens on its own GET stream
      await until("both standalone streams open", () => fixture.gateway("shared-a").stats.openGetStreams === 1 && fixture.gateway("shared-b").stats.openGetStreams === 1);
      const hanging = a.request({ method: "tools/call", params: { name: "hang" } }, { headers: {}, signal: never() });
      await until("the call reached the upstream", () => fixture.gateway("shared-a").stats.calls.hang === 1);
      const ended = assert.rejects(hanging, (err: unknown) => err instanceof UpstreamRequestError && err.transport, "the call ended with its session");
      await a.close();
      await ended;
      await until("a's standalone stream closed at the upstream", () => fixture.gateway("shared-a").stats.openGetStreams === 0);
      assert.equal(fixture.gateway("shared-b").stats.openGetStreams, 1, "b's stream is untouched");
      assert.equal(textOf(await b.request({ method: "tools/call", params: { name: "echo", arguments: { text: "still here" } } }, { headers: {}, signal: never() })), "still here");
      await b.close();
    } finally {
      await agent.close();
    }
  });

  it("a session whose upstream declares nothing it could say unprompted opens no standalone stream", async () => {
    const before = raw.methods.GET ?? 0;
    const conn = await connect(raw.url);
    assert.equal(textOf(await conn.request({ method: "tools/call", params: { name: "echo", arguments: { text: "x" } } }, { headers: {}, signal: never() })), "x");
    await conn.close();
    assert.equal(raw.methods.GET ?? 0, before, "no GET was sent");
  });
});

describe("what each call carries", () => {
  it("concurrent calls each carry their own passthrough headers and trace context; auth is never overridden", async () => {
    const conn = await connectUpstream({
      record: record("streamable-http", fixture.url("carry"), { passthroughHeaders: ["x-tenant"], auth: { type: "bearer", token: "enc:v1:aXY:Y2lwaGVy:dGFn" } }),
      open: () => "the-gateway-token",
      initialHeaders: {},
      timeoutMs: 20_000,
      outbound: DEFAULT_OUTBOUND_POLICY,
      onNotification: () => {},
      onClosed: () => {},
      onError: () => {},
    });
    const whoami = (tenant: string) =>
      conn.request(
        { method: "tools/call", params: { name: "whoami" } },
        { headers: { "x-tenant": tenant, authorization: "Bearer client-token" }, trace: { traceparent: `00-${tenant.padStart(32, "0")}-00f067aa0ba902b7-01` }, signal: never() },
      );
    const seen = (await Promise.all(["a1", "b2", "c3", "d4"].map(whoami))).map((o) => JSON.parse(textOf(o)) as Record<string, string>);
    for (const [i, tenant] of ["a1", "b2", "c3", "d4"].entries()) {
      assert.equal(seen[i]!["x-tenant"], tenant);
      assert.equal(seen[i]!.traceparent, `00-${tenant.padStart(32, "0")}-00f067aa0ba902b7-01`);
      assert.equal(seen[i]!.authorization, "Bearer the-gateway-token");
    }
    await conn.close();
  });
});

describe("answers that grow too large or break off", () => {
  it("an answer past maxAnswerBytes ends its request where it is; the session goes on", async () => {
    const conn = await connect(fixture.url("bounded"), { maxAnswerBytes: 2_000 });
    await assert.rejects(
      conn.request({ method: "tools/call", params: { name: "echo", arguments: { text: "x".repeat(10_000) } } }, { headers: {}, signal: never() }),
      (err: unknown) => err instanceof AnswerTooLargeError && err.bytesRead > 2_000 && err.limit === 2_000,
    );
    assert.equal(textOf(await conn.request({ method: "tools/call", params: { name: "echo", arguments: { text: "small" } } }, { headers: {}, signal: never() })), "small");
    await conn.close();
  });

  it("an answer cut off half way fails its call as a transport error at once, not at its deadline", async () => {
    const conn = await connect(raw.url);
    await assert.rejects(
      conn.request({ method: "tools/call", params: { name: "cut" } }, { headers: {}, signal: never() }),
      (err: unknown) => err instanceof UpstreamRequestError && err.transport,
    );
    await assert.rejects(
      conn.request({ method: "tools/call", params: { name: "garbage" } }, { headers: {}, signal: never() }),
      (err: unknown) => err instanceof UpstreamRequestError && err.transport,
    );
    await conn.close();
  });
});

describe("relayed requests", () => {
  // an upstream whose tools/call answers are whatever the test says, and which records the ids it saw
  const ANSWERS: Record<string, unknown> = {
    // fields no schema of the SDK knows, a _meta of a vendor: relayed as they came
    odd: { content: [{ type: "text", text: "odd" }], structuredContent: { n: [1, "two", null] }, vendorField: { deep: { deeper: true } }, _meta: { "vendor.example/x": 1 } },
    // not a result: no schema accepts it
    notAResult: "just a string",
  };
  const ids: unknown[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c)).on("end", () => {
      if (req.method !== "POST") return void res.writeHead(405).end();
      const m = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { id?: string | number; method: string; params?: { name?: string } };
      if (m.id === undefined) return void res.writeHead(202).end();
      ids.push(m.id);
      const answer = (body: unknown) => void res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ jsonrpc: "2.0", id: m.id, ...body as object }));
      if (m.method === "initialize") return answer({ result: { protocolVersion: "2025-06-18", capabilities: { tools: {} }, serverInfo: { name: "odd", version: "1" } } });
      if (m.method === "tools/list") return answer({ result: { tools: [] } });
      if (m.method === "tools/call" && m.params?.name === "hang") return; // answered never
      answer({ result: ANSWERS[m.params?.name ?? ""] });
    });
  });
  before(() => new Promise<void>((r) => server.listen(0, "127.0.0.1", r)));
  after(() => server.close());
  const url = () => `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`;

  it("an answer reaches the caller as the upstream sent it, under an id that is not one of the SDK's; the SDK's own requests go on", async () => {
    const conn = await connect(url());
    ids.length = 0;
    const outcome = await conn.request({ method: "tools/call", params: { name: "odd" } }, { headers: {}, signal: never() });
    assert.deepEqual(outcome, { result: ANSWERS.odd });
    // the SDK's own request after it: its ids and ours never meet
    assert.deepEqual((await conn.client.listTools()).tools, []);
    assert.equal(typeof ids[0], "string");
    assert.equal(typeof ids[1], "number");
    await conn.close();
  });

  it("an answer that is not a result fails its call as a transport error at once", async () => {
    const conn = await connect(url());
    await assert.rejects(
      conn.request({ method: "tools/call", params: { name: "notAResult" } }, { headers: {}, signal: never() }),
      (err: unknown) => err instanceof UpstreamRequestError && err.transport,
    );
    await conn.close();
  });

  it("a request in flight when the connection closes fails as a transport error", async () => {
    const conn = await connect(url());
    const pending = conn.request({ method: "tools/call", params: { name: "hang" } }, { headers: {}, signal: never() });
    await until("the call reached the upstream", () => ids.length > 0 && typeof ids.at(-1) === "string");
    conn.forceClose();
    await assert.rejects(pending, (err: unknown) => err instanceof UpstreamRequestError && err.transport);
  });
});

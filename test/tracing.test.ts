// W3C trace context from the client, across NATS to the worker hosting the upstream session,
// to the upstream itself; the trace id in both workers' log lines of the call; spans exported
// over OTLP/HTTP when configured. Real nats-server, real workers, a real fixture upstream.
import assert from "node:assert/strict";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { SpanKind } from "@opentelemetry/api";
import { sessionKey } from "../protocol/edge.ts";
import { subjects } from "../protocol/subjects.ts";
import { createTracing, endSpan, traceHeadersOf, traceIdOf } from "../runtime/tracing.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const WAIT_MS = 30_000;
const CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN = "00f067aa0ba902b7";
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/;

const text = (r: unknown) => (r as { content: Array<{ text: string }> }).content[0]!.text;
/** the traceparent the fixture received with the `whoami` call, split */
const upstreamTrace = (r: unknown) => {
  const tp = (JSON.parse(text(r)) as Record<string, string>).traceparent;
  const m = TRACEPARENT.exec(tp ?? "");
  assert.ok(m, `the upstream got traceparent ${tp}`);
  return { traceId: m[1]!, parentId: m[2]! };
};
/** a worker's log lines (from index `from`) that carry `traceId` */
const linesWith = (w: TestWorker, traceId: string, from = 0) =>
  w.lines
    .slice(from)
    .map((l) => JSON.parse(l) as { traceId?: string; worker?: string; actor?: string })
    .filter((l) => l.traceId === traceId);

/** A client of worker `w`'s edge whose `traceparent` header the test sets per request. */
async function tracedClient(w: TestWorker) {
  /** `edge`: another worker's edge URL to send the requests to instead (same session) */
  const state: { traceparent?: string; edge?: string } = {};
  const withTrace: typeof fetch = (input, init) => {
    const headers = new Headers(init?.headers);
    if (state.traceparent) headers.set("traceparent", state.traceparent);
    return fetch(state.edge ?? input, { ...init, headers });
  };
  return { ...(await connectClient(w.edge.url, { fetch: withTrace })), state };
}

/** An HTTP collector of OTLP/JSON trace exports on loopback. */
async function startCollector() {
  const spans: Array<{ traceId: string; spanId: string; parentSpanId?: string; name: string; service: Record<string, string> }> = [];
  const server = createServer(async (req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    if (req.url === "/v1/traces") {
      type Attr = { key: string; value: { stringValue?: string } };
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
        resourceSpans: Array<{ resource: { attributes: Attr[] }; scopeSpans: Array<{ spans: Array<(typeof spans)[number]> }> }>;
      };
      for (const rs of body.resourceSpans) {
        const service = Object.fromEntries(rs.resource.attributes.map((a) => [a.key, a.value.stringValue ?? ""]));
        for (const ss of rs.scopeSpans) for (const sp of ss.spans) spans.push({ ...sp, service });
      }
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, close: () => new Promise<void>((r) => server.close(() => r())) };
}

describe("traces across two workers", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let a: TestWorker;
  let b: TestWorker;
  let gid: string;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    a = await startTestWorker(nats, { MCPGW_WORKER_ID: "edge-a" });
    b = await startTestWorker(nats, { MCPGW_WORKER_ID: "host-b" });
    gid = (await a.registry.add({ name: "traced", transport: "streamable-http", url: fixture.url("traced") })).id;
    await a.registry.add({ name: "passing", transport: "streamable-http", url: fixture.url("passing"), passthroughHeaders: ["traceparent", "tracestate"] });
    await until("the gateways discovered", () => ["traced__whoami", "passing__whoami"].every((t) => a.edge.cache.view(null).toolRoutes.has(t)), WAIT_MS);
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  /**
   * A client calling through worker A whose upstream session lives on worker B: its first call
   * goes through B, which activates the actor (a session nobody hosts is placed at the worker its
   * first call reaches); later calls go through A.
   */
  async function clientHostedOnB() {
    const c = await tracedClient(a);
    c.state.edge = b.edge.url;
    await c.client.callTool({ name: "traced__echo", arguments: { text: "open" } });
    c.state.edge = undefined;
    assert.ok(b.upstream.sessions().some((x) => x.sid === sessionKey(c.transport.sessionId!)), "the upstream session lives on worker B");
    return c;
  }

  it("carries the client's trace id through A's edge and B's session actor to the upstream, and into both workers' log lines", async () => {
    const c = await clientHostedOnB();
    const [fromA, fromB] = [a.lines.length, b.lines.length];
    c.state.traceparent = `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01`;
    const seen = upstreamTrace(await c.client.callTool({ name: "traced__whoami", arguments: {} }));
    assert.equal(seen.traceId, CLIENT_TRACE, "the upstream request is in the client's trace");
    assert.notEqual(seen.parentId, CLIENT_SPAN, "its parent is the gateway's own span, not the client's");
    const onA = linesWith(a, CLIENT_TRACE, fromA);
    const onB = linesWith(b, CLIENT_TRACE, fromB);
    assert.ok(onA.some((l) => l.worker === "edge-a" && l.actor === "edge"), "worker A's edge logged the call with its trace id");
    assert.ok(onB.some((l) => l.worker === "host-b" && l.actor === "upstream"), "worker B's session actor logged the call with its trace id");
    await c.client.close();
  });

  it("starts a trace when the client sends none: the upstream and both workers' logs share its id", async () => {
    const c = await clientHostedOnB();
    const [fromA, fromB] = [a.lines.length, b.lines.length];
    const seen = upstreamTrace(await c.client.callTool({ name: "traced__whoami", arguments: {} }));
    assert.notEqual(seen.traceId, "0".repeat(32));
    assert.ok(linesWith(a, seen.traceId, fromA).length > 0, "worker A");
    assert.ok(linesWith(b, seen.traceId, fromB).length > 0, "worker B");
    await c.client.close();
  });

  it("ignores a malformed traceparent from the client or on the NATS request: answered, under a new trace", async () => {
    const c = await tracedClient(a);
    for (const bad of ["garbage", `00-${"0".repeat(32)}-${CLIENT_SPAN}-01`, `00-${CLIENT_TRACE}-${"0".repeat(16)}-01`, `ff-${CLIENT_TRACE}-${CLIENT_SPAN}-01`]) {
      c.state.traceparent = bad;
      const seen = upstreamTrace(await c.client.callTool({ name: "traced__whoami", arguments: {} }));
      assert.ok(!bad.includes(seen.traceId), `${bad} → ${seen.traceId}`);
    }
    await c.client.close();

    const caller = createUpstreamCaller(await nats.connect("runtime"), subjects(), { callTimeoutMs: 10_000, log: memoryLogger().log });
    const call = { method: "tools/call" as const, params: { name: "whoami", arguments: {} }, requestId: "r1" };
    const reply = await caller.call("nats-direct", gid, call, undefined, { traceparent: `00-${"0".repeat(32)}-${CLIENT_SPAN}-01`, tracestate: "=,=" });
    assert.ok("result" in reply);
    assert.notEqual(upstreamTrace(reply.result).traceId, "0".repeat(32));
  });

  it("sends the gateway's own span as parent even to a gateway that lets a client's traceparent through", async () => {
    const c = await tracedClient(a);
    c.state.traceparent = `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01`;
    const seen = upstreamTrace(await c.client.callTool({ name: "passing__whoami", arguments: {} }));
    assert.equal(seen.traceId, CLIENT_TRACE);
    assert.notEqual(seen.parentId, CLIENT_SPAN);
    await c.client.close();
  });

  it("exports nothing unless an OTLP endpoint is configured", () => {
    assert.equal(a.ctx.tracing.exporting, false);
    assert.equal(b.ctx.tracing.exporting, false);
  });
});

describe("traces exported over OTLP/HTTP", () => {
  it("exports the edge, session activation, session actor and upstream spans of a first call as one trace, parent by parent", async () => {
    const nats = await startNats();
    const fixture = await startFixtureHttp();
    const collector = await startCollector();
    const w = await startTestWorker(nats, { MCPGW_WORKER_ID: "exporter", MCPGW_OTLP_ENDPOINT: `${collector.url}/` });
    let stopped = false;
    try {
      assert.equal(w.ctx.tracing.exporting, true);
      await w.registry.add({ name: "traced", transport: "streamable-http", url: fixture.url("traced") });
      await until("the gateway discovered", () => w.edge.cache.view(null).toolRoutes.has("traced__whoami"), WAIT_MS);
      const c = await tracedClient(w);
      c.state.traceparent = `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01`;
      const seen = upstreamTrace(await c.client.callTool({ name: "traced__whoami", arguments: {} }));
      await c.client.close();
      await w.stop(); // flushes the batch
      stopped = true;

      const trace = collector.spans.filter((s) => s.traceId === CLIENT_TRACE);
      const span = (name: string) => {
        const found = trace.filter((s) => s.name === name);
        assert.equal(found.length, 1, `one ${name} span in ${JSON.stringify(trace.map((s) => s.name))}`);
        return found[0]!;
      };
      const edge = span("edge tools/call");
      const session = span("session tools/call");
      const upstream = span("upstream tools/call");
      const activation = span("session activate");
      assert.equal(edge.parentSpanId, CLIENT_SPAN, "the edge span is a child of the client's");
      assert.equal(activation.parentSpanId, edge.spanId, "the first call's session activation (claim, connect) is in its trace");
      assert.equal(session.parentSpanId, edge.spanId, "the session actor's span is a child of the edge's (over NATS)");
      assert.equal(upstream.parentSpanId, session.spanId);
      assert.equal(seen.parentId, upstream.spanId, "the upstream received the upstream request span as its parent");
      assert.deepEqual([edge.service["service.name"], edge.service["service.instance.id"]], ["mcpgw", "exporter"]);
    } finally {
      if (!stopped) await w.stop();
      await collector.close();
      await fixture.close();
      await nats.stop();
    }
  });
});

describe("spans without an exporter", () => {
  const tracing = createTracing({ workerId: "unit" });
  const PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

  it("keep the parent's trace id and flags and take a span id of their own, hop after hop", () => {
    const edge = tracing.startSpan("edge", { kind: SpanKind.SERVER, parent: { traceparent: PARENT } });
    const headers = traceHeadersOf(edge);
    const m = TRACEPARENT.exec(headers.traceparent ?? "");
    assert.ok(m, `traceparent ${headers.traceparent}`);
    assert.equal(m[1], CLIENT_TRACE);
    assert.notEqual(m[2], CLIENT_SPAN);
    // the client asked not to sample: every hop says so too
    assert.ok(headers.traceparent!.endsWith("-00"));
    const session = tracing.startSpan("session", { kind: SpanKind.SERVER, parent: headers });
    const upstream = tracing.startSpan("upstream", { kind: SpanKind.CLIENT, parent: session });
    assert.equal(traceIdOf(upstream), CLIENT_TRACE);
    assert.equal(new Set([edge, session, upstream].map((x) => x.spanContext().spanId)).size, 3);
    endSpan(upstream, "failed");
    endSpan(session);
  });

  it("start a sampled trace of their own when there is no parent or a malformed one", () => {
    const a = tracing.startSpan("a", { kind: SpanKind.SERVER });
    const b = tracing.startSpan("b", { kind: SpanKind.SERVER, parent: { traceparent: "00-zz-yy-01" } });
    for (const x of [a, b]) assert.match(traceHeadersOf(x).traceparent ?? "", /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    assert.notEqual(traceIdOf(a), traceIdOf(b));
  });
});

// Metrics and traces: what a scrape of /metrics costs with 1,000 gateways in the catalog, and
// what the instrumentation of one forwarded call (spans, trace context, counters, a child
// logger) costs beside the call itself. Real nats-server, a real worker and MCP fixture.
// Run: node --import tsx bench/metrics.bench.ts
import { performance } from "node:perf_hooks";
import { SpanKind } from "@opentelemetry/api";
import { createMetrics } from "../runtime/metrics.ts";
import { createTracing, endSpan, traceHeadersOf, traceIdOf } from "../runtime/tracing.ts";
import { startFixtureHttp } from "../test/fixtures/fixtureHttp.ts";
import { connectClient, putCatalog, until } from "../test/helpers/edge.ts";
import { startNats } from "../test/helpers/nats.ts";
import { directRegistry, memoryLogger, startTestWorker } from "../test/helpers/worker.ts";
import { msRow, report, stats } from "./report.ts";

const WAIT_MS = 60_000;
const GATEWAYS = 1_000;
const TOOLS_PER_GATEWAY = 10;
const SCRAPES = 30;
const CALLS = 300;
const INSTRUMENTED = 20_000;

const nats = await startNats();
const fixture = await startFixtureHttp();
const w = await startTestWorker(nats, { MCPGW_WORKER_ID: "bench" });
try {
  // ---- scrape with 1,000 gateways (disabled: nothing polls them; their catalogs still count) ----
  const registry = directRegistry(w.stores);
  const tools = Array.from({ length: TOOLS_PER_GATEWAY }, (_, i) => ({ name: `tool${i}`, inputSchema: { type: "object" } }));
  for (let i = 0; i < GATEWAYS; i++) {
    const g = await registry.add({ name: `g${i}`, transport: "streamable-http", url: fixture.url(`g${i}`), enabled: false });
    await putCatalog(w, g.id, { tools });
  }
  await until("every gateway in the cache", () => w.edge.cache.summaries().filter((g) => g.catalog).length === GATEWAYS, WAIT_MS);
  const scrapeMs: number[] = [];
  let bytes = 0;
  let series = 0;
  for (let i = 0; i < SCRAPES; i++) {
    const t0 = performance.now();
    const body = await (await fetch(`http://127.0.0.1:${w.edge.port}/metrics`)).text();
    scrapeMs.push(performance.now() - t0);
    bytes = body.length;
    series = body.split("\n").filter((l) => l && !l.startsWith("#")).length;
  }

  // ---- one forwarded call, end to end ----
  await w.registry.add({ name: "echo", transport: "streamable-http", url: fixture.url("echo") });
  await until("the echo gateway routed", () => w.edge.cache.view(null).toolRoutes.has("echo__echo"), WAIT_MS);
  const { client } = await connectClient(w.edge.url);
  await client.callTool({ name: "echo__echo", arguments: { text: "warm" } });
  const callMs: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    const t0 = performance.now();
    await client.callTool({ name: "echo__echo", arguments: { text: "x" } });
    callMs.push(performance.now() - t0);
  }
  await client.close();

  // ---- the instrumentation of one call alone: what the edge and the session actor add ----
  const metrics = createMetrics();
  const tracing = createTracing({ workerId: "bench" });
  const { log } = memoryLogger("info");
  const client0 = { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" };
  const t0 = performance.now();
  for (let i = 0; i < INSTRUMENTED; i++) {
    const edge = tracing.startSpan("edge tools/call", { kind: SpanKind.SERVER, parent: client0, attributes: { "mcp.method.name": "tools/call", "mcpgw.gateway": "echo" } });
    log.child({ traceId: traceIdOf(edge) });
    const session = tracing.startSpan("session tools/call", { kind: SpanKind.SERVER, parent: traceHeadersOf(edge) });
    log.child({ traceId: traceIdOf(session) });
    const upstream = tracing.startSpan("upstream tools/call", { kind: SpanKind.CLIENT, parent: session });
    traceHeadersOf(upstream);
    endSpan(upstream);
    endSpan(session);
    metrics.call("echo", "tools/call", "ok", 0.001);
    endSpan(edge);
  }
  const perCallUs = ((performance.now() - t0) * 1000) / INSTRUMENTED;
  await tracing.shutdown();

  const call = stats(callMs);
  report("Metrics and traces", `One worker, ${GATEWAYS} gateways with ${TOOLS_PER_GATEWAY}-tool catalogs (disabled, so unpolled) plus one enabled echo gateway on a loopback fixture; no OTLP export.`, [
    msRow(`GET /metrics with ${GATEWAYS} gateways`, scrapeMs),
    ["exposition size", `${(bytes / 1024).toFixed(0)} KiB, ${series} samples`],
    msRow("tools/call through the edge", callMs),
    ["instrumentation per call (3 spans, trace headers ×2, 2 child loggers, counter + histogram)", `${perCallUs.toFixed(1)} µs; ${((perCallUs / 1000 / call.p50) * 100).toFixed(2)}% of the call's p50`],
  ]);
} finally {
  await w.stop();
  await fixture.close();
  await nats.stop();
}

// Where a new session's connect + first call goes (issue 11): the same SDK client opens a session
// and makes one `tools/call` of `echo`, direct to the upstream (the SDK fixture server in a process
// of its own) and through one mcpgw worker, on the federated endpoint `/mcp` and on the gateway's
// own endpoint `/gateways/<name>/mcp`, in alternating rounds. The client times each HTTP request of
// the session (initialize, notifications/initialized, the call); the worker exports its spans over
// OTLP to a collector in this process, so the first call is divided into its parts: the edge's span
// of the call, the activation of the upstream session actor (`session activate`), its claim in KV
// (`session claim`), the upstream's handshake (`upstream connect`: initialize, initialized) and the
// call itself (`upstream tools/call`). Every request of a session carries one trace id, so its spans
// are told apart from every other session's. Recording spans costs the worker a little: the totals
// to compare with the targets are callPath.bench.ts's; these are the shares.
// Then the cost of a client that initializes and never calls: upstream sessions the worker opened,
// and the worker's CPU and heap per such session.
// Run: node --import tsx bench/connectFirst.bench.ts
// CONNECT_ROUNDS (5), CONNECT_SESSIONS (10 new sessions per path and round), CONNECT_IDLE_SESSIONS (100).
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { subjects } from "../protocol/subjects.ts";
import { SessionListReplySchema } from "../protocol/upstream.ts";
import { request } from "../runtime/bus.ts";
import { startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { edgeUrlOf, ROOT, run, workerEnv, stopProc, type Proc } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { TEST_SECRET_KEY } from "../test/helpers/worker.ts";
import { cpuSecondsOf, loadAverage, msFine, runBench, stats, table } from "./report.ts";

const num = (name: string, dflt: number) => Number(process.env[name] ?? dflt);
const ROUNDS = num("CONNECT_ROUNDS", 5);
const SESSIONS = num("CONNECT_SESSIONS", 10);
const IDLE_SESSIONS = num("CONNECT_IDLE_SESSIONS", 100);
const WAIT_MS = 60_000;
const s = subjects("mcpgw");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Span = { traceId: string; spanId: string; parentSpanId?: string; name: string; start: number; end: number };
type Nanos = string | number | { low: number; high: number };
const msOf = (t: Nanos) => (typeof t === "object" ? (t.high * 2 ** 32 + (t.low >>> 0)) / 1e6 : Number(t) / 1e6);

/** An HTTP collector of OTLP/JSON trace exports on loopback. */
async function startCollector() {
  const spans: Span[] = [];
  const server = createServer(async (req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    if (req.url === "/v1/traces") {
      type Raw = { traceId: string; spanId: string; parentSpanId?: string; name: string; startTimeUnixNano: Nanos; endTimeUnixNano: Nanos };
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: Raw[] }> }> };
      for (const rs of body.resourceSpans)
        for (const ss of rs.scopeSpans) for (const sp of ss.spans) spans.push({ traceId: sp.traceId, spanId: sp.spanId, parentSpanId: sp.parentSpanId, name: sp.name, start: msOf(sp.startTimeUnixNano), end: msOf(sp.endTimeUnixNano) });
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** One new session's requests as its client timed them (ms), by what each carried. */
type Timing = { traceId: string; initialize: number; initialized: number; call: number; total: number; callStart: number };

/** Opens a session at `url`, calls `tool` once, and times each request; every request carries one trace id. */
async function connectAndCall(url: string, tool: string): Promise<{ timing: Timing; close(): Promise<void> }> {
  const traceId = randomBytes(16).toString("hex");
  const took: Record<string, number> = {};
  let callStart = 0;
  const timed: typeof fetch = async (input, init) => {
    const headers = new Headers(init?.headers);
    headers.set("traceparent", `00-${traceId}-${randomBytes(8).toString("hex")}-01`);
    const body = typeof init?.body === "string" ? (JSON.parse(init.body) as { method?: string }) : undefined;
    const what = init?.method === "POST" ? (body?.method ?? "answer") : (init?.method ?? "GET");
    const t0 = performance.now();
    if (what === "tools/call") callStart = performance.timeOrigin + t0;
    const res = await fetch(input, { ...init, headers });
    // a POST's answer is read by the SDK: its time ends when the SDK has it (see below); GET streams stay open
    if (what !== "tools/call") took[what] ??= performance.now() - t0;
    return res;
  };
  const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: timed });
  const client = new Client({ name: "connect-first", version: "1.0.0" });
  const t0 = performance.now();
  await client.connect(transport);
  const t1 = performance.now();
  await client.callTool({ name: tool, arguments: { text: "x" } });
  const t2 = performance.now();
  return {
    timing: { traceId, initialize: took.initialize ?? NaN, initialized: took["notifications/initialized"] ?? NaN, call: t2 - t1, total: t2 - t0, callStart },
    close: async () => {
      await transport.terminateSession().catch(() => {});
      await client.close();
    },
  };
}

function startWorker(nats: TestNats, otlp: string): Proc {
  return run(process.execPath, ["--import", "tsx", resolve(ROOT, "runtime/main.ts")], {
    ...workerEnv(nats, TEST_SECRET_KEY, { MCPGW_WORKER_ID: "w1", MCPGW_LOG_LEVEL: "warn", MCPGW_OTLP_ENDPOINT: otlp }),
    OTEL_BSP_SCHEDULE_DELAY: "200",
  });
}

/** The parts of a first call from its trace (ms; NaN when the trace has no such span). */
function phases(spans: Span[], t: Timing) {
  const mine = spans.filter((x) => x.traceId === t.traceId);
  const one = (name: string) => mine.find((x) => x.name === name);
  const edge = one("edge tools/call");
  const activate = one("session activate");
  const claim = one("session claim");
  const connect = one("upstream connect");
  const call = one("upstream tools/call");
  const d = (x: Span | undefined) => (x ? x.end - x.start : NaN);
  return {
    // from the client's send to the edge's span: HTTP, the session's recall, the route
    toEdge: edge ? edge.start - t.callStart : NaN,
    edge: d(edge),
    // from the edge's span to the activation: the caller's look for an actor (a NATS request that finds no responders)
    toActivate: edge && activate ? activate.start - edge.start : NaN,
    activate: d(activate),
    // from the activation's start to the claim's: the gateway's and the client session's records read
    toClaim: activate && claim ? claim.start - activate.start : NaN,
    claim: d(claim),
    // from the activation's start to the handshake's: the reads, the claim (today in series), the era read
    toConnect: activate && connect ? connect.start - activate.start : NaN,
    connect: d(connect),
    upstreamCall: d(call),
    // from the activation's end to the upstream call's start: the call handed to the actor
    toCall: activate && call ? call.start - activate.end : edge && call ? call.start - edge.start : NaN,
    afterCall: edge && call ? edge.end - call.end : NaN,
  };
}

const procs: Proc[] = [];
let nats: TestNats | undefined;
let stopFixture: (() => Promise<void>) | undefined;
let collector: Awaited<ReturnType<typeof startCollector>> | undefined;

async function main() {
  nats = await startNats();
  collector = await startCollector();
  const admin = await nats.connect("admin");
  const upstream = await startFixtureProcess();
  stopFixture = () => upstream.stop();
  const w = startWorker(nats, collector.url);
  procs.push(w);
  const edge = await edgeUrlOf(w);
  await request(admin, s.admin.gateway("add"), { name: "up", transport: "streamable-http", url: upstream.url("gw") }, GatewayViewSchema, WAIT_MS);
  const gatewayEdge = edge.replace(/\/mcp$/, "/gateways/up/mcp");
  await until(
    "the gateway's tools at the edge",
    async () => {
      const c = await connectAndCall(edge, "up__echo").catch(() => null);
      await c?.close();
      return c !== null;
    },
    WAIT_MS,
  );

  const paths = [
    { name: "direct", url: upstream.url("direct"), tool: "echo" },
    { name: "mcpgw /mcp", url: edge, tool: "up__echo" },
    { name: "mcpgw /gateways/up/mcp", url: gatewayEdge, tool: "echo" },
  ];
  const timings = new Map<string, Timing[]>(paths.map((p) => [p.name, []]));
  const loads: string[] = [];
  // a warm-up session per path: first-time code paths (module loading, JIT) are not a session's cost
  for (const p of paths) await (await connectAndCall(p.url, p.tool)).close();
  for (let round = 0; round < ROUNDS; round++) {
    loads.push(loadAverage());
    for (let i = 0; i < paths.length; i++) {
      const p = paths[(i + round) % paths.length]!;
      const opened = [];
      for (let n = 0; n < SESSIONS; n++) {
        const x = await connectAndCall(p.url, p.tool);
        timings.get(p.name)!.push(x.timing);
        opened.push(x);
      }
      await Promise.all(opened.map((x) => x.close()));
    }
  }

  // ---- a client that initializes and never calls ----
  const sessionsOfWorker = async () => (await request(admin, s.admin.sessionList, {}, SessionListReplySchema, WAIT_MS)).sessions.length;
  const idle: Record<string, { upstreamSessions: number; cpuMs: number }> = {};
  for (const p of paths.slice(1)) {
    await until("no upstream session left", async () => (await sessionsOfWorker()) === 0, WAIT_MS);
    const cpu0 = cpuSecondsOf(w.child.pid!);
    const clients: Array<{ close(): Promise<void> }> = [];
    for (let n = 0; n < IDLE_SESSIONS; n++) {
      const transport = new StreamableHTTPClientTransport(new URL(p.url));
      const client = new Client({ name: "idle", version: "1.0.0" });
      await client.connect(transport);
      clients.push({ close: async () => (await transport.terminateSession().catch(() => {}), await client.close()) });
    }
    // an upstream session opened for a client that has not called settles within a moment
    await sleep(1_000);
    const cpuMs = (cpuSecondsOf(w.child.pid!) - cpu0) * 1000;
    idle[p.name] = { upstreamSessions: await sessionsOfWorker(), cpuMs };
    await Promise.all(clients.map((c) => c.close()));
  }
  await admin.close();

  // the spans: the worker exports them in batches; stopping it flushes the rest
  await stopProc(w);
  const direct = stats(timings.get("direct")!.map((t) => t.total));
  const rows: string[][] = [];
  for (const p of paths) {
    const ts = timings.get(p.name)!;
    const ph = ts.map((t) => phases(collector!.spans, t));
    const p50 = (xs: number[]) => {
      const ok = xs.filter((x) => Number.isFinite(x));
      return ok.length ? msFine(stats(ok).p50) : "—";
    };
    const total = stats(ts.map((t) => t.total));
    rows.push([
      p.name,
      `${msFine(total.p50)} (${(total.p50 / direct.p50).toFixed(2)}×)`,
      p50(ts.map((t) => t.initialize)),
      p50(ts.map((t) => t.initialized)),
      p50(ts.map((t) => t.call)),
      p50(ph.map((x) => x.toActivate)),
      p50(ph.map((x) => x.toClaim)),
      p50(ph.map((x) => x.claim)),
      p50(ph.map((x) => x.toConnect)),
      p50(ph.map((x) => x.connect)),
      p50(ph.map((x) => x.activate)),
      p50(ph.map((x) => x.toCall)),
      p50(ph.map((x) => x.upstreamCall)),
      p50(ph.map((x) => x.edge)),
    ]);
  }
  table(
    "Call path: a new session's connect + first call, by phase",
    `The SDK client opens a session (initialize, notifications/initialized) and calls \`echo\` once; ${ROUNDS} alternating rounds of ${SESSIONS} new sessions per path; ` +
      `upstream: the SDK fixture server (own process); mcpgw: one worker (own process) exporting its spans, one nats-server. p50 of each figure over the sessions (ms). ` +
      `Client side: each request from send to answer. Worker side, from the first call's spans: "to activation" from the edge's span of the call to the activation's ` +
      `(the caller looks for an actor), "to claim" from the activation to its claim (the gateway and client session records read), "to handshake" from the activation to ` +
      `the upstream's initialize, "handshake" the upstream's initialize + initialized, "activation" all of it, "to upstream call" from the activation's end ` +
      `(or, when the session was opened at initialize, from the edge's span) to the upstream request, "edge span" the whole call in the worker. 2 shared cores; load average at each round ${loads.join(", ")}.`,
    ["path", "connect + first call", "initialize", "initialized", "first call", "to activation", "to claim", "claim", "to handshake", "handshake", "activation", "to upstream call", "upstream call", "edge span"],
    rows,
  );
  table(
    "Call path: a client that initializes and never calls",
    `${IDLE_SESSIONS} sessions opened (initialize, notifications/initialized, the SDK's GET stream), none calling; after 1 s: the worker's upstream sessions, and the worker's CPU time over the opening and that second ÷ sessions. Load average ${loadAverage()}.`,
    ["endpoint", "upstream sessions open", "worker CPU per session"],
    Object.entries(idle).map(([name, x]) => [name, String(x.upstreamSessions), msFine(x.cpuMs / IDLE_SESSIONS)]),
  );
}

await runBench(main, procs, async () => {
  await stopFixture?.().catch(() => {});
  await collector?.close();
  await nats?.stop();
});

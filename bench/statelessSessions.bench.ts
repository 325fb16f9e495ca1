// What keying a stateless client's upstream sessions by its identity saves: the same tool call
// made directly with one SDK client, through the upstream session actors with one stateless key
// (StatelessIdentity: every call reuses the session), and with a new key per call (what a peer
// that opens an upstream session for every stateless call pays: an initialize each time). Also
// one call over the 2026-07-28 upstream connection against the Python SDK's stateless server,
// beside the same server reached by its own Python client (when the venv exists).
// Real nats-server, the in-process HTTP fixture. Run: node --import tsx bench/statelessSessions.bench.ts
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StatelessIdentity } from "../actors/statelessIdentity.ts";
import { subjects } from "../protocol/subjects.ts";
import { connectStatelessUpstream } from "../runtime/revision2026Upstream.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp } from "../test/fixtures/fixtureHttp.ts";
import { startNats } from "../test/helpers/nats.ts";
import { PYTHON, startPythonStatelessServer } from "../test/helpers/python.ts";
import { startTestWorker, TEST_SECRET_KEY } from "../test/helpers/worker.ts";
import { loadAverage, msRow, ratio, report, stats } from "./report.ts";
import { existsSync } from "node:fs";
import { gatewayRecord } from "../test/helpers/gateways.ts";

const CALLS = 60;
const WARMUP = 5;

async function timed(n: number, f: (i: number) => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await f(i);
    out.push(performance.now() - t0);
  }
  return out;
}

const nats = await startNats();
const fixture = await startFixtureHttp();
const w = await startTestWorker(nats, { MCPGW_CALL_TIMEOUT: "30s" });
try {
  const gid = (await w.registry.add({ name: "bench", transport: "streamable-http", url: fixture.url("bench") })).id;
  const caller = createUpstreamCaller(w.nc, subjects(), { callTimeoutMs: 30_000, log: w.log });
  const identity = new StatelessIdentity(TEST_SECRET_KEY);
  const echo = { method: "tools/call" as const, params: { name: "echo", arguments: { text: "x" } }, headers: {} };

  const direct = new Client({ name: "bench", version: "1" });
  await direct.connect(new StreamableHTTPClientTransport(new URL(fixture.url("bench"))));
  await timed(WARMUP, () => direct.callTool({ name: "echo", arguments: { text: "x" } }));
  const directMs = await timed(CALLS, () => direct.callTool({ name: "echo", arguments: { text: "x" } }));
  await direct.close();

  const sid = identity.sessionKeyOf("bench-token");
  await timed(WARMUP, (i) => caller.call(sid, gid, { ...echo, requestId: `w${i}` }));
  const opened0 = fixture.gateway("bench").opened.length;
  const reusedMs = await timed(CALLS, (i) => caller.call(sid, gid, { ...echo, requestId: `r${i}` }));
  const reusedOpened = fixture.gateway("bench").opened.length - opened0;

  const opened1 = fixture.gateway("bench").opened.length;
  const freshMs = await timed(CALLS, (i) => caller.call(identity.sessionKeyOf("bench-token", randomUUID()), gid, { ...echo, requestId: `f${i}` }));
  const freshOpened = fixture.gateway("bench").opened.length - opened1;

  const p50 = (s: number[]) => stats(s).p50;
  const rows: Array<[string, string]> = [
    msRow("direct: one SDK session, tools/call", directMs),
    msRow("mcpgw actors, one stateless key (reused upstream session)", reusedMs, p50(directMs), "direct p50"),
    msRow("mcpgw actors, a new key per call (initialize per call)", freshMs, p50(directMs), "direct p50"),
    ["upstream sessions opened by the calls: one key, a key per call", `${reusedOpened}, ${freshOpened} (of ${CALLS} calls each)`],
    ["new key per call / reused key, p50", ratio(p50(freshMs) / p50(reusedMs))],
  ];

  // the whole stateless path: one 2026-07-28 POST per call through the edge (its call stream followed, a JSON answer)
  const statelessPost = () =>
    fetch(w.edge.url.replace(/\/mcp$/, "/gateways/bench/mcp"), {
      method: "POST",
      headers: { accept: "application/json, text/event-stream", "content-type": "application/json", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "echo", arguments: { text: "x" }, _meta: { "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {} } } }),
    }).then(async (res) => {
      const body = (await res.json()) as { result?: unknown };
      if (!body.result) throw new Error(`stateless call failed: ${JSON.stringify(body)}`);
    });
  await timed(WARMUP, statelessPost);
  const cpu0 = process.cpuUsage();
  const edgeMs = await timed(CALLS, statelessPost);
  const cpu = process.cpuUsage(cpu0);
  rows.push(msRow("edge, 2026-07-28 POST tools/call (one stateless key)", edgeMs, p50(directMs), "direct p50"));
  rows.push(["edge, 2026-07-28 POST: CPU of this process (edge, actor, fixture, client) per call", `${Math.round((cpu.user + cpu.system) / CALLS)} µs (load ${loadAverage()})`]);

  if (existsSync(PYTHON)) {
    const py = await startPythonStatelessServer();
    try {
      const record = gatewayRecord({ name: "py", transport: "streamable-http", url: py.url });
      const t0 = performance.now();
      const conn = await connectStatelessUpstream({ record, open: () => "", capabilities: {}, initialHeaders: {}, timeoutMs: 30_000, outbound: { deny: [] }, onNotification: () => {} });
      const connectMs = performance.now() - t0;
      const call = () => conn.request({ method: "tools/call", params: { name: "echo", arguments: { text: "x" } } }, { headers: {}, signal: AbortSignal.timeout(30_000) });
      await timed(WARMUP, call);
      rows.push(["2026-07-28 upstream connection: connect (one server/discover)", `${Math.round(connectMs)} ms`]);
      rows.push(msRow("2026-07-28 upstream connection: tools/call (one POST each, no session)", await timed(CALLS, call)));
      await conn.close();
    } finally {
      await py.stop();
    }
  } else rows.push(["2026-07-28 upstream connection", "not measured: no Python venv (.venv-py)"]);

  report(
    "Stateless clients' upstream sessions",
    `${CALLS} sequential echo calls each after ${WARMUP} warm-up calls; one worker in process, the HTTP fixture in process; the Python server a child process.`,
    rows,
  );
} finally {
  await w.stop();
  await fixture.close();
  await nats.stop();
}

// The upstream MCP connection alone (runtime/mcpClient.ts), without NATS or the edge: what one
// `tools/call` costs this process in CPU, sequential and 64 at once, and what one live
// connection holds (heap after a full GC, and RSS), against a lean upstream in a process of its
// own (test/fixtures/rawUpstream.ts: JSON-RPC over HTTP, no SDK, so its cost stays out). Beside
// it, the other two HTTP clients of an upstream, one request at a time: a poller's kept session
// (runtime/httpPollSession.ts) pinging the same upstream, and the 2026-07-28 connection
// (runtime/revision2026Upstream.ts) calling a lean stateless upstream (LEAN_2026 below).
// Run: node --import tsx bench/upstreamConnection.bench.ts
// UPCONN_CALLS (3000), UPCONN_CONNECTIONS (500), UPCONN_MODULE (another build of mcpClient.ts
// with the same exports, to compare two builds in one session), UPCONN_OWN_AGENT (1: an agent
// per connection instead of one shared), UPCONN_CPU_PROF (a directory:
// a CPU profile of the call loops, for bench/cpuProfile.ts).
import { spawn } from "node:child_process";
import { once, setMaxListeners } from "node:events";
import { Session } from "node:inspector/promises";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import { HttpPollSession } from "../runtime/httpPollSession.ts";
import { connectStatelessUpstream } from "../runtime/revision2026Upstream.ts";
import { ROOT } from "../test/helpers/processes.ts";
import { loadAverage, msFine, report, stats } from "./report.ts";
import { gatewayRecord } from "../test/helpers/gateways.ts";

type McpClientModule = typeof import("../runtime/mcpClient.ts");
const num = (name: string, dflt: number) => Number(process.env[name] ?? dflt);
const CALLS = num("UPCONN_CALLS", 3_000);
const CONNECTIONS = num("UPCONN_CONNECTIONS", 500);
const CONCURRENCY = 64;
const modulePath = resolve(ROOT, process.env.UPCONN_MODULE ?? "runtime/mcpClient.ts");
const { connectUpstream, sharedUpstreamAgent } = (await import(modulePath)) as McpClientModule;
// `npm run bench` passes no --expose-gc: the flag is set here, and gc taken from a new context
setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

const lean = spawn(process.execPath, ["--import", "tsx", resolve(ROOT, "test/fixtures/rawUpstreamProcess.ts")], { stdio: ["ignore", "pipe", "inherit"] });
const url = `http://127.0.0.1:${/port (\d+)/.exec(String((await once(lean.stdout!, "data"))[0]))![1]}/mcp`;
const record = gatewayRecord({ name: "lean", transport: "streamable-http", url });

/** A lean 2026-07-28 upstream (no SDK): server/discover, and tools/call of echo answered as JSON. */
const LEAN_2026 = `
const http = require("node:http");
const json = (res, v) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(v));
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c)).on("end", () => {
    const m = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (m.method === "server/discover") return json(res, { jsonrpc: "2.0", id: m.id, result: { supportedVersions: ["2026-07-28"], capabilities: { tools: {} }, resultType: "complete", ttlMs: 0, cacheScope: "private", serverInfo: { name: "lean-2026", version: "1" } } });
    json(res, { jsonrpc: "2.0", id: m.id, result: { content: [{ type: "text", text: m.params.arguments.text }] } });
  });
}).listen(0, "127.0.0.1", () => console.log("port " + server.address().port));
process.on("SIGTERM", () => process.exit(0));
`;
const lean2026 = spawn(process.execPath, ["-e", LEAN_2026], { stdio: ["ignore", "pipe", "inherit"] });
const url2026 = `http://127.0.0.1:${/port (\d+)/.exec(String((await once(lean2026.stdout!, "data"))[0]))![1]}/mcp`;
const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
const connect = () =>
  connectUpstream({
    record,
    open: () => "",
    initialHeaders: {},
    timeoutMs: 60_000,
    outbound: DEFAULT_OUTBOUND_POLICY,
    // UPCONN_OWN_AGENT=1: an agent per connection, as upstream sessions had before they shared one
    ...(process.env.UPCONN_OWN_AGENT ? {} : { dispatcher: agent }),
    maxAnswerBytes: 16 * 1024 * 1024,
    onNotification: () => {},
    onClosed: () => {},
    onError: () => {},
  });
const signal = new AbortController().signal;
// one signal for every call of the bench (a caller gives each call its own)
setMaxListeners(0, signal);
type Conn = Awaited<ReturnType<typeof connect>>;
const callOn = (c: Conn) =>
  c.request({ method: "tools/call", params: { name: "echo", arguments: { text: "x" } } }, { headers: {}, trace: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }, signal });

/** CPU time of this process per call (µs), and latencies, for `n` calls `width` at a time */
async function measure(conns: Conn[], n: number, width: number): Promise<{ cpuUs: number; lat: number[] }> {
  const lat: number[] = [];
  let next = 0;
  const cpu0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: width }, async (_, i) => {
      const c = conns[i % conns.length]!;
      while (next++ < n) {
        const t0 = performance.now();
        await callOn(c);
        lat.push(performance.now() - t0);
      }
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  return { cpuUs: (cpu.user + cpu.system) / n, lat };
}

/** CPU time of this process per request (µs) and latencies, for `CALLS` requests one at a time after 500 to warm up */
async function cpuPerRequest(send: () => Promise<unknown>): Promise<{ cpuUs: number; lat: number[] }> {
  for (let i = 0; i < 500; i++) await send();
  const lat: number[] = [];
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < CALLS; i++) {
    const t0 = performance.now();
    await send();
    lat.push(performance.now() - t0);
  }
  const cpu = process.cpuUsage(cpu0);
  return { cpuUs: (cpu.user + cpu.system) / CALLS, lat };
}

const profiler = process.env.UPCONN_CPU_PROF ? new Session() : null;
try {
  const conns = await Promise.all(Array.from({ length: CONCURRENCY }, connect));
  await measure(conns, 500, 1); // warm-up: code compiled, sockets open
  if (profiler) {
    profiler.connect();
    await profiler.post("Profiler.enable");
    await profiler.post("Profiler.start");
  }
  const load1 = loadAverage();
  const seq = await measure(conns, CALLS, 1);
  const par = await measure(conns, CALLS, CONCURRENCY);
  if (profiler) {
    const { profile } = await profiler.post("Profiler.stop");
    const file = join(process.env.UPCONN_CPU_PROF!, `upconn-${Date.now()}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    console.error(`profile: ${file}`);
  }
  await Promise.all(conns.map((c) => c.close()));

  // what a live connection holds: heap after a full GC, and RSS, per connection
  gc();
  await new Promise((r) => setTimeout(r, 500));
  gc();
  const heap0 = process.memoryUsage().heapUsed;
  const rss0 = process.memoryUsage().rss;
  const live: Conn[] = [];
  for (let i = 0; i < CONNECTIONS; i += 32) live.push(...(await Promise.all(Array.from({ length: Math.min(32, CONNECTIONS - i) }, connect))));
  await Promise.all(live.map(callOn));
  gc();
  await new Promise((r) => setTimeout(r, 500));
  gc();
  const heapPer = (process.memoryUsage().heapUsed - heap0) / live.length;
  const rssPer = (process.memoryUsage().rss - rss0) / live.length;
  const load2 = loadAverage();
  await Promise.all(live.map((c) => c.close()));

  // the other two clients, one request at a time on the same shared agent
  const poll = new HttpPollSession({ record, open: () => "", dispatcher: agent, sessionId: undefined, protocolVersion: "2025-11-25", capabilities: {} });
  const pings = await cpuPerRequest(() => poll.ping({ timeout: 60_000 }));
  const stateless = await connectStatelessUpstream({
    record: gatewayRecord({ name: "lean-2026", transport: "streamable-http", url: url2026 }),
    open: () => "",
    capabilities: {},
    initialHeaders: {},
    timeoutMs: 60_000,
    outbound: DEFAULT_OUTBOUND_POLICY,
    dispatcher: agent,
    maxAnswerBytes: 16 * 1024 * 1024,
    onNotification: () => {},
  });
  // a signal per call, as a caller gives (undici's fetch refuses one whose listener cap was lifted)
  const calls2026 = await cpuPerRequest(() => stateless.request({ method: "tools/call", params: { name: "echo", arguments: { text: "x" } } }, { headers: {}, signal: new AbortController().signal }));
  await stateless.close();
  const load3 = loadAverage();
  const s = stats(seq.lat);
  const p = stats(par.lat);
  report(
    `The upstream connection alone (${process.env.UPCONN_MODULE ?? "runtime/mcpClient.ts"})`,
    `One process with ${CONCURRENCY} connections over one shared keep-alive agent to the lean upstream (its own process), tools/call of echo; CPU of this process only. 2 shared cores.`,
    [
      [`CPU per call, one at a time (load average ${load1})`, `${seq.cpuUs.toFixed(0)} µs (p50 ${msFine(s.p50)}, p99 ${msFine(s.p99)})`],
      [`CPU per call, ${CONCURRENCY} at once`, `${par.cpuUs.toFixed(0)} µs (p50 ${msFine(p.p50)}, p99 ${msFine(p.p99)})`],
      [`per live connection, ${live.length} open, after a call each (load average ${load2})`, `heap ${(heapPer / 1024).toFixed(1)} KB, RSS ${(rssPer / 1024).toFixed(1)} KB`],
      [`CPU per ping of a poller's kept session, one at a time (load average ${load3})`, `${pings.cpuUs.toFixed(0)} µs (p50 ${msFine(stats(pings.lat).p50)})`],
      [`CPU per tools/call of a 2026-07-28 connection, one at a time`, `${calls2026.cpuUs.toFixed(0)} µs (p50 ${msFine(stats(calls2026.lat).p50)})`],
    ],
  );
} finally {
  await agent.close();
  lean.kill("SIGTERM");
  lean2026.kill("SIGTERM");
}
process.exit();

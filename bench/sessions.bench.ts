// Ten thousand live client sessions on one worker (issue 12): each client session opened
// through the edge (initialize, initialized) and its first tools/call, so each has one upstream
// session (actor and MCP client) to a lean upstream (test/fixtures/rawUpstream.ts in a process
// of its own: JSON-RPC over HTTP, no SDK, so the upstream's own cost stays out). The clients are
// plain HTTP requests (no SDK client object per session in this process, no GET stream).
// Reports the worker's memory per session (RSS and heap growth ÷ sessions, upstream MCP client
// included), what holds it (two heap snapshots: their difference per session, by constructor),
// and tools/call latency on random sessions while all of them are alive.
// The heap snapshots come last: writing one makes V8 and the allocator take native memory the
// process keeps (about the heap's size again), which would count as the sessions' RSS. The
// first is taken with every session alive, the second after SESSIONS_SNAPSHOT_CLOSE of them
// were closed (DELETE); what closing them freed, per session, is what a live session holds.
// Run: node --import tsx bench/sessions.bench.ts
// SESSIONS_COUNT (10000), SESSIONS_PARALLEL (32 opened at once), SESSIONS_SNAPSHOT_CLOSE (500; 0:
// no snapshots), SESSIONS_CALLS (1000), SESSIONS_NODE_ARGS (V8 flags for the worker, e.g.
// "--max-semi-space-size=1").
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { edgeUrlOf, ROOT, run, workerEnv, type Proc } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { TEST_SECRET_KEY } from "../test/helpers/worker.ts";
import { growthPer, holdings } from "./heapSnapshot.ts";
import { loadAverage, msFine, report, rssMbOf, stats } from "./report.ts";

const num = (name: string, dflt: number) => Number(process.env[name] ?? dflt);
const COUNT = num("SESSIONS_COUNT", 10_000);
const PARALLEL = num("SESSIONS_PARALLEL", 32);
const SNAPSHOT_CLOSE = num("SESSIONS_SNAPSHOT_CLOSE", 500);
const NODE_ARGS = (process.env.SESSIONS_NODE_ARGS ?? "").split(" ").filter(Boolean);
const CALLS = num("SESSIONS_CALLS", 1_000);
/** sessions opened before the baseline, so code loaded and caches filled on first use are not counted per session */
const WARM = 20;
const WAIT_MS = 60_000;
const PROTOCOL_VERSION = "2025-06-18";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const kb = (bytes: number) => `${(bytes / 1024).toFixed(1)} KB`;

/** One JSON-RPC request to the edge; the answer, whether sent as JSON or as one SSE event. */
async function rpc(url: string, body: unknown, sessionId?: string): Promise<{ sessionId: string | null; message: { result?: unknown; error?: { message: string } } | null }> {
  const res = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      ...(sessionId ? { "mcp-session-id": sessionId, "mcp-protocol-version": PROTOCOL_VERSION } : {}),
    },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status >= 400) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
  const json = res.headers.get("content-type")?.includes("text/event-stream")
    ? text
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5))
        .join("")
    : text;
  const message = json ? (JSON.parse(json) as { result?: unknown; error?: { message: string } }) : null;
  if (message?.error) throw new Error(`JSON-RPC error: ${message.error.message}`);
  return { sessionId: res.headers.get("mcp-session-id"), message };
}

let nextId = 1;
const call = (url: string, sessionId: string) => rpc(url, { jsonrpc: "2.0", id: nextId++, method: "tools/call", params: { name: "lean__echo", arguments: { text: "x" } } }, sessionId);

/** A client session with its upstream session: initialize, initialized, the first call. */
async function openSession(url: string): Promise<string> {
  const init = await rpc(url, { jsonrpc: "2.0", id: nextId++, method: "initialize", params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: "sessions-bench", version: "1" } } });
  const sessionId = init.sessionId!;
  await rpc(url, { jsonrpc: "2.0", method: "notifications/initialized" }, sessionId);
  await call(url, sessionId);
  return sessionId;
}

/** The worker's own figures from its /metrics: heap, and the upstream sessions it hosts. */
async function scrape(edge: string): Promise<{ heapUsed: number; heapTotal: number; external: number; upstreamSessions: number }> {
  const text = await (await fetch(new URL("/metrics", edge))).text();
  const value = (re: RegExp) => [...text.matchAll(re)].reduce((n, m) => n + Number(m[1]), 0);
  return {
    heapUsed: value(/^nodejs_heap_size_used_bytes (\S+)$/gm),
    heapTotal: value(/^nodejs_heap_size_total_bytes (\S+)$/gm),
    external: value(/^nodejs_external_memory_bytes (\S+)$/gm),
    upstreamSessions: value(/^mcpgw_upstream_sessions\{[^}]*\} (\S+)$/gm),
  };
}

let nats: TestNats | undefined;
let worker: Proc | undefined;
let lean: ReturnType<typeof spawn> | undefined;
const dir = mkdtempSync(join(tmpdir(), "mcpgw-sessions-"));

/** A heap snapshot of the worker (V8 collects garbage first); resolves once it is written. */
async function snapshot(edge: string): Promise<string> {
  const before = new Set(readdirSync(dir));
  worker!.child.kill("SIGUSR2");
  const file = await until("the heap snapshot file", () => readdirSync(dir).find((f) => f.endsWith(".heapsnapshot") && !before.has(f)), WAIT_MS);
  // the worker answers again once the snapshot is written (it blocks while writing)
  await until("the worker after its snapshot", () => fetch(new URL("/healthz", edge)).then((r) => r.ok, () => false), 5 * WAIT_MS);
  let size = -1;
  await until("the snapshot complete", async () => {
    const now = statSync(join(dir, file)).size;
    const stable = now === size;
    size = now;
    await sleep(300);
    return stable;
  }, 5 * WAIT_MS);
  return join(dir, file);
}

async function main() {
  nats = await startNats();
  lean = spawn(process.execPath, ["--import", "tsx", resolve(ROOT, "test/fixtures/rawUpstreamProcess.ts")], { stdio: ["ignore", "pipe", "inherit"] });
  const leanUrl = `http://127.0.0.1:${/port (\d+)/.exec(String((await once(lean.stdout!, "data"))[0]))![1]}/mcp`;
  const nodeArgs = [...NODE_ARGS, ...(SNAPSHOT_CLOSE > 0 ? ["--heapsnapshot-signal=SIGUSR2", `--diagnostic-dir=${dir}`] : [])];
  worker = run(process.execPath, [...nodeArgs, "--import", "tsx", resolve(ROOT, "runtime/main.ts")], workerEnv(nats, TEST_SECRET_KEY, { MCPGW_WORKER_ID: "sessions", MCPGW_LOG_LEVEL: "warn" }));
  const edge = await edgeUrlOf(worker);
  const pid = worker.child.pid!;
  const rssIdle = rssMbOf(pid);
  const admin = await nats.connect("admin");
  await request(admin, subjects("mcpgw").admin.gateway("add"), { name: "lean", transport: "streamable-http", url: leanUrl }, GatewayViewSchema, WAIT_MS);
  await until("the lean gateway routed", async () => {
    try {
      return await openSession(edge);
    } catch {
      return null;
    }
  }, WAIT_MS);

  const sessions: string[] = [];
  const failures: string[] = [];
  let openMs = 0;
  /** sessions begun (opened or failed): counted before the await, so the loops together begin exactly n */
  let begun = 0;
  const openUntil = async (n: number) => {
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (begun < n) {
          begun++;
          try {
            sessions.push(await openSession(edge));
          } catch (err) {
            failures.push(String(err).slice(0, 200));
          }
        }
      }),
    );
    openMs += performance.now() - t0;
  };

  await openUntil(WARM);
  await sleep(2_000);
  const base = { rss: rssMbOf(pid), ...(await scrape(edge)), sessions: sessions.length };
  const loadOpen = loadAverage();
  await openUntil(COUNT);
  await sleep(5_000);
  const all = { rss: rssMbOf(pid), ...(await scrape(edge)), sessions: sessions.length };
  const added = all.sessions - base.sessions;

  // calls on random sessions while every session is alive
  const loadCalls = loadAverage();
  const latencies: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    const id = sessions[Math.floor(Math.random() * sessions.length)]!;
    const t0 = performance.now();
    await call(edge, id);
    latencies.push(performance.now() - t0);
  }
  const parallel: number[] = [];
  const p0 = performance.now();
  let k = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (k++ < CALLS) {
        const t0 = performance.now();
        await call(edge, sessions[Math.floor(Math.random() * sessions.length)]!);
        parallel.push(performance.now() - t0);
      }
    }),
  );
  const parallelRate = parallel.length / ((performance.now() - p0) / 1000);
  const after = await scrape(edge);
  const rssAfterCalls = rssMbOf(pid);

  // what a live session holds: the heap freed by closing some of them, between two snapshots
  let perSession: ReturnType<typeof growthPer> | null = null;
  const closed = Math.min(SNAPSHOT_CLOSE, sessions.length - 1);
  if (closed > 0) {
    const live = await snapshot(edge);
    const alive = holdings(live);
    rmSync(live);
    const gone = sessions.splice(0, closed);
    for (let i = 0; i < gone.length; i += PARALLEL) {
      await Promise.all(gone.slice(i, i + PARALLEL).map((id) => fetch(edge, { method: "DELETE", headers: { "mcp-session-id": id, "mcp-protocol-version": PROTOCOL_VERSION } })));
    }
    const left = after.upstreamSessions - closed;
    await until("the closed sessions' upstream sessions gone", async () => (await scrape(edge)).upstreamSessions <= left, 5 * WAIT_MS);
    await sleep(2_000);
    const fewer = await snapshot(edge);
    perSession = growthPer(holdings(fewer), alive, closed);
    rmSync(fewer);
  }
  const seq = stats(latencies);
  const par = stats(parallel);

  const rows: Array<[string, string]> = [
    ["client sessions open (each with its upstream session)", `${all.sessions.toLocaleString("en")}; failed ${failures.length}${failures[0] ? ` (${failures[0]})` : ""}; upstream sessions the worker reports: ${after.upstreamSessions.toLocaleString("en")}`],
    ["opened per second (initialize, initialized, first call; " + PARALLEL + " at once)", `${(all.sessions / (openMs / 1000)).toFixed(0)} (load average ${loadOpen})`],
    ["worker RSS: idle, after the warm-up, with every session, after the calls", `${rssIdle.toFixed(0)} MB, ${base.rss.toFixed(0)} MB, ${all.rss.toFixed(0)} MB, ${rssAfterCalls.toFixed(0)} MB`],
    ["RSS per session [≤ 100 KB]", kb(((all.rss - base.rss) * 1024 * 1024) / added)],
    ["heap used per session (no forced GC) [≤ 100 KB]", `${kb((all.heapUsed - base.heapUsed) / added)} (heap used ${(all.heapUsed / 2 ** 20).toFixed(0)} MB of ${(all.heapTotal / 2 ** 20).toFixed(0)} MB)`],
    ["heap committed (heapTotal) and external memory per session", `${kb((all.heapTotal - base.heapTotal) / added)}, ${kb((all.external - base.external) / added)}`],
    ["worker flags", NODE_ARGS.join(" ") || "none"],
  ];
  if (perSession) {
    rows.push([`heap a live session holds (snapshots after GC: ${after.upstreamSessions.toLocaleString("en")} sessions, then ${closed} closed)`, kb(perSession.total)]);
    for (const r of perSession.rows.slice(0, 8)) rows.push([`  … ${r.what}`, `${kb(r.bytes)} (${r.count.toFixed(1)} objects)`]);
    // the classes among them say whose objects these are (the SDK client, XState, nats.js, undici…)
    const named = perSession.rows.filter((r) => /^[A-Z]/.test(r.what) && !/^(Object|Array|Map|Set|Promise|system \/)/.test(r.what) && r.count >= 0.9);
    rows.push(["  classes with an instance or more per session", named.slice(0, 24).map((r) => `${r.what} ${r.count.toFixed(0)}× ${(r.bytes / r.count).toFixed(0)} B`).join(", ")]);
  }
  rows.push(
    [`tools/call on a random session, one at a time (load average ${loadCalls})`, `p50 ${msFine(seq.p50)}, p99 ${msFine(seq.p99)}, max ${msFine(seq.max)} (n=${seq.n})`],
    [`tools/call on random sessions, ${PARALLEL} at once`, `${parallelRate.toFixed(0)} calls/s; p50 ${msFine(par.p50)}, p99 ${msFine(par.p99)}, max ${msFine(par.max)}`],
  );
  report(
    `Live sessions: ${COUNT.toLocaleString("en")} client sessions with one upstream session each, one worker`,
    `One worker process, one nats-server, a lean upstream process (JSON-RPC over HTTP, no SDK); clients are plain HTTP requests with no GET stream. ` +
      `Per session: growth from the warm-up (${WARM} sessions) to all of them, ÷ sessions added. Sessions idle longer than MCPGW_IDLE_VALIDATION (60 s) are probed before a call (that is in the call figures). ` +
      `2 shared cores; other engineers' tests run on this machine. Target from issue 12 in brackets.`,
    rows,
  );
  await admin.close();
}

try {
  await main();
} catch (err) {
  console.error(err, "\nthe worker's last output:\n", worker?.output().slice(-3000));
  process.exitCode = 1;
} finally {
  if (worker && worker.child.exitCode === null) {
    worker.child.kill("SIGTERM");
    await Promise.race([worker.exited, sleep(60_000)]);
    if (worker.child.exitCode === null) worker.child.kill("SIGKILL");
  }
  if (lean && lean.exitCode === null) {
    lean.kill("SIGTERM");
    await once(lean, "exit");
  }
  await nats?.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exit();

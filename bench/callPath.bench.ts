// The call path against a direct connection and against mcp-hub (issue 11). The same official
// SDK client, the same upstream (the SDK fixture server in a process of its own, streamable
// HTTP, `echo`), three paths: direct, mcp-hub 4.2.1 (SSE only toward clients; one upstream
// connection shared by all), mcpgw with two worker processes (a call through the worker that
// hosts the session actor, and through the other one). The paths are measured in alternating
// rounds (each round starts with another), so a busy machine weighs on all alike. Then, with the
// second worker stopped, a lean upstream (a minimal JSON-RPC server without the SDK:
// test/fixtures/rawUpstream.ts) measures mcpgw's own ceiling in calls/s through one worker, with a
// lean client (bench/leanLoad.ts: the SDK client on these 2 cores tops out near 600 calls/s even
// direct to the lean upstream), beside the same client direct to that upstream; the worker's CPU
// per call is the figure to compare code by.
// Prints a table with ratios to direct and to mcp-hub; writes an SVG of the latency distributions.
// Run: node --import tsx bench/callPath.bench.ts
// CALLPATH_ROUNDS (5), CALLPATH_CALLS (200 sequential calls per path and round), CALLPATH_SESSIONS (64),
// CALLPATH_LOAD_SECONDS (3 per path and round), CALLPATH_NEW_SESSIONS (10 per path and round),
// CALLPATH_LEAN_SECONDS (10), CALLPATH_LEAN_MAX_CALLS (200,000 per path), CALLPATH_ONLY=lean (the lean phase alone),
// CALLPATH_ONLY=hop (mcpgw through the hosting worker and through the other one, alternating, with each worker's and
// nats-server's CPU per call: the second-worker figure alone), CALLPATH_CHART (docs/callpath-latency.svg; "" for none),
// CALLPATH_CPU_PROF (a directory: both workers run with --cpu-prof and write their profiles there as they exit),
// CALLPATH_LOG_LEVEL (the workers' MCPGW_LOG_LEVEL, default info as in production).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { sessionKey } from "../protocol/edge.ts";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { subjects } from "../protocol/subjects.ts";
import { SessionListReplySchema } from "../protocol/upstream.ts";
import { encodeJson, request } from "../runtime/bus.ts";
import { startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { freePort, startNats, type TestNats } from "../test/helpers/nats.ts";
import { edgeUrlOf, processTree, ROOT, run, workerEnv, stopProc, type Proc } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import type { NatsConnection } from "@nats-io/nats-core";
import { TEST_SECRET_KEY } from "../test/helpers/worker.ts";
import { latencyChart } from "./chart.ts";
import { openLeanSessions } from "./leanLoad.ts";
import { cpuSecondsOf, loadAverage, msFine, ratio, runBench, stats, table } from "./report.ts";

const num = (name: string, dflt: number) => Number(process.env[name] ?? dflt);
const ROUNDS = num("CALLPATH_ROUNDS", 5);
const CALLS = num("CALLPATH_CALLS", 200);
const SESSIONS = num("CALLPATH_SESSIONS", 64);
const LOAD_MS = num("CALLPATH_LOAD_SECONDS", 3) * 1000;
const NEW_SESSIONS = num("CALLPATH_NEW_SESSIONS", 10);
const LEAN_MS = num("CALLPATH_LEAN_SECONDS", 10) * 1000;
const LEAN_MAX_CALLS = num("CALLPATH_LEAN_MAX_CALLS", 200_000);
const LEAN_IDLE_MS = 5_000;
/** "lean": only the lean phase (one worker, the lean upstream, the lean generator); "hop": only mcpgw's two paths (the second-worker figure) */
const ONLY = process.env.CALLPATH_ONLY;
const CHART = process.env.CALLPATH_CHART ?? "docs/callpath-latency.svg";
const CPU_PROF = process.env.CALLPATH_CPU_PROF;
const LOG_LEVEL = process.env.CALLPATH_LOG_LEVEL ?? "info";
const WAIT_MS = 60_000;

/** the floor's path: the least a gateway in Node adds (one HTTP hop, nothing else) */
const PROXY = "pass-through proxy";
const rel = (x: number, base: number, inverse = false) => `${ratio(inverse ? base / x : x / base)}×`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const s = subjects("mcpgw");

/** One client session on some path: its calls, and how it ends. */
type Session = { call(): Promise<void>; close(): Promise<void> };
/** An mcpgw session: its key, and the worker its requests go to (any worker serves any session). */
type RoutedSession = Session & { key(): string; via: { to: string } };
type Path = { name: string; open(): Promise<Session> };

function sdkClient(name: string) {
  return new Client({ name, version: "1.0.0" });
}

/** A session over streamable HTTP whose requests go wherever `target()` says at the time (a session of mcpgw is served by any worker). */
async function streamableSession(url: () => string, tool: string): Promise<Session & { client: Client; transport: StreamableHTTPClientTransport }> {
  const routed: typeof fetch = (input, init) => {
    const u = new URL(input instanceof Request ? input.url : String(input));
    const t = new URL(url());
    u.host = t.host;
    return fetch(u, init);
  };
  const transport = new StreamableHTTPClientTransport(new URL(url()), { fetch: routed });
  const client = sdkClient("callpath");
  await client.connect(transport);
  return {
    client,
    transport,
    call: async () => {
      await client.callTool({ name: tool, arguments: { text: "x" } });
    },
    close: async () => {
      await transport.terminateSession().catch(() => {});
      await client.close();
    },
  };
}

async function sseSession(url: string, tool: string): Promise<Session> {
  const client = sdkClient("callpath");
  await client.connect(new SSEClientTransport(new URL(url)));
  return {
    call: async () => {
      await client.callTool({ name: tool, arguments: { text: "x" } });
    },
    close: () => client.close(),
  };
}

/** The processes on the paths, by role; their CPU time is what a call costs, whatever else loads the machine. */
/** "workers": both workers; "w1" (where every benchmarked session's actor lives) and "w2" (the second worker) apart */
type Role = "workers" | "w1" | "w2" | "nats" | "hub" | "proxy" | "upstream";
const noCpu = (): Record<Role, number> => ({ workers: 0, w1: 0, w2: 0, nats: 0, hub: 0, proxy: 0, upstream: 0 });
/** `cpu`: during the sessions' load; `seqCpu`: during the sequential calls; `freshGateway`: mcpgw's new sessions on the gateway's own endpoint (its upstream session opens at initialize) */
type Figures = { seq: number[]; load: number[]; loadCalls: number; loadMs: number; fresh: number[]; freshGateway: number[]; cpu: Record<Role, number>; seqCpu: Record<Role, number> };
const newFigures = (): Figures => ({ seq: [], load: [], loadCalls: 0, loadMs: 0, fresh: [], freshGateway: [], cpu: noCpu(), seqCpu: noCpu() });
const pids: Record<Role, number[]> = { workers: [], w1: [], w2: [], nats: [], hub: [], proxy: [], upstream: [] };
/** CPU seconds used so far by each role's processes (an exited one counts nothing more). */
const cpuByRole = () =>
  Object.fromEntries(
    (Object.keys(pids) as Role[]).map((r) => [
      r,
      pids[r].reduce((n, pid) => {
        try {
          return n + cpuSecondsOf(pid);
        } catch {
          return n;
        }
      }, 0),
    ]),
  ) as Record<Role, number>;
/** This process's descendants whose command line matches `re`. */
const descendants = (re: RegExp) =>
  processTree(process.pid)
    .slice(1)
    .filter((pid) => {
      try {
        return re.test(readFileSync(`/proc/${pid}/cmdline`, "utf8"));
      } catch {
        return false;
      }
    });

async function timed(f: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

/** Every session calls back to back until `ms` have passed; the calls' latencies and how many. */
async function load(sessions: Session[], ms: number, into: Figures): Promise<void> {
  const cpu0 = cpuByRole();
  const t0 = performance.now();
  const end = t0 + ms;
  await Promise.all(
    sessions.map(async (x) => {
      while (performance.now() < end) {
        into.load.push(await timed(() => x.call()));
        into.loadCalls++;
      }
    }),
  );
  into.loadMs += performance.now() - t0;
  const cpu1 = cpuByRole();
  for (const r of Object.keys(pids) as Role[]) into.cpu[r] += cpu1[r] - cpu0[r];
}

function startHub(port: number, upstreamUrl: string, home: string): Proc {
  // mcp-hub fetches a marketplace catalog from the internet unless its cache is fresh: a fresh,
  // empty-looking cache keeps the benchmark on loopback
  const cache = join(home, "data", "mcp-hub", "cache");
  mkdirSync(cache, { recursive: true });
  writeFileSync(join(cache, "registry.json"), JSON.stringify({ registry: { version: "bench", generatedAt: Date.now(), totalServers: 1, servers: [{ id: "none" }] }, lastFetchedAt: Date.now(), serverDocumentation: {} }));
  const config = join(home, "mcp-hub.json");
  writeFileSync(config, JSON.stringify({ mcpServers: { up: { url: upstreamUrl } } }));
  return run(process.execPath, [resolve(ROOT, "node_modules/mcp-hub/dist/cli.js"), "--port", String(port), "--config", config], {
    HOME: home,
    XDG_DATA_HOME: join(home, "data"),
    XDG_STATE_HOME: join(home, "state"),
    XDG_CONFIG_HOME: join(home, "config"),
  });
}

/** A worker process; with `cpuProf`, profiled by V8 (the profile is written when it exits). */
function startWorker(nats: TestNats, id: string, cpuProf?: string): Proc {
  const nodeArgs = cpuProf ? ["--cpu-prof", "--cpu-prof-dir", cpuProf] : [];
  return run(process.execPath, [...nodeArgs, "--import", "tsx", resolve(ROOT, "runtime/main.ts")], workerEnv(nats, TEST_SECRET_KEY, { MCPGW_WORKER_ID: id, MCPGW_LOG_LEVEL: LOG_LEVEL }));
}

const procs: Proc[] = [];
const fixtures: Array<{ stop(): Promise<void> }> = [];
let nats: TestNats | undefined;
const home = mkdtempSync(join(tmpdir(), "mcpgw-callpath-"));

async function main() {
  nats = await startNats();
  const admin = await nats.connect("admin");
  // mcpgw: two workers (one for the lean phase alone)
  const w1 = startWorker(nats, "w1", CPU_PROF);
  const w2 = ONLY === "lean" ? undefined : startWorker(nats, "w2", CPU_PROF);
  procs.push(w1, ...(w2 ? [w2] : []));
  const edges: Record<string, string> = { w1: await edgeUrlOf(w1), ...(w2 ? { w2: await edgeUrlOf(w2) } : {}) };
  pids.workers = [w1.child.pid!, ...(w2 ? [w2.child.pid!] : [])];
  pids.w1 = [w1.child.pid!];
  pids.w2 = w2 ? [w2.child.pid!] : [];
  pids.nats = descendants(/nats-server/);
  const sdk = ONLY === "lean" ? undefined : await sdkPhase(admin, edges);
  if (ONLY === "hop") return reportHop(sdk!);
  await stopProc(w2);
  const lean = await leanPhase(admin, edges.w1!);
  if (sdk) reportSdk(sdk, lean);
  await admin.close();
}

/** mcp-hub in front of the upstream: its URL and its name of the upstream's echo tool. */
async function startHubPath(upstreamUrl: string): Promise<{ url: string; tool: string }> {
  const hubPort = await freePort();
  const hub = startHub(hubPort, upstreamUrl, home);
  procs.push(hub);
  const url = `http://127.0.0.1:${hubPort}/mcp`;
  const tool = await until(
    "mcp-hub serving the upstream's tools",
    async () => {
      try {
        const c = sdkClient("probe");
        await c.connect(new SSEClientTransport(new URL(url)));
        const name = (await c.listTools()).tools.map((t) => t.name).find((n) => /echo$/.test(n));
        await c.close();
        return name;
      } catch {
        return undefined;
      }
    },
    WAIT_MS,
  );
  pids.hub = [hub.child.pid!];
  if (/Fetching marketplace/.test(hub.output())) throw new Error("mcp-hub went to the internet for its marketplace: its cache was not found");
  return { url, tool };
}

/** The floor: a bare reverse proxy in Node (bench/passThroughProxy.ts) in front of the upstream; its URL. */
async function startProxyPath(upstreamUrl: string): Promise<string> {
  const proxy = run(process.execPath, ["--import", "tsx", resolve(ROOT, "bench/passThroughProxy.ts"), upstreamUrl], {});
  procs.push(proxy);
  const line = await proxy.waitFor(/proxy listening (\S+)/, WAIT_MS);
  pids.proxy = [proxy.child.pid!];
  return /proxy listening (\S+)/.exec(line)![1]!;
}

/** The SDK client's paths: direct, mcp-hub, the pass-through proxy, mcpgw through the hosting worker and through the other one. */
async function sdkPhase(admin: NatsConnection, edges: Record<string, string>) {
  const upstream = await startFixtureProcess();
  fixtures.push(upstream);
  await request(admin, s.admin.gateway("add"), { name: "up", transport: "streamable-http", url: upstream.url("gw") }, GatewayViewSchema, WAIT_MS);
  const probe = await streamableSession(() => edges.w1!, "up__echo");
  await until("the gateway's tools at the edge", async () => (await probe.client.listTools()).tools.some((t) => t.name === "up__echo"), WAIT_MS);
  await probe.close();

  /** the worker hosting the upstream session of each client session key */
  const hosts = async (): Promise<Map<string, string>> => {
    const reply = await request(admin, s.admin.sessionList, {}, SessionListReplySchema, WAIT_MS);
    return new Map(reply.sessions.map((x) => [x.sid, x.worker]));
  };

  pids.upstream = descendants(/fixtureHttpProcess/);
  const hub = ONLY === "hop" ? null : await startHubPath(upstream.url("hub"));
  const proxy = ONLY === "hop" ? null : await startProxyPath(upstream.url("proxy"));
  // ---- the paths ----
  // An mcpgw session is opened at w1; its first call places its actor there (a session nobody
  // hosts is activated by the worker its first call reaches). Later calls go to the hosting
  // worker, or to the other one.
  const openMcpgw = async (): Promise<RoutedSession> => {
    const via = { to: "w1" };
    const x = await streamableSession(() => edges[via.to]!, "up__echo");
    return { ...x, via, key: () => sessionKey(x.transport.sessionId!) };
  };
  /** Points each session at the worker hosting its actor, or at the other one. */
  const route = async (list: Session[], through: "host" | "other") => {
    const where = await hosts();
    for (const x of list as RoutedSession[]) {
      const host = where.get(x.key());
      if (!host) throw new Error("an mcpgw session has no upstream session");
      x.via.to = through === "host" ? host : host === "w1" ? "w2" : "w1";
    }
  };
  const paths: Path[] = [
    ...(ONLY === "hop"
      ? []
      : [
          { name: "direct", open: () => streamableSession(() => upstream.url("direct"), "echo") },
          { name: "mcp-hub", open: () => sseSession(hub!.url, hub!.tool) },
          { name: PROXY, open: () => streamableSession(() => proxy!, "echo") },
        ]),
    { name: "mcpgw", open: openMcpgw },
    { name: "mcpgw, 2nd worker", open: openMcpgw },
  ];
  const figures = new Map(paths.map((p) => [p.name, newFigures()]));

  // long-lived sessions per path: one for the sequential calls, SESSIONS for the load
  const single = new Map<string, Session>();
  const many = new Map<string, Session[]>();
  for (const p of paths) {
    single.set(p.name, await p.open());
    const list: Session[] = [];
    for (let i = 0; i < SESSIONS; i++) list.push(await p.open());
    many.set(p.name, list);
    // one call each: the mcpgw actors are placed before they are routed
    await Promise.all([single.get(p.name)!, ...list].map((x) => x.call()));
  }
  await route([single.get("mcpgw")!, ...many.get("mcpgw")!], "host");
  await route([single.get("mcpgw, 2nd worker")!, ...many.get("mcpgw, 2nd worker")!], "other");

  // the floor of the second worker's hop: one NATS request-reply to another process, a call's size
  const echo = await startEchoPath();
  const loads: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    loads.push(loadAverage());
    for (let i = 0; i < CALLS; i++) echo.latencies.push(await timed(echo.ask));
    const order = paths.map((_, i) => paths[(i + round) % paths.length]!);
    for (const p of order) {
      const f = figures.get(p.name)!;
      const one = single.get(p.name)!;
      const seqCpu0 = cpuByRole();
      for (let i = 0; i < CALLS; i++) f.seq.push(await timed(() => one.call()));
      const seqCpu1 = cpuByRole();
      for (const r of Object.keys(pids) as Role[]) f.seqCpu[r] += seqCpu1[r] - seqCpu0[r];
      await load(many.get(p.name)!, LOAD_MS, f);
      // new sessions: connect (initialize, initialized) and the first call; mcpgw's are told
      // apart afterwards by where their actor is (the first call's worker: so none is "2nd worker")
      if (p.name === "mcpgw, 2nd worker" || ONLY === "hop") continue;
      const fresh: Array<{ ms: number; session: Session }> = [];
      for (let i = 0; i < NEW_SESSIONS; i++) {
        const t0 = performance.now();
        const session = await p.open();
        await session.call();
        fresh.push({ ms: performance.now() - t0, session });
      }
      if (p.name === "mcpgw") {
        const where = await hosts();
        for (const x of fresh) (where.get((x.session as RoutedSession).key()) === "w1" ? f : figures.get("mcpgw, 2nd worker")!).fresh.push(x.ms);
        // the same on the gateway's own endpoint, where a session's upstream session opens at its initialize
        for (let i = 0; i < NEW_SESSIONS; i++) {
          const t0 = performance.now();
          const session = await streamableSession(() => edges.w1!.replace(/\/mcp$/, "/gateways/up/mcp"), "echo");
          await session.call();
          f.freshGateway.push(performance.now() - t0);
          fresh.push({ ms: 0, session });
        }
      } else f.fresh.push(...fresh.map((x) => x.ms));
      await Promise.all(fresh.map((x) => x.session.close()));
    }
  }
  for (const list of [...single.values(), ...[...many.values()].flat()]) await list.close().catch(() => {});

  await echo.close();
  return { paths, figures, loads, echo: echo.latencies };
}

/** bench/natsEchoResponder.ts in a process of its own, and a request to it the size of a call's. */
async function startEchoPath() {
  const responder = run(process.execPath, ["--import", "tsx", resolve(ROOT, "bench/natsEchoResponder.ts")], workerEnv(nats!, TEST_SECRET_KEY));
  procs.push(responder);
  const subject = /echo ready (\S+)/.exec(await responder.waitFor(/echo ready (\S+)/, WAIT_MS))![1]!;
  const nc = await nats!.connect("runtime");
  const body = encodeJson({ method: "tools/call", params: { name: "echo", arguments: { text: "x" } }, requestId: "0123456789abcdef", headers: {}, timeoutMs: 60_000, stream: "0123456789abcdef" });
  return {
    latencies: [] as number[],
    ask: async () => void (await nc.request(subject, body, { timeout: WAIT_MS })),
    close: () => nc.close(),
  };
}

type LeanFigures = { latencies: number[]; calls: number; failures: number; firstFailure?: string | undefined; ms: number; generator: number; cpu: Record<Role, number> };
const newLeanFigures = (): LeanFigures => ({ latencies: [], calls: 0, failures: 0, ms: 0, generator: 0, cpu: noCpu() });

/** mcpgw's own ceiling: the lean upstream through one worker, with the lean generator; direct to it as the reference. */
async function leanPhase(admin: NatsConnection, edgeUrl: string) {
  const lean = spawn(process.execPath, ["--import", "tsx", resolve(ROOT, "test/fixtures/rawUpstreamProcess.ts")], { stdio: ["ignore", "pipe", "inherit"] });
  fixtures.push({ stop: async () => void (lean.exitCode === null && (lean.kill("SIGTERM"), await once(lean, "exit"))) });
  const leanPort = Number(/port (\d+)/.exec(String((await once(lean.stdout!, "data"))[0]))![1]);
  const leanUrl = `http://127.0.0.1:${leanPort}/mcp`;
  pids.upstream = [lean.pid!];
  await request(admin, s.admin.gateway("add"), { name: "lean", transport: "streamable-http", url: leanUrl }, GatewayViewSchema, WAIT_MS);
  const leanProbe = await streamableSession(() => edgeUrl, "lean__echo");
  await until("the lean gateway's tools", async () => (await leanProbe.client.listTools()).tools.some((t) => t.name === "lean__echo"), WAIT_MS);
  await leanProbe.close();
  // the lean generator (bench/leanLoad.ts): raw keep-alive POSTs on initialized sessions, each answer read and checked
  // the floor: the same bare proxy as in the SDK phase, in front of the lean upstream
  const proxyUrl = await startProxyPath(leanUrl);
  const leanPaths = {
    direct: await openLeanSessions({ url: leanUrl, tool: "echo" }, SESSIONS),
    proxy: await openLeanSessions({ url: proxyUrl, tool: "echo" }, SESSIONS),
    mcpgw: await openLeanSessions({ url: edgeUrl, tool: "lean__echo" }, SESSIONS),
  };
  const leanFigures = { direct: newLeanFigures(), proxy: newLeanFigures(), mcpgw: newLeanFigures() };
  // one call each (the mcpgw sessions' actors are placed), then alternating halves
  for (const p of Object.values(leanPaths)) await p.run(WAIT_MS, SESSIONS);
  // what the worker spends with nothing to do (timers, KV watches, NATS pings): at a low call
  // rate on a busy machine it is a large share of "CPU per call", so the figure is given net of it too
  const idle0 = cpuByRole();
  const idleT0 = performance.now();
  await sleep(LEAN_IDLE_MS);
  const workerIdlePerSecond = (cpuByRole().workers - idle0.workers) / ((performance.now() - idleT0) / 1000);
  const leanLoads: string[] = [];
  for (let half = 0; half < 2; half++) {
    leanLoads.push(loadAverage());
    for (const name of ["direct", "proxy", "mcpgw"] as const) {
      const cpu0 = cpuByRole();
      const fromUs = process.hrtime.bigint() / 1000n;
      const r = await leanPaths[name].run(name === "mcpgw" ? LEAN_MS / 2 : LEAN_MS / 4, LEAN_MAX_CALLS / 2);
      const cpu1 = cpuByRole();
      // the window of a profile that is this load alone (bench/cpuProfile.ts takes it as `from-to`)
      if (CPU_PROF && name === "mcpgw") console.error(`lean mcpgw half ${half + 1}: profile window ${fromUs}-${process.hrtime.bigint() / 1000n}`);
      const f = leanFigures[name];
      f.latencies.push(...r.latencies);
      f.calls += r.calls;
      f.ms += r.elapsedMs;
      f.generator += r.cpuSeconds;
      f.failures += r.failures;
      f.firstFailure ??= r.firstFailure;
      for (const role of Object.keys(pids) as Role[]) f.cpu[role] += cpu1[role] - cpu0[role];
    }
  }
  await Promise.all(Object.values(leanPaths).map((p) => p.close()));
  /** CPU ms per call of a role, or of the generator */
  const leanPerCall = (f: LeanFigures, cpuSeconds: number) => (cpuSeconds * 1000) / f.calls;
  const leanRate = (f: LeanFigures) => f.calls / (f.ms / 1000);
  const leanRows = (["direct", "proxy", "mcpgw"] as const).map((name) => {
    const f = leanFigures[name];
    const l = stats(f.latencies);
    return [
      name === "direct" ? "direct to the lean upstream" : name === "proxy" ? PROXY : "mcpgw, one worker",
      `${leanRate(f).toFixed(0)}${name !== "direct" ? ` (${rel(leanRate(f), leanRate(leanFigures.direct))})` : ""}`,
      `${msFine(l.p50)} / ${msFine(l.p99)}`,
      name === "mcpgw"
        ? `${msFine(leanPerCall(f, f.cpu.workers))}; net of idle ${msFine(leanPerCall(f, f.cpu.workers - workerIdlePerSecond * (f.ms / 1000)))} (${((f.cpu.workers / (f.ms / 1000)) * 100).toFixed(0)}% of a core)`
        : name === "proxy"
          ? `${msFine(leanPerCall(f, f.cpu.proxy))} (${((f.cpu.proxy / (f.ms / 1000)) * 100).toFixed(0)}% of a core)`
          : "—",
      name === "mcpgw" ? msFine(leanPerCall(f, f.cpu.nats)) : "—",
      msFine(leanPerCall(f, f.cpu.upstream)),
      msFine(leanPerCall(f, f.generator)),
      f.failures === 0 ? "0" : `${f.failures} (first: ${f.firstFailure!.slice(0, 200).replace(/\s+/g, " ")})`,
    ];
  });
  table(
    "Call path: mcpgw's own ceiling, the lean upstream",
    `tools/call of \`echo\` on test/fixtures/rawUpstream.ts (JSON-RPC over HTTP, no SDK, own process), ${SESSIONS} sessions calling back to back through one worker, and direct to the same upstream ` +
      `as the reference, and through the pass-through proxy (the floor: one bare HTTP hop in Node), in alternating halves (direct and the proxy ${LEAN_MS / 2000} s, mcpgw ${LEAN_MS / 1000} s, at most ${LEAN_MAX_CALLS} calls each). The client is the lean generator (bench/leanLoad.ts: ` +
      `initialized sessions, raw keep-alive POSTs, each answer read to its end and checked), so the figure is the server's, not the SDK client's. CPU per call: CPU time of each process during the load ÷ calls; ` +
      `"net of idle": less what the worker used at rest (${(workerIdlePerSecond * 1000).toFixed(0)} ms of CPU per second, measured over ${LEAN_IDLE_MS / 1000} s before the load). "3,000 calls/s through one worker" needs the worker at ≤ 0.33 ms. 2 shared cores; load average ${leanLoads.join(", ")}.`,
    ["path", "calls/s", "p50 / p99", "CPU per call: worker (proxy)", "nats-server", "upstream", "generator", "calls not answered with their result"],
    leanRows,
  );

  return { figures: leanFigures, loads: leanLoads, rate: leanRate, perCall: leanPerCall, workerIdlePerSecond };
}

/**
 * The second-worker figure: mcpgw through the worker hosting each session's actor (w1) and through
 * the other one (w2), in alternating rounds; each worker's and nats-server's CPU per call, sequential
 * calls and the sessions' load apart.
 */
function reportHop(sdk: Awaited<ReturnType<typeof sdkPhase>>) {
  const { figures, loads } = sdk;
  const gw = figures.get("mcpgw")!;
  const gw2 = figures.get("mcpgw, 2nd worker")!;
  const cpuCells = (cpu: Record<Role, number>, calls: number) => {
    const per = (r: Role) => msFine((cpu[r] * 1000) / calls);
    return [per("w1"), per("w2"), per("nats")];
  };
  const rows = [
    ["through the hosting worker (w1)", gw],
    ["through the other worker (w2 → w1)", gw2],
  ].map(([name, f]) => {
    const x = f as Figures;
    const seq = stats(x.seq);
    return [name as string, msFine(seq.p50), msFine(seq.p99), ...cpuCells(x.seqCpu, x.seq.length), (x.loadCalls / (x.loadMs / 1000)).toFixed(0), ...cpuCells(x.cpu, x.loadCalls)];
  });
  const d = stats(gw2.seq).p50 - stats(gw.seq).p50;
  table(
    "Call path: through a second worker",
    `tools/call of \`echo\` with the MCP SDK client, mcpgw only: two worker processes and one nats-server; every session's actor lives at w1; ${ROUNDS} alternating rounds of ${CALLS} sequential calls ` +
      `and ${SESSIONS} sessions calling back to back for ${LOAD_MS / 1000} s per path. CPU per call: each process's CPU time during that phase ÷ calls (/proc, 10 ms ticks). ` +
      `2nd worker − hosting worker at p50: ${d >= 0 ? "+" : "−"}${msFine(Math.abs(d))} (target ≤ 0.3 ms; the floor, one NATS request-reply of a call's size between two processes: p50 ${msFine(stats(sdk.echo).p50)}). 2 shared cores; load average at each round ${loads.join(", ")}.`,
    ["path", "p50, conc. 1", "p99, conc. 1", "CPU/call conc. 1: w1", "w2", "nats-server", `calls/s, ${SESSIONS} sessions`, `CPU/call ${SESSIONS} sessions: w1`, "w2", "nats-server"],
    rows,
  );
}

function reportSdk(sdk: Awaited<ReturnType<typeof sdkPhase>>, lean: Awaited<ReturnType<typeof leanPhase>>) {
  const { paths, figures, loads } = sdk;
  const st = (name: string) => {
    const f = figures.get(name)!;
    const perCall = (r: Role) => (f.cpu[r] * 1000) / f.loadCalls;
    return { seq: stats(f.seq), load: stats(f.load), rate: f.loadCalls / (f.loadMs / 1000), fresh: f.fresh.length ? stats(f.fresh) : null, perCall };
  };
  const direct = st("direct");
  const hubS = st("mcp-hub");
  const rows = paths.map((p) => {
    const x = st(p.name);
    const vs = (v: number, d: number, h: number) => `${rel(v, d)} / ${rel(v, h)}`;
    return [
      p.name,
      `${msFine(x.seq.p50)} (${vs(x.seq.p50, direct.seq.p50, hubS.seq.p50)})`,
      `${msFine(x.seq.p99)} (${vs(x.seq.p99, direct.seq.p99, hubS.seq.p99)})`,
      `${x.rate.toFixed(0)} (${vs(x.rate, direct.rate, hubS.rate)})`,
      `${msFine(x.load.p99)} (${vs(x.load.p99, direct.load.p99, hubS.load.p99)})`,
      x.fresh ? `${msFine(x.fresh.p50)} (${x.fresh.n}; ${direct.fresh ? rel(x.fresh.p50, direct.fresh.p50) : "-"} / ${hubS.fresh ? rel(x.fresh.p50, hubS.fresh.p50) : "-"})` : "—",
      p.name === "direct" ? "—" : p.name === "mcp-hub" ? msFine(x.perCall("hub")) : p.name === PROXY ? msFine(x.perCall("proxy")) : `${msFine(x.perCall("workers"))} + nats-server ${msFine(x.perCall("nats"))}`,
      msFine(x.perCall("upstream")),
    ];
  });
  table(
    "Call path: direct, mcp-hub, mcpgw",
    `tools/call of \`echo\` with the MCP SDK client (${ROUNDS} alternating rounds; per path and round ${CALLS} sequential calls, ${SESSIONS} sessions calling back to back for ${LOAD_MS / 1000} s, ` +
      `${NEW_SESSIONS} new sessions, and for mcpgw ${NEW_SESSIONS} more on the gateway's own endpoint /gateways/up/mcp: see the targets). Upstream: the SDK fixture server (streamable HTTP, own process); mcp-hub 4.2.1 speaks SSE to clients and shares one upstream connection; the pass-through proxy (bench/passThroughProxy.ts) is one bare HTTP hop in Node, the least any gateway in Node adds; ` +
      `mcpgw: two worker processes and one nats-server, one upstream session per client session; "2nd worker": the call arrives at the worker that does not host the session's actor ` +
      `(a new session's actor is placed at the worker its first call reaches, so that path has no connect + first call figure). In brackets: ratio to direct / to mcp-hub (calls/s: higher is better). CPU per call: CPU time of the gateway's processes (both workers) and of the upstream during the ${SESSIONS}-session load, ÷ calls; ` +
      `a loaded machine inflates it too (caches shared by many runnable processes), but processes of one run compare. ` +
      `2 shared cores; load average at each round ${loads.join(", ")} (other engineers' tests run on this machine).`,
    ["path", "p50, concurrency 1", "p99, concurrency 1", `calls/s, ${SESSIONS} sessions`, `p99, ${SESSIONS} sessions`, "new session: connect + first call, p50 (n)", "CPU per call: gateway", "CPU per call: upstream"],
    rows,
  );
  const gw = st("mcpgw");
  const gw2 = st("mcpgw, 2nd worker");
  const floor = st(PROXY);
  const gwFresh = figures.get("mcpgw")!.freshGateway.length ? stats(figures.get("mcpgw")!.freshGateway) : null;
  const lf = lean.figures.mcpgw;
  const lg = stats(lf.latencies);
  const leanWorkerMs = lean.perCall(lf, lf.cpu.workers);
  const target = (ok: boolean) => (ok ? "met" : "**missed**");
  table(
    "Call path: issue 11's targets",
    `The figures above against the targets; the lean upstream's figures are those of the table before (load average ${lean.loads.join(", ")}).`,
    ["target", "measured", ""],
    [
      ["p50 ≤ 1.5× direct", `${rel(gw.seq.p50, direct.seq.p50)} (floor: the pass-through proxy ${rel(floor.seq.p50, direct.seq.p50)})`, target(gw.seq.p50 <= 1.5 * direct.seq.p50)],
      [`calls/s at ${SESSIONS} sessions ≥ 0.8× direct`, `${rel(gw.rate, direct.rate)} (the pass-through proxy ${rel(floor.rate, direct.rate)})`, target(gw.rate >= 0.8 * direct.rate)],
      [
        "connect + first call ≤ 2× direct, on /mcp",
        gw.fresh && direct.fresh ? `${rel(gw.fresh.p50, direct.fresh.p50)} (${msFine(gw.fresh.p50)}; mcp-hub ${hubS.fresh ? msFine(hubS.fresh.p50) : "—"}; the pass-through proxy ${floor.fresh ? rel(floor.fresh.p50, direct.fresh.p50) : "—"})` : "—",
        target(!!gw.fresh && !!direct.fresh && gw.fresh.p50 <= 2 * direct.fresh.p50),
      ],
      [
        "connect + first call ≤ 2× direct, on /gateways/up/mcp (upstream session opened at initialize)",
        gwFresh && direct.fresh ? `${rel(gwFresh.p50, direct.fresh.p50)} (${msFine(gwFresh.p50)}, n ${gwFresh.n})` : "—",
        target(!!gwFresh && !!direct.fresh && gwFresh.p50 <= 2 * direct.fresh.p50),
      ],
      ["ahead of mcp-hub: p50, calls/s", `${rel(gw.seq.p50, hubS.seq.p50)}, ${rel(gw.rate, hubS.rate)}`, target(gw.seq.p50 < hubS.seq.p50 && gw.rate > hubS.rate)],
      [
        "2nd worker: ≤ 0.3 ms more at p50",
        `${gw2.seq.p50 >= gw.seq.p50 ? "+" : "−"}${msFine(Math.abs(gw2.seq.p50 - gw.seq.p50))} (floor: one NATS request-reply of a call's size between two processes, p50 ${msFine(stats(sdk.echo).p50)})`,
        target(gw2.seq.p50 - gw.seq.p50 <= 0.3),
      ],
      [
        "lean upstream: ≥ 3,000 calls/s through one worker",
        `${lean.rate(lf).toFixed(0)} calls/s (p50 ${msFine(lg.p50)}, p99 ${msFine(lg.p99)}) with the lean generator; worker CPU per call ${msFine(leanWorkerMs)} (a core of its own would carry the worker to ${(1000 / leanWorkerMs).toFixed(0)} calls/s); direct to the same upstream ${lean.rate(lean.figures.direct).toFixed(0)} calls/s; the pass-through proxy ${lean.rate(lean.figures.proxy).toFixed(0)} calls/s at ${msFine(lean.perCall(lean.figures.proxy, lean.figures.proxy.cpu.proxy))} of CPU per call`,
        target(lean.rate(lf) >= 3000),
      ],
    ],
  );

  if (CHART) {
    const series = (pick: (f: Figures) => number[]) => paths.map((p) => ({ name: p.name, latenciesMs: pick(figures.get(p.name)!) }));
    writeFileSync(
      resolve(ROOT, CHART),
      latencyChart(
        [
          { title: "concurrency 1", series: series((f) => f.seq) },
          { title: `${SESSIONS} sessions, back to back`, series: series((f) => f.load) },
        ],
        `bench/callPath.bench.ts, ${new Date().toISOString().slice(0, 16)}Z, ${ROUNDS} rounds, load average ${loads.join("/")}`,
      ),
    );
    console.log(`\nlatency distributions: ${CHART}`);
  }
}

await runBench(main, procs, async () => {
  await Promise.all(fixtures.map((f) => f.stop().catch(() => {})));
  await nats?.stop();
  rmSync(home, { recursive: true, force: true });
});

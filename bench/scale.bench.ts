// Ten thousand gateways on one worker: one worker process, one nats-server, gateways added
// through `mcpgw.admin.gateway.add` (32 in parallel) at distinct URLs of a few fixture processes,
// default intervals (health 60 s, discovery 300 s). Reports adds per second; the worker's RSS
// after the adds and over the observation window; its CPU; health checks per second, the gap
// between two checks of a gateway against the interval, the busiest second over the mean;
// upstream initialize requests per second; KV writes per health interval; the classification's
// time (the worker's own figure, and the classifier's effects timed here against the same KV)
// and its KV round trips. Live client sessions are bench/sessions.bench.ts's.
// Run: node --import tsx bench/scale.bench.ts
// SCALE_GATEWAYS (10000), SCALE_WINDOW (10m: the observation window after the first interval),
// SCALE_FIXTURES (4), SCALE_WINDOW_AFTER (65s: from the last add to the window); SCALE_ONLY=classification measures the classification alone (no worker);
// SCALE_ONLY=adds the add phase alone, with CPU per add of the worker and the nats-server, then a `gateway ls` of them all (SCALE_ADDS_TAIL, 10s;
// SCALE_ADDS_ENABLED=false adds them disabled: the add path without pollers; SCALE_ADDS_VIA=import adds them with
// `mcpgw gateway import` of a JSON file, the CLI as its own process, and reports its rate and CPU per add too);
// The worker runs as `npm start` runs it (the bundle, with the start script's node flags);
// SCALE_NODE_ARGS (more node flags of the worker, e.g. "--cpu-prof --heapsnapshot-signal=SIGUSR2"),
// SCALE_WORKER_LOG (a file for the worker's output), SCALE_HEAP_SNAPSHOT=true (a heap snapshot of the
// worker once the window's figures are taken: a snapshot inflates RSS afterwards; sum it with bench/heapSnapshot.ts).
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { loadavg } from "node:os";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createActor, toPromise, type AnyActorLogic, type InputFrom, type OutputFrom } from "xstate";
import { parseEntry } from "../actors/kvStore.ts";
import { UsageAggregate } from "../actors/usageAggregate.ts";
import { ClassificationSchema } from "../protocol/classification.ts";
import { GatewayListReplySchema, GatewayViewSchema } from "../protocol/gateway.ts";
import { buckets, eventStream, KEYS, subjects, type Subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { parseDuration } from "../runtime/config.ts";
import { createClassifierEffects, followRoster } from "../runtime/classifierHost.ts";
import { followGatewayRecords } from "../runtime/gatewayRecords.ts";
import { openStores, type Stores } from "../runtime/nats.ts";
import { drainPings, startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { ROOT, run, runCli, workerEnv, type Proc } from "../test/helpers/processes.ts";
import { resolve } from "node:path";
import { until } from "../test/helpers/wait.ts";
import { directRegistry, memoryLogger, TEST_SECRET_KEY, testConfig } from "../test/helpers/worker.ts";
import { ms, ratio, report, stats } from "./report.ts";

const GATEWAYS = Number(process.env.SCALE_GATEWAYS ?? 10_000);
const WINDOW_MS = parseDuration(process.env.SCALE_WINDOW ?? "10m")!;
const FIXTURES = Number(process.env.SCALE_FIXTURES ?? 4);
/** from the last add to the window's start: one health interval; past the discovery interval (SCALE_WINDOW_AFTER=6m) the first discoveries are out of the window */
const WINDOW_AFTER_MS = parseDuration(process.env.SCALE_WINDOW_AFTER ?? "65s")!;
const HEALTH_MS = 60_000;
const PARALLEL = 32;
const SAMPLE_MS = 5_000;
const CLK_TCK = 100;

let nats: TestNats | undefined;
let worker: Proc | undefined;
const fixtures: Array<Awaited<ReturnType<typeof startFixtureProcess>>> = [];

const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
/** user + system CPU seconds of this process's children that exited and were waited for (the CLI of an import, once it exited) */
const reapedChildrenCpuSeconds = () => {
  const fields = readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[13]) + Number(fields[14])) / CLK_TCK;
};
/** user + system CPU seconds of a process so far */
const cpuSeconds = (pid: number) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
};
type FixtureTotals = { initializeRequests: number; sessions: number; connections: number; requests: Record<string, number> };
const fixtureStats = async (): Promise<FixtureTotals> => {
  const all = await Promise.all(fixtures.map((f) => fetch(`http://127.0.0.1:${f.port}/stats`).then((r) => r.json() as Promise<FixtureTotals>)));
  const requests: Record<string, number> = {};
  for (const s of all) for (const [k, n] of Object.entries(s.requests)) requests[k] = (requests[k] ?? 0) + n;
  const sum = (k: "initializeRequests" | "sessions" | "connections") => all.reduce((a, s) => a + s[k], 0);
  return { initializeRequests: sum("initializeRequests"), sessions: sum("sessions"), connections: sum("connections"), requests };
};
/** requests the upstreams received between two readings, per health check, by kind (`POST ping`, `POST tools/list`, `DELETE`) */
const requestsPerCheck = (a: FixtureTotals, b: FixtureTotals, checks: number) =>
  Object.entries(b.requests)
    .map(([k, n]) => [k, (n - (a.requests[k] ?? 0)) / checks] as const)
    .filter(([, n]) => n > 0)
    .sort(([, x], [, y]) => y - x)
    .map(([k, n]) => `${k} ${n.toFixed(3)}`)
    .join(", ");
const mb = (x: number) => `${Math.round(x)} MB`;
const freePort = () =>
  new Promise<number>((done) => {
    const srv = createServer().listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => done(port));
    });
  });
/**
 * The worker's own memory figures (its /metrics, prom-client's process.memoryUsage()): V8 heap
 * reserved and used, and memory outside the heap (buffers); RSS beyond these is the allocator's.
 * Read at the window's ends only: a scrape with 10,000 gateways' series is work of its own.
 */
const workerMemory = async (port: number) => {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const metric = (name: string) => Number(new RegExp(`^${name.replace(/[{}]/g, "\\$&")} (\\S+)`, "m").exec(text)?.[1] ?? NaN) / 2 ** 20;
  return {
    heapTotal: metric("nodejs_heap_size_total_bytes"),
    heapUsed: metric("nodejs_heap_size_used_bytes"),
    external: metric("nodejs_external_memory_bytes"),
    // the young generation's reservation (semi-spaces): V8 grows it to --max-semi-space-size under allocation
    newSpace: metric('nodejs_heap_space_size_total_bytes{space="new"}'),
    oldUsed: metric('nodejs_heap_space_size_used_bytes{space="old"}'),
    oldTotal: metric('nodejs_heap_space_size_total_bytes{space="old"}'),
  };
};
const memText = (m: Awaited<ReturnType<typeof workerMemory>>) =>
  `heap ${mb(m.heapUsed)} used of ${mb(m.heapTotal)} (old space ${mb(m.oldUsed)} of ${mb(m.oldTotal)}, new space ${mb(m.newSpace)}), external ${mb(m.external)}`;
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

/**
 * The classifier's effects of one worker (runtime/classifierHost.ts) against `stores`: the roster
 * from the gateway records, usage of every fifth gateway (as reports would bring it), then
 * classifications as the leader runs them (prepare, renew, commit, usage kept).
 */
async function measureClassification(stores: Stores, scratch: Stores) {
  const { log } = memoryLogger();
  const records = await followGatewayRecords(stores.gateways, log);
  const roster = followRoster(records.records);
  const enabled = roster.roster.enabledIds();
  const usage = new UsageAggregate(60_000);
  const used = enabled.filter((_, i) => i % 5 === 0);
  usage.ingest({ worker: "bench", at: Date.now(), gateways: used.map((gid, i) => ({ gid, lastUsedAt: Date.now() - i, uses: 1 + (i % 7), liveSessions: i % 3 })) }, performance.now());
  // lease, classification and usage in a state bucket of their own, beside the worker's
  const c = createClassifierEffects({ config: testConfig({ MCPGW_WORKER_ID: "bench-classifier", MCPGW_LEADER_TTL: "15s" }), log, stores: scratch, gateways: roster }, usage);
  const run = <L extends AnyActorLogic>(logic: L, input: InputFrom<L>): Promise<OutputFrom<L>> => toPromise(createActor(logic, { input }).start());
  let held = (await run(c.actors.acquire, { revision: 0 }))!;
  const times: number[] = [];
  const cpu: number[] = [];
  const duties: Array<NonNullable<typeof c.stats.lastDuty>> = [];
  for (let i = 0; i < 5; i++) {
    const prepared = await run(c.actors.prepareDuty, undefined);
    held = (await run(c.actors.renew, { revision: held }))!;
    await run(c.actors.commitDuty, { prepared, revision: held });
    duties.push(c.stats.lastDuty!);
    times.push(c.stats.lastDuty!.computeMs);
    cpu.push(c.stats.lastDuty!.cpuMs);
    // usage moves on between intervals for a few gateways
    usage.ingest({ worker: "bench", at: Date.now(), gateways: used.slice(0, 50).map((gid) => ({ gid, lastUsedAt: Date.now(), uses: 1, liveSessions: 1 })) }, performance.now());
  }
  await run(c.actors.release, { revision: held });
  roster.stop();
  records.stop();
  return { gateways: enabled.length, used: used.length, ms: stats(times), cpu: stats(cpu), first: duties[0]!, steady: duties.at(-1)! };
}

/** SCALE_ONLY=classification: the gateways written straight into KV (no worker, no polls), then the classification alone. */
async function classificationOnly() {
  nats = await startNats();
  const nc = await nats.connect();
  const stores = await openStores(nc, "mcpgw");
  const registry = directRegistry(stores);
  let next = 0;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < GATEWAYS) {
        const i = next++;
        await registry.add({ name: `g${i}`, transport: "streamable-http", url: `http://127.0.0.1:9/g${i}/mcp` });
      }
    }),
  );
  const c = await measureClassification(stores, await openStores(nc, "scalebench"));
  report(`Classification of ${GATEWAYS.toLocaleString("en")} gateways`, `The classifier's effects (runtime/classifierHost.ts) against a real nats-server holding ${GATEWAYS} gateway records; load average ${loadavg().map((l) => l.toFixed(1)).join(", ")}.`, [
    ["classification [≤ 50 ms]", `${c.gateways} gateways of which ${c.used} used: p50 ${ms(c.ms.p50)}, max ${ms(c.ms.max)} (n=${c.ms.n}); CPU p50 ${ms(c.cpu.p50)}, max ${ms(c.cpu.max)}`],
    ["KV round trips of a classification (reads, writes)", `first of a term ${c.first.kvReads}, ${c.first.kvWrites} (loads the usage kept); then ${c.steady.kvReads}, ${c.steady.kvWrites}`],
  ]);
}

/**
 * Adds GATEWAYS gateways through `mcpgw.admin.gateway.add`, PARALLEL at once, at distinct fixture URLs;
 * with the CPU per add (ms) of the worker and the nats-server (/proc: user + system).
 */
const specOf = (i: number, enabled: boolean) => ({ name: `g${i}`, transport: "streamable-http", url: fixtures[i % FIXTURES]!.url(`g${i}`), enabled });

/**
 * The adds as an operator makes them: `mcpgw gateway import` of a JSON file of every spec (32 at
 * once, its default), the CLI a process of its own. Its own report gives the adds and failures.
 */
async function importGateways(pids: { worker: number; nats: number }, enabled: boolean) {
  const file = resolve(nats!.dir, "import.json");
  writeFileSync(file, JSON.stringify(Array.from({ length: GATEWAYS }, (_, i) => specOf(i, enabled))));
  const cpu0 = { worker: cpuSeconds(pids.worker), nats: cpuSeconds(pids.nats), children: reapedChildrenCpuSeconds() };
  const started = Date.now();
  const cli = runCli(nats!, ["--json", "gateway", "import", file]);
  const { code } = await cli.exited;
  const ended = Date.now();
  const out = cli.output();
  const report = JSON.parse(out.slice(out.indexOf("{"), out.lastIndexOf("}") + 1)) as { added: number; failed: Array<{ error: string }>; seconds: number };
  const perAdd = (seconds: number) => (seconds * 1000) / Math.max(1, report.added);
  return {
    code,
    added: report.added,
    failures: report.failed.map((f) => f.error),
    perSecond: report.added / report.seconds,
    wallSeconds: (ended - started) / 1000,
    cpuPerAdd: { worker: perAdd(cpuSeconds(pids.worker) - cpu0.worker), nats: perAdd(cpuSeconds(pids.nats) - cpu0.nats), cli: perAdd(reapedChildrenCpuSeconds() - cpu0.children) },
  };
}

async function addGateways(admin: NatsConnection, s: Subjects, pids: { worker: number; nats: number }, enabled = true) {
  const latencies: number[] = [];
  const failures: string[] = [];
  const cpu0 = { worker: cpuSeconds(pids.worker), nats: cpuSeconds(pids.nats) };
  const started = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < GATEWAYS) {
        const i = next++;
        const t0 = performance.now();
        try {
          await request(admin, s.admin.gateway("add"), specOf(i, enabled), GatewayViewSchema, 30_000);
          latencies.push(performance.now() - t0);
        } catch (err) {
          failures.push(String(err));
        }
      }
    }),
  );
  const ended = Date.now();
  const perAdd = (seconds: number) => (seconds * 1000) / Math.max(1, latencies.length);
  const cpuPerAdd = { worker: perAdd(cpuSeconds(pids.worker) - cpu0.worker), nats: perAdd(cpuSeconds(pids.nats) - cpu0.nats) };
  return { latencies, failures, started, ended, perSecond: latencies.length / ((ended - started) / 1000), cpuPerAdd };
}

/** The last sequence of each bucket's stream and of the event stream: their differences count the JetStream writes made meanwhile. */
async function streamSequences(nc: NatsConnection): Promise<Record<string, number>> {
  const jsm = await jetstreamManager(nc);
  const b = buckets();
  const names = { gateways: `KV_${b.gateways}`, state: `KV_${b.state}`, catalog: `KV_${b.catalog}`, events: eventStream().name };
  const out: Record<string, number> = {};
  for (const [what, stream] of Object.entries(names)) out[what] = (await jsm.streams.info(stream)).state.last_seq;
  return out;
}

/** JetStream writes per add, by stream, between two `streamSequences`. */
const writesPerAdd = (before: Record<string, number>, after: Record<string, number>, adds: number) =>
  Object.keys(before)
    .map((k) => `${k} ${((after[k]! - before[k]!) / Math.max(1, adds)).toFixed(2)}`)
    .join(", ");

/** `mcpgw gateway ls`'s requests (page after page, 60 s each at most): the time, pages and gateways listed, or the failure. */
async function listAll(admin: NatsConnection, s: Subjects): Promise<string> {
  const t0 = performance.now();
  let pages = 0;
  let count = 0;
  try {
    for (let after: string | undefined; ; ) {
      const page = await request(admin, s.admin.gateway("list"), after ? { after } : {}, GatewayListReplySchema, 60_000);
      pages++;
      count += page.gateways.length;
      if (!(after = page.next)) break;
    }
    return `${ms(performance.now() - t0)} (${pages} pages, ${count.toLocaleString("en")} gateways)`;
  } catch (err) {
    return `failed after ${ms(performance.now() - t0)}: ${String(err)}`;
  }
}

/** The pid of the nats-server this process started (its child). */
function natsServerPid(): number {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === process.pid && stat.includes("(nats-server)")) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error("no nats-server child found");
}

/** Asks the worker (started with --heapsnapshot-signal=SIGUSR2) for a heap snapshot; resolves with its file once written. */
async function heapSnapshotOf(pid: number): Promise<string> {
  const mine = () => readdirSync(ROOT).filter((f) => f.endsWith(".heapsnapshot") && f.includes(`.${pid}.`));
  const before = new Set(mine());
  process.kill(pid, "SIGUSR2");
  let file: string | undefined;
  let size = -1;
  const end = Date.now() + 30 * 60_000;
  // written by the worker's main thread as it goes: done when the size stops changing for a second
  for (;;) {
    if (Date.now() > end) throw new Error("no heap snapshot of the worker within 30 minutes");
    await sleep(1_000);
    file ??= mine().find((f) => !before.has(f));
    if (!file) continue;
    const now = statSync(resolve(ROOT, file)).size;
    if (now > 0 && now === size) break;
    size = now;
  }
  return resolve(ROOT, file!);
}

/**
 * The worker's command line as `npm start` runs it (package.json's start script: the bundle,
 * built here first, and its node flags), so the bench measures what an operator runs.
 */
function npmStartArgs(): string[] {
  execFileSync("npm", ["run", "--silent", "build"], { cwd: ROOT, stdio: "inherit" });
  const start = (JSON.parse(readFileSync(resolve(ROOT, "package.json"), "utf8")) as { scripts: { start: string } }).scripts.start;
  const args = /^exec node (.+)$/.exec(start)?.[1]?.split(" ");
  if (!args) throw new Error(`package.json's start script is not "exec node <args>": ${start}`);
  return args.map((a) => (a.startsWith("-") ? a : resolve(ROOT, a)));
}

/** Starts the worker against `nats` and waits until it answers admin requests; returns its pid and edge port (for /metrics). */
async function startWorkerProcess(admin: NatsConnection, s: Subjects): Promise<{ pid: number; edgePort: number }> {
  const nodeArgs = (process.env.SCALE_NODE_ARGS ?? "").split(" ").filter(Boolean);
  if (process.env.SCALE_HEAP_SNAPSHOT === "true") nodeArgs.push("--heapsnapshot-signal=SIGUSR2");
  const edgePort = await freePort();
  worker = run(process.execPath, [...nodeArgs, ...npmStartArgs()], workerEnv(nats!, TEST_SECRET_KEY, { MCPGW_LOG_LEVEL: "warn", MCPGW_EDGE_PORT: String(edgePort) }));
  await until("the worker serving admin requests", async () => {
    try {
      await request(admin, s.admin.gateway("list"), {}, GatewayListReplySchema, 2_000);
      return true;
    } catch {
      return null;
    }
  }, 300_000);
  return { pid: worker.child.pid!, edgePort };
}

/**
 * SCALE_ONLY=adds: the add phase alone (pollers start as in the full run), with the CPU each add
 * costs the worker and the nats-server, and the worker's CPU in the SCALE_ADDS_TAIL after the last
 * add (work the adds left behind: first connects, discoveries). CPU per add is the figure to
 * compare on a shared machine; adds/s is the scheduler's there.
 */
async function addsOnly() {
  nats = await startNats();
  for (let i = 0; i < FIXTURES; i++) fixtures.push(await startFixtureProcess());
  const admin = await nats.connect("admin");
  const s = subjects("mcpgw");
  const { pid } = await startWorkerProcess(admin, s);
  const natsPid = natsServerPid();
  const tailMs = parseDuration(process.env.SCALE_ADDS_TAIL ?? "10s")!;
  const load = () => loadavg().map((l) => l.toFixed(1)).join(", ");
  const loadBefore = load();
  const enabled = process.env.SCALE_ADDS_ENABLED !== "false";
  const seq0 = await streamSequences(admin);
  const b0 = process.cpuUsage();
  if (process.env.SCALE_ADDS_VIA === "import") return importOnly(admin, s, { worker: pid, nats: natsPid }, enabled, loadBefore);
  const adds = await addGateways(admin, s, { worker: pid, nats: natsPid }, enabled);
  const b1 = process.cpuUsage(b0);
  const w1 = cpuSeconds(pid);
  const loadAfter = load();
  const seq1 = await streamSequences(admin);
  await sleep(tailMs);
  const w2 = cpuSeconds(pid);
  const listed = await listAll(admin, s);
  const a = stats(adds.latencies);
  const perAdd = (seconds: number) => `${((seconds * 1000) / adds.latencies.length).toFixed(2)} ms`;
  report(
    `Admin adds: ${GATEWAYS.toLocaleString("en")} gateways through one worker`,
    `One worker process, one nats-server, ${FIXTURES} fixture processes; mcpgw.admin.gateway.add ${PARALLEL} in parallel, ${enabled ? "gateways enabled (their pollers start)" : "gateways disabled (SCALE_ADDS_ENABLED=false: the add path alone)"}. ` +
      `CPU from /proc (user + system). Target from issue 12 in brackets.`,
    [
      ["admin adds per second [≥ 500]", `${adds.perSecond.toFixed(0)} (latency p50 ${ms(a.p50)}, p95 ${ms(a.p95)}, max ${ms(a.max)}); failed ${adds.failures.length}${adds.failures[0] ? ` (${adds.failures[0]})` : ""}`],
      ["CPU per add: worker, nats-server, this bench (the client)", `${adds.cpuPerAdd.worker.toFixed(2)} ms, ${adds.cpuPerAdd.nats.toFixed(2)} ms, ${perAdd((b1.user + b1.system) / 1e6)}`],
      ["worker CPU during the adds (% of one core)", `${((adds.cpuPerAdd.worker * adds.perSecond) / 10).toFixed(0)}%`],
      [`worker CPU in the ${ms(tailMs)} after the last add`, `${(w2 - w1).toFixed(1)} s (${perAdd(w2 - w1)} per add)`],
      ["JetStream writes per add during the adds, by stream (gateways: name index and record; state: claims, statuses, stamps; catalog; events)", writesPerAdd(seq0, seq1, adds.latencies.length)],
      ["machine load average (1, 5, 15 min): before, after the adds", `${loadBefore}; ${loadAfter}`],
      ["`gateway ls` of every gateway after the adds (pages as the CLI asks them)", listed],
    ],
  );
  await admin.close();
  if (process.env.SCALE_WORKER_LOG) writeFileSync(process.env.SCALE_WORKER_LOG, worker!.output());
}

/** SCALE_ONLY=adds SCALE_ADDS_VIA=import: the adds through `mcpgw gateway import`. */
async function importOnly(admin: NatsConnection, s: Subjects, pids: { worker: number; nats: number }, enabled: boolean, loadBefore: string) {
  const load = () => loadavg().map((l) => l.toFixed(1)).join(", ");
  const r = await importGateways(pids, enabled);
  const loadAfter = load();
  const listed = await listAll(admin, s);
  report(
    `Admin adds through \`mcpgw gateway import\`: ${GATEWAYS.toLocaleString("en")} gateways through one worker`,
    `One worker process, one nats-server, ${FIXTURES} fixture processes; the CLI (its own process, 32 adds at once) imports a JSON file of every spec, ${enabled ? "gateways enabled (their pollers start)" : "gateways disabled"}. CPU from /proc.`,
    [
      ["adds per second, as the CLI reports them [≥ 500]", `${r.perSecond.toFixed(0)} (${r.added.toLocaleString("en")} added, ${r.failures.length} failed${r.failures[0] ? `: ${r.failures[0]}` : ""}; exit code ${r.code}; ${r.wallSeconds.toFixed(1)} s with the CLI's start)`],
      ["CPU per add: worker, nats-server, the CLI (its start included)", `${r.cpuPerAdd.worker.toFixed(2)} ms, ${r.cpuPerAdd.nats.toFixed(2)} ms, ${r.cpuPerAdd.cli.toFixed(2)} ms`],
      ["machine load average (1, 5, 15 min): before, after the import", `${loadBefore}; ${loadAfter}`],
      ["`gateway ls` of every gateway after the import", listed],
    ],
  );
  await admin.close();
}

async function main() {
  if (process.env.SCALE_ONLY === "classification") return classificationOnly();
  if (process.env.SCALE_ONLY === "adds") return addsOnly();
  nats = await startNats();
  for (let i = 0; i < FIXTURES; i++) fixtures.push(await startFixtureProcess());
  const nc = await nats.connect();
  const admin = await nats.connect("admin");
  const stores = await openStores(nc, "mcpgw");
  const jsm = await jetstreamManager(nc);
  const s = subjects("mcpgw");

  const { pid, edgePort } = await startWorkerProcess(admin, s);
  const rssIdle = rssMb(pid);

  // health checks as the upstreams saw them (a ping each, by gateway name): a check writes nothing to KV
  const firstCheck = new Map<string, number>();
  const checks: Array<{ gid: string; at: number }> = [];
  let following = true;
  const followPings = (async () => {
    while (following) {
      for (const f of fixtures) {
        for (const [gid, at] of await drainPings(f.port).catch(() => [] as Array<[string, number]>)) {
          if (!firstCheck.has(gid)) firstCheck.set(gid, at);
          checks.push({ gid, at });
        }
      }
      await sleep(1_000);
    }
  })();

  // ---- adds ----
  const load = (): string => loadavg().map((l) => l.toFixed(1)).join(", ");
  const loadAtAdds = load();
  const adds = await addGateways(admin, s, { worker: pid, nats: natsServerPid() });
  const { latencies: addLatencies, failures: addFailures, ended: addsEnded, perSecond: addsPerSecond } = adds;
  const rssAfterAdds = rssMb(pid);

  // ---- the first interval: every gateway checked once ----
  // (bounded: a worker that falls behind is reported, not waited for)
  let everyChecked: number | null = null;
  while (everyChecked === null && Date.now() < addsEnded + 5 * HEALTH_MS) {
    if (firstCheck.size >= addLatencies.length) everyChecked = Date.now();
    else await sleep(250);
  }
  const checkedByThen = firstCheck.size;
  await sleep(Math.max(0, addsEnded + WINDOW_AFTER_MS - Date.now()));

  // ---- the observation window ----
  const windowStart = Date.now();
  const windowStartUs = process.hrtime.bigint() / 1000n;
  const loadAtWindow = load();
  const cpu0 = cpuSeconds(pid);
  const up0 = await fixtureStats();
  const seq0 = await Promise.all(["KV_mcpgw_state", "KV_mcpgw_catalog"].map(async (n) => (await jsm.streams.info(n)).state.last_seq));
  const rss: number[] = [rssMb(pid)];
  const mem0 = await workerMemory(edgePort).catch(() => null);
  const cpuSamples: number[] = [];
  let lastCpu = cpu0;
  while (Date.now() < windowStart + WINDOW_MS) {
    await sleep(SAMPLE_MS);
    rss.push(rssMb(pid));
    const c = cpuSeconds(pid);
    cpuSamples.push(((c - lastCpu) / (SAMPLE_MS / 1000)) * 100);
    lastCpu = c;
  }
  const windowEnd = Date.now();
  const windowEndUs = process.hrtime.bigint() / 1000n;
  const mem1 = await workerMemory(edgePort).catch(() => null);
  const cpuMean = ((cpuSeconds(pid) - cpu0) / ((windowEnd - windowStart) / 1000)) * 100;
  const up1 = await fixtureStats();
  const seq1 = await Promise.all(["KV_mcpgw_state", "KV_mcpgw_catalog"].map(async (n) => (await jsm.streams.info(n)).state.last_seq));
  following = false;
  await followPings;
  const intervals = (windowEnd - windowStart) / HEALTH_MS;

  // health checks in the window: per second, and the gap between two checks of one gateway
  const inWindow = checks.filter((c) => c.at >= windowStart && c.at < windowEnd);
  const seconds = Math.floor((windowEnd - windowStart) / 1000);
  const perSecond = new Array<number>(seconds).fill(0);
  for (const c of inWindow) {
    const i = Math.floor((c.at - windowStart) / 1000);
    if (i < seconds) perSecond[i]!++;
  }
  const meanPerSecond = perSecond.reduce((a, b) => a + b, 0) / seconds;
  const byGateway = new Map<string, number[]>();
  for (const c of checks) {
    let list = byGateway.get(c.gid);
    if (!list) byGateway.set(c.gid, (list = []));
    list.push(c.at);
  }
  const gaps: number[] = [];
  for (const list of byGateway.values()) {
    // gaps that end inside the window, and the open gap at its end (a gateway not checked since)
    for (let i = 1; i < list.length; i++) if (list[i]! >= windowStart && list[i]! < windowEnd) gaps.push(list[i]! - list[i - 1]!);
    const last = list.at(-1)!;
    if (windowEnd - last > HEALTH_MS) gaps.push(windowEnd - last);
  }
  const gapStats = stats(gaps.map((g) => g / HEALTH_MS));
  const late = gaps.filter((g) => g > 1.1 * HEALTH_MS).length;

  // The classification as the worker computes it: its meta.computeMs in KV (the worker's own
  // figure), and the same effects run here against the same KV with 10,000 gateways' usage,
  // timed and their KV round trips counted.
  const written = parseEntry(ClassificationSchema, await stores.state.get(KEYS.classification));
  // a classification that times out on a loaded machine must not cost the figures above
  const classification = await measureClassification(stores, await openStores(nc, "scalebench")).catch((err: unknown) => err as Error);
  const add = stats(addLatencies);
  report(
    `Scale: ${GATEWAYS.toLocaleString("en")} gateways on one worker`,
    `One worker process and one nats-server on this machine (2 cores, shared), ${GATEWAYS} gateways at distinct URLs of ${FIXTURES} fixture processes ` +
      `(streamable HTTP), added through mcpgw.admin.gateway.add ${PARALLEL} in parallel; default intervals (health ${ms(HEALTH_MS)}, discovery 300 s). ` +
      `Observation window ${ms(windowEnd - windowStart)}, starting ${ms(WINDOW_AFTER_MS)} after the last add. Targets from issue 12 in brackets.`,
    [
      [
        "admin adds per second [≥ 500]",
        `${addsPerSecond.toFixed(0)} (latency p50 ${ms(add.p50)}, p95 ${ms(add.p95)}, max ${ms(add.max)}); failed ${addFailures.length}${addFailures[0] ? ` (${addFailures[0]})` : ""}; ` +
          `CPU per add: worker ${adds.cpuPerAdd.worker.toFixed(2)} ms, nats-server ${adds.cpuPerAdd.nats.toFixed(2)} ms`,
      ],
      ["machine load average (1, 5, 15 min): at the adds, at the window, at the end", `${loadAtAdds}; ${loadAtWindow}; ${load()}`],
      ["worker RSS: idle, right after the adds", `${mb(rssIdle)}, ${mb(rssAfterAdds)}`],
      ["worker RSS over the window [≤ 300 MB, flat]", `start ${mb(rss[0]!)}, end ${mb(rss.at(-1)!)}, min ${mb(Math.min(...rss))}, max ${mb(Math.max(...rss))}`],
      ["worker memory (process.memoryUsage): window start; end", `${mem0 ? memText(mem0) : "unread"}; ${mem1 ? memText(mem1) : "unread"}`],
      ["worker CPU over the window [≤ 20% of one core]", `mean ${cpuMean.toFixed(1)}%, busiest ${SAMPLE_MS / 1000} s ${Math.max(...cpuSamples).toFixed(1)}%`],
      ["worker CPU per health check in the window (discoveries and writes included)", `${((cpuMean * 10) / meanPerSecond).toFixed(2)} ms`],
      ["upstream requests per health check in the window; TCP connects in the window", `${requestsPerCheck(up0, up1, inWindow.length)}; ${up1.connections - up0.connections}`],
      ["KV writes per health check in the window (state, catalog)", `${((seq1[0]! - seq0[0]!) / inWindow.length).toFixed(3)}, ${((seq1[1]! - seq0[1]!) / inWindow.length).toFixed(3)}`],
      [
        "last add → every gateway checked once",
        everyChecked === null
          ? `not within 5 intervals (${checkedByThen} of ${addLatencies.length} checked by then)`
          : `${ms(everyChecked - addsEnded)}; /interval ${ratio((everyChecked - addsEnded) / HEALTH_MS)}`,
      ],
      ["health checks per second in the window", `${meanPerSecond.toFixed(1)}; needed ${(GATEWAYS / (HEALTH_MS / 1000)).toFixed(1)}`],
      [
        "gap between two checks of a gateway / interval [≤ 1.1]",
        `p50 ${ratio(gapStats.p50)}, p95 ${ratio(gapStats.p95)}, max ${ratio(gapStats.max)} (n=${gapStats.n}); over 1.1: ${late}`,
      ],
      ["busiest second / mean [≤ 2]", `${ratio(Math.max(...perSecond) / meanPerSecond)} (busiest ${Math.max(...perSecond)}, quietest ${Math.min(...perSecond)})`],
      ["upstream initialize per second in the window", `${((up1.initializeRequests - up0.initializeRequests) / ((windowEnd - windowStart) / 1000)).toFixed(2)}; upstream sessions open at the end ${up1.sessions}`],
      ["KV writes per health interval (state, catalog)", `${((seq1[0]! - seq0[0]!) / intervals).toFixed(0)}, ${((seq1[1]! - seq0[1]!) / intervals).toFixed(0)}`],
      [
        "classification [≤ 50 ms]",
        `the worker's last: ${written?.meta.computeMs === undefined ? "none written" : `${ms(written.meta.computeMs)} (${written.meta.total} enabled)`}; ` +
          (classification instanceof Error
            ? `here: failed (${classification.message})`
            : `here, ${classification.gateways} gateways of which ${classification.used} used: p50 ${ms(classification.ms.p50)}, max ${ms(classification.ms.max)} (n=${classification.ms.n}); CPU p50 ${ms(classification.cpu.p50)}`),
      ],
      [
        "KV round trips of a classification (reads, writes)",
        classification instanceof Error
          ? "not measured"
          : `first of a term ${classification.first.kvReads}, ${classification.first.kvWrites} (loads the usage kept); then ${classification.steady.kvReads}, ${classification.steady.kvWrites}`,
      ],
      ["10,000 live client sessions: memory each, call p99 [≤ 100 KB]", "bench/sessions.bench.ts"],
      ["the window on the monotonic clock, µs (the worker's --cpu-prof over it: bench/cpuProfile.ts <file> 40 <from-to>)", `${windowStartUs}-${windowEndUs}`],
    ],
  );
  // last, once every figure is printed: writing a snapshot of a large heap takes minutes on a loaded machine
  if (process.env.SCALE_HEAP_SNAPSHOT === "true") console.log(`\nthe worker's heap snapshot after the window: ${await heapSnapshotOf(pid)}`);
  await admin.close();
  if (process.env.SCALE_WORKER_LOG) writeFileSync(process.env.SCALE_WORKER_LOG, worker!.output());
}

try {
  await main();
} catch (err) {
  console.error(err, "\nthe worker's last output:\n", worker?.output().slice(-3000));
  process.exitCode = 1;
} finally {
  if (worker && worker.child.exitCode === null) {
    worker.child.kill("SIGTERM");
    await Promise.race([worker.exited, sleep(30_000)]);
  }
  await Promise.all(fixtures.map((f) => f.stop()));
  await nats?.stop();
}
process.exit();

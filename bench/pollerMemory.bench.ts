// What one polled gateway holds in a worker's heap at steady state (issue 12: 10,000 gateways in
// ≤ 300 MB): a worker in this process (its pollers, ownership, kept sessions, records; no edge
// traffic) polls POLLMEM_GATEWAYS gateways of a fixture process; once every gateway was checked
// twice and discovered, two heap snapshots (V8 collects garbage first: only what is reachable)
// are compared, the first with POLLMEM_WARM gateways polled, the second with all: their
// difference per gateway, by what holds it. Load-independent (a count of objects, not a rate),
// unlike the scale bench's RSS, which also holds what V8 keeps as room.
// Run: node --import tsx bench/pollerMemory.bench.ts
// POLLMEM_GATEWAYS (2000), POLLMEM_WARM (50), POLLMEM_TOP (25 rows), POLLMEM_KEEP=true (keeps the two
// snapshots and prints where: `bench/heapSnapshot.ts --retainers <file> <what>` tells what holds a kind).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runInNewContext } from "node:vm";
import { setFlagsFromString, writeHeapSnapshot } from "node:v8";
import { startWorker } from "../runtime/worker.ts";
import { openStores } from "../runtime/nats.ts";
import { drainPings, startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { startNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { directRegistry, memoryLogger, testConfig } from "../test/helpers/worker.ts";
import { growthPer, holdings } from "./heapSnapshot.ts";
import { loadAverage, report } from "./report.ts";

const N = Number(process.env.POLLMEM_GATEWAYS ?? 2_000);
const WARM = Number(process.env.POLLMEM_WARM ?? 50);
const TOP = Number(process.env.POLLMEM_TOP ?? 25);
/**
 * Steady state, not a backlog: each gateway is discovered when added (adds at 25 a second, within
 * the host's 32 immediate discoveries a second) and checked every 30 s; no discovery falls due
 * within the hour, so at the snapshot no poll waits for a slot (a queued poll holds its promises,
 * closures and a discovery's AbortController: load, not what a gateway holds).
 */
const HEALTH = "30s";
const DISCOVERY = "1h";
const ADDS_PER_SECOND = 25;

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
const dir = mkdtempSync(join(tmpdir(), "pollmem-"));
const nats = await startNats();
const fixture = await startFixtureProcess();
const nc = await nats.connect("runtime");
// warn: a debug logger would keep a line per poll in memory
const { log } = memoryLogger("warn");
const worker = await startWorker(testConfig({ MCPGW_HEALTH_INTERVAL: HEALTH, MCPGW_DISCOVERY_INTERVAL: DISCOVERY, MCPGW_POLL_TIMEOUT: "30s" }), nc, log);
const registry = directRegistry(await openStores(await nats.connect("runtime"), "mcpgw"));
const checks = new Map<string, number>();
/** discoveries the fixture answered (tools/list) */
let discovered = 0;

/** adds gateways [from, to) and waits until each was checked twice (a kept session reused) and discovered */
async function pollGateways(from: number, to: number) {
  for (let i = from; i < to; i++) {
    const t0 = performance.now();
    await registry.add({ name: `g${i}`, transport: "streamable-http", url: fixture.url(`g${i}`) });
    await new Promise((r) => setTimeout(r, Math.max(0, 1000 / ADDS_PER_SECOND - (performance.now() - t0))));
  }
  await until(
    `${to} gateways checked twice`,
    async () => {
      for (const [gid] of await drainPings(fixture.port)) checks.set(gid, (checks.get(gid) ?? 0) + 1);
      let twice = 0;
      for (const n of checks.values()) if (n >= 2) twice++;
      return twice >= to;
    },
    30 * 60_000,
  );
  // claims that complete in a burst can exceed the immediate discoveries' budget: those wait for their slot
  const listed = async () => ((await (await fetch(`http://127.0.0.1:${fixture.port}/stats`)).json()) as { requests: Record<string, number> }).requests["POST tools/list"] ?? 0;
  await until(`${to} gateways discovered`, async () => (await listed()) >= to, 30_000).catch(() => {});
  discovered = await listed();
}

const KEEP = process.env.POLLMEM_KEEP === "true";
/** the heap used after a full GC, then a snapshot (which allocates, so it is taken second) */
const snapshot = (name: string) => {
  gc();
  const used = process.memoryUsage().heapUsed;
  const file = writeHeapSnapshot(join(dir, `${name}.heapsnapshot`));
  if (KEEP) console.log(`snapshot with ${name === "warm" ? WARM : WARM + N} gateways: ${file}`);
  return { used, held: holdings(file) };
};

try {
  await pollGateways(0, WARM);
  const before = snapshot("warm");
  await pollGateways(WARM, WARM + N);
  const after = snapshot("all");
  const g = growthPer(before.held, after.held, N);
  const rows: Array<[string, string]> = [
    ["heap a polled gateway holds (snapshots after GC) [10,000 in ≤ 300 MB of RSS]", `${(g.total / 1024).toFixed(2)} KB (heap used after a full GC: ${((after.used - before.used) / N / 1024).toFixed(2)} KB)`],
    ["gateways discovered once by the snapshot (the rest wait for their slot)", `${discovered} of ${WARM + N}`],
    ["load average (1 min)", loadAverage()],
  ];
  for (const r of g.rows.slice(0, TOP)) rows.push([`  ${r.what}`, `${r.bytes.toFixed(0)} B, ${r.count.toFixed(2)} per gateway`]);
  report(
    `Heap per polled gateway (${N.toLocaleString("en")} gateways)`,
    `A worker in this process polls ${N} streamable-HTTP gateways of one fixture process (health ${HEALTH}, discovery ${DISCOVERY}); heap snapshots with ${WARM} and ${WARM + N} gateways polled, each checked twice and discovered once.`,
    rows,
  );
} finally {
  await worker.stop().catch(() => {});
  await fixture.stop();
  await nats.stop();
  if (!KEEP) rmSync(dir, { recursive: true, force: true });
}
process.exit();

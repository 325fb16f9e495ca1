// What one poll costs the worker in CPU, without NATS: a health check (a ping on a gateway's kept
// session) and a discovery that finds nothing changed (its lists, the catalog's hash compared),
// as the poller host runs them (runtime/pollConnections.ts over runtime/pollerEffects.ts'
// probes on the worker's shared keep-alive agent), 16 at once over many gateways of a fixture
// process (test/fixtures/fixtureHttp.ts: the SDK's streamable-HTTP server, answers as SSE).
// CPU of this process only (the fixture runs in its own), so the figure holds on a loaded machine
// better than the scale bench's rates do; the scale bench's per-check figure adds NATS and KV.
// Run: node --import tsx bench/pollCost.bench.ts
// POLLCOST_GATEWAYS (200), POLLCOST_CHECKS (6000), POLLCOST_CPU_PROF (a directory: a CPU profile of the loops).
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { join } from "node:path";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import { sharedUpstreamAgent } from "../runtime/mcpClient.ts";
import { PollConnections } from "../runtime/pollConnections.ts";
import { discoverOn, probeConnector, type CatalogStore } from "../runtime/pollerEffects.ts";
import { subjects } from "../protocol/subjects.ts";
import { startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { gatewayRecord } from "../test/helpers/gateways.ts";
import { loadAverage, report } from "./report.ts";

const GATEWAYS = Number(process.env.POLLCOST_GATEWAYS ?? 200);
const CHECKS = Number(process.env.POLLCOST_CHECKS ?? 6_000);
const DISCOVERIES = Math.max(GATEWAYS, Math.floor(CHECKS / 5));
const CONCURRENCY = 16;
const TIMEOUT_MS = 60_000;

const fixture = await startFixtureProcess();
const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
const connections = new PollConnections(probeConnector((s) => s, DEFAULT_OUTBOUND_POLICY, agent), 0);
const records = Array.from({ length: GATEWAYS }, (_, i) =>
  gatewayRecord({ name: `g${i}`, id: i.toString(16).padStart(16, "0"), transport: "streamable-http", url: fixture.url(`g${i}`) }),
);
const signal = new AbortController().signal;
const connectsSoFar = async () => ((await (await fetch(`http://127.0.0.1:${fixture.port}/stats`)).json()) as { connections: number }).connections;

/** CPU µs of this process per operation, `n` operations CONCURRENCY at a time, round robin over the gateways */
async function cpuPer(n: number, op: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const cpu0 = process.cpuUsage();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < n) await op(next++);
    }),
  );
  const c = process.cpuUsage(cpu0);
  return (c.user + c.system) / n;
}

const check = (i: number) => connections.use(records[i % GATEWAYS]!, TIMEOUT_MS, (conn) => conn.check(signal));
/** the catalogs as KV would hold them (a get and a create, in memory: the KV round trips are the scale bench's) */
const catalogs = new Map<string, { revision: number; value: string }>();
const entry = (v: { revision: number; value: string }) => ({ operation: "PUT", revision: v.revision, json: () => JSON.parse(v.value) });
const store = {
  catalog: {
    get: async (key: string) => (catalogs.has(key) ? entry(catalogs.get(key)!) : null),
    create: async (key: string, value: string) => (catalogs.set(key, { revision: 1, value }), 1),
    update: async (key: string, value: string, revision: number) => (catalogs.set(key, { revision: revision + 1, value }), revision + 1),
  },
  js: { publish: async () => ({}) },
  s: subjects("mcpgw"),
  now: () => new Date(),
} as unknown as CatalogStore;
const discover = (i: number) => {
  const r = records[i % GATEWAYS]!;
  return connections.use(r, TIMEOUT_MS, (conn) => discoverOn(store, r.id, conn, signal));
};

const profiler = process.env.POLLCOST_CPU_PROF ? new Session() : null;
try {
  // sessions opened, code warm, every gateway's catalog known
  await cpuPer(GATEWAYS, discover);
  await cpuPer(CHECKS / 4, check);
  if (profiler) {
    profiler.connect();
    await profiler.post("Profiler.enable");
    await profiler.post("Profiler.start");
  }
  const load0 = loadAverage();
  const connects0 = await connectsSoFar();
  const checkUs = await cpuPer(CHECKS, check);
  const connects1 = await connectsSoFar();
  const discoveryUs = await cpuPer(DISCOVERIES, discover);
  const connects2 = await connectsSoFar();
  if (profiler) {
    const { profile } = await profiler.post("Profiler.stop");
    const file = join(process.env.POLLCOST_CPU_PROF!, `pollcost-${Date.now()}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    console.error(`profile: ${file}`);
  }
  report(
    "What one poll costs the worker (no NATS)",
    `${GATEWAYS} gateways of one fixture process (SDK streamable-HTTP server, SSE answers), kept sessions on the worker's shared agent, ${CONCURRENCY} polls at once; CPU of the polling process only. ` +
      `At 10,000 gateways and the default intervals a worker makes 166.7 checks and 33.3 discoveries a second.`,
    [
      ["machine load average (1 min): before, after", `${load0}; ${loadAverage()}`],
      [`CPU per health check (${CHECKS})`, `${checkUs.toFixed(0)} µs`],
      ["TCP connections the upstream accepted during the checks; during the discoveries", `${connects1 - connects0}; ${connects2 - connects1}`],
      [`CPU per discovery that found no change (${DISCOVERIES}: tools, prompts, resources, templates listed)`, `${discoveryUs.toFixed(0)} µs`],
      ["the two at 10,000 gateways (one discovery per five checks), per check", `${(checkUs + discoveryUs / 5).toFixed(0)} µs`],
    ],
  );
} finally {
  await connections.closeAll();
  await agent.close();
  await fixture.stop();
}

// Poll spreading: 1,000 gateways on one worker and one fixture process. How the health checks
// of one interval fall over its seconds (busiest second / mean), for the first interval after
// the worker starts (every poller waits for its slot rather than polling at once) and for the
// next one; as fallen due (the "poll" log lines) and as answered (the pings the upstream received:
// a health check writes nothing to KV).
// Run: node --import tsx bench/pollSpread.bench.ts
import { openStores } from "../runtime/nats.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { drainPings, startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { directRegistry, pollLines, startTestWorker, type TestWorker } from "../test/helpers/worker.ts";
import { ms, msStats, ratio, report, stats } from "./report.ts";

const GATEWAYS = 1_000;
const HEALTH_MS = 10_000;
const SECONDS = HEALTH_MS / 1000;
/** hang bound of every wait */
const WAIT_MS = 120_000;

let nats: TestNats | undefined;
let fixture: Awaited<ReturnType<typeof startFixtureProcess>> | undefined;
let worker: TestWorker | undefined;

/** Counts per second of [from, from + interval); busiest second over the mean. */
function perSecond(times: number[], from: number) {
  const counts = new Array<number>(SECONDS).fill(0);
  for (const t of times) if (t >= from && t < from + HEALTH_MS) counts[Math.floor((t - from) / 1000)]!++;
  const n = counts.reduce((a, b) => a + b, 0);
  const mean = n / SECONDS;
  return { counts, n, busiest: Math.max(...counts), mean, quietest: Math.min(...counts) };
}

const describe = (p: ReturnType<typeof perSecond>) =>
  `${p.n} checks; per second ${p.counts.join(" ")}; busiest ${p.busiest}, mean ${p.mean.toFixed(1)}: busiest/mean ${ratio(p.busiest / p.mean)}, quietest/mean ${ratio(p.quietest / p.mean)}`;

async function main() {
  nats = await startNats();
  // the fixture in its own process, so upstream and worker do not share one CPU
  const upstream = (fixture = await startFixtureProcess());

  // registered before any worker runs (no "added" events), as after a cluster restart
  const stores = await openStores(await nats.connect(), "mcpgw");
  const registry = directRegistry(stores);
  /** gateway id by name (the upstream knows the name in its path) */
  const idOf = new Map<string, string>();
  for (let i = 0; i < GATEWAYS; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, GATEWAYS - i) }, async (_, j) => {
        const view = await registry.add({ name: `g${i + j}`, transport: "streamable-http", url: upstream.url(`g${i + j}`) });
        idOf.set(view.name, view.id);
      }),
    );
  }

  const answered: Array<{ gid: string; at: number }> = [];
  let following = true;
  const followPings = (async () => {
    while (following) {
      for (const [name, at] of await drainPings(upstream.port)) answered.push({ gid: idOf.get(name)!, at });
      await new Promise((r) => setTimeout(r, 500));
    }
  })();

  const startedAt = Date.now();
  worker = await startTestWorker(nats, { MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: `${HEALTH_MS}ms`, MCPGW_DISCOVERY_INTERVAL: "1h" });
  const due = () => pollLines(worker!).filter((l) => l.kind === "health");
  const first = await until("a first health check", () => due()[0]?.time, WAIT_MS);
  // every gateway checked once, and two full intervals after the first check fell due
  const allChecked = await until("every gateway checked", () => (new Set(answered.map((x) => x.gid)).size === GATEWAYS ? Date.now() : null), WAIT_MS);
  await until("two intervals of health checks", () => Date.now() > first + 2 * HEALTH_MS + 2_000, WAIT_MS);
  const endedAt = Date.now();
  following = false;
  await followPings;

  const lines = due();
  const firstDue = new Map<string, number>();
  for (const l of lines) if (!firstDue.has(l.gid!)) firstDue.set(l.gid!, l.time);
  const firstInterval = perSecond([...firstDue.values()], first);
  const secondInterval = perSecond(
    lines.map((l) => l.time),
    first + HEALTH_MS,
  );
  const secondAnswered = perSecond(
    answered.map((x) => x.at),
    first + HEALTH_MS,
  );
  // fell due → answered: the wait for one of the 16 poll slots, then the ping reaching the upstream
  const waits: number[] = [];
  for (const x of answered) {
    const fell = lines.filter((l) => l.gid === x.gid && l.time <= x.at).at(-1);
    if (fell) waits.push(x.at - fell.time);
  }
  const throughput = answered.length / ((endedAt - first) / 1000);
  const needed = GATEWAYS / SECONDS;

  report(
    `Poll spreading: ${GATEWAYS} gateways, health every ${ms(HEALTH_MS)}`,
    `One in-process worker on a local nats-server, ${GATEWAYS} gateways on one fixture process (streamable HTTP), registered before the worker started, ` +
      `at most 16 polls at once (the default), slot jitter ≤ 5% of the interval. Seconds counted from the first check that fell due; ` +
      `"fell due" is the poll's log line (written before it waits for a free poll slot), "answered" the ping's arrival at the upstream.`,
    [
      ["worker start → first check fell due", ms(first - startedAt)],
      ["gateways whose first check fell due in the first interval", `${firstInterval.n} of ${GATEWAYS}`],
      ["first interval: first checks fell due", describe(firstInterval)],
      ["second interval: checks fell due", describe(secondInterval)],
      ["second interval: pings answered by the upstream", describe(secondAnswered)],
      ["first check → every gateway checked once", `${ms(allChecked - first)}; /interval ${ratio((allChecked - first) / HEALTH_MS)}`],
      ["checks answered per second (whole run)", `${throughput.toFixed(1)}; needed ${needed.toFixed(1)} (gateways / interval): ${ratio(throughput / needed)}`],
      ["fell due → answered (slot wait + ping)", msStats(stats(waits))],
    ],
  );
}

try {
  await main();
} finally {
  await worker?.stop().catch(() => {});
  await fixture?.stop();
  await nats?.stop();
}
process.exit(0);

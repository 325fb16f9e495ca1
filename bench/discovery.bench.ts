// How long an upstream change takes to reach the catalog: through scheduled discovery (at a
// 1 s interval: a change made right after a discovery, the worst case, and one made at a random
// moment), and through an upstream's list_changed (at a 10 min interval, so only the push can
// carry it). Latency is from the change to the catalog write (the catalog's discoveredAt, the
// worker's clock, which is this process's).
// Run: node --import tsx bench/discovery.bench.ts
import { getLive } from "../actors/kvStore.ts";
import { CatalogSchema, type Catalog } from "../protocol/catalog.ts";
import { PollStampSchema } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { publishEvent } from "../runtime/events.ts";
import { startFixtureHttp, type FixtureHttp } from "../test/fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { startTestWorker, type TestWorker } from "../test/helpers/worker.ts";
import { ms, msRow, report, stats } from "./report.ts";

const SCHEDULED_MS = 1_000;
const PUSH_INTERVAL_MS = 10 * 60_000;
const REPS = 15;
/** hang bound of every wait */
const WAIT_MS = 30_000;
const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_HEALTH_INTERVAL: "60s",
  // no classification during the run (with few gateways they would all turn cold, 3× the interval)
  MCPGW_USAGE_REPORT_INTERVAL: "10m",
};

let nats: TestNats | undefined;
let fixture: FixtureHttp | undefined;
const workers: TestWorker[] = [];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One gateway on its own worker, with the stamps of its discoveries as they are written. */
async function gatewayOn(prefix: string, discoveryMs: number) {
  const worker = await startTestWorker(nats!, { ...ENV, MCPGW_SUBJECT_PREFIX: prefix, MCPGW_DISCOVERY_INTERVAL: `${discoveryMs}ms` });
  workers.push(worker);
  const name = `${prefix}-gw`;
  const { id: gid } = await worker.registry.add({ name, transport: "streamable-http", url: fixture!.url(name) });
  const stamps: Array<{ at: number }> = [];
  const watch = await worker.stores.state.watch({ key: KEYS.pollDiscovery(gid) });
  void (async () => {
    for await (const e of watch) if (e.operation === "PUT") stamps.push({ at: Date.parse(PollStampSchema.parse(e.json()).at) });
  })();
  const catalog = async (): Promise<Catalog | null> => {
    const e = await getLive(worker.stores.catalog, KEYS.catalog(gid));
    return e ? CatalogSchema.parse(e.json()) : null;
  };
  await until("the first discovery", () => stamps.length > 0, WAIT_MS);
  /** adds a tool upstream; resolves with when the catalog was written with it */
  const written = async (tool: string) => (await until(`${tool} in the catalog`, async () => {
    const c = await catalog();
    return c?.tools.some((t) => t.name === tool) ? Date.parse(c.discoveredAt) : null;
  }, WAIT_MS));
  return { worker, gid, name, stamps, watch, written };
}

async function main() {
  nats = await startNats();
  fixture = await startFixtureHttp();

  // scheduled discovery every second
  const a = await gatewayOn("sched", SCHEDULED_MS);
  const worst: number[] = [];
  const random: number[] = [];
  const missed = { worst: 0, random: 0 };
  for (let i = 0; i < 2 * REPS; i++) {
    const kind = i % 2 === 0 ? "worst" : "random";
    // right after a scheduled discovery ended, or at a random moment of the interval
    const seen = a.stamps.length;
    await until("a scheduled discovery", () => a.stamps.length > seen, WAIT_MS);
    if (kind === "random") await sleep(Math.random() * SCHEDULED_MS);
    const tool = `scheduled_${i}`;
    const changedAt = Date.now();
    fixture.gateway(a.name).toolbox.add(tool);
    const writtenAt = await a.written(tool);
    (kind === "worst" ? worst : random).push(writtenAt - changedAt);
    await until("that discovery's stamp", () => a.stamps.some((s) => s.at >= writtenAt), WAIT_MS);
    missed[kind] += a.stamps.filter((s) => s.at > changedAt && s.at < writtenAt).length;
  }
  a.watch.stop();
  workers.splice(workers.indexOf(a.worker), 1);
  await a.worker.stop();

  // list_changed, with scheduled discovery only every 10 minutes
  const b = await gatewayOn("push", PUSH_INTERVAL_MS);
  const pushed: number[] = [];
  const debounce = b.worker.ctx.config.poller.listChangedDebounce;
  for (let i = 0; i < REPS; i++) {
    // past the debounce window of the last discovery, so the push is not held back by it
    await sleep(Math.max(0, b.stamps.at(-1)!.at + debounce + 1 - Date.now()));
    const tool = `pushed_${i}`;
    fixture.gateway(b.name).toolbox.add(tool);
    const changedAt = Date.now();
    await publishEvent(b.worker.stores.js, b.worker.ctx.s.evt.gateway(b.gid, "list_changed"), { type: "list_changed", gid: b.gid, at: new Date().toISOString(), lists: ["tools"] });
    pushed.push((await b.written(tool)) - changedAt);
    const n = i + 2; // the first discovery, then one per push
    await until("that discovery's stamp", () => b.stamps.length >= n, WAIT_MS);
  }
  b.watch.stop();
  report(
    "Discovery: new tool upstream → catalog, scheduled",
    `One in-process worker on a local nats-server, one fixture gateway (streamable HTTP, in-process), discovery every ${ms(SCHEDULED_MS)} ` +
      `(slot jitter ≤ 5%); a tool is added upstream ${REPS} times right after a scheduled discovery ended and ${REPS} times at a random moment. ` +
      `Latency from the change to the catalog write.`,
    [
      msRow("right after a discovery → catalog", worst, SCHEDULED_MS, "interval"),
      msRow("at a random moment → catalog", random, SCHEDULED_MS, "interval"),
      ["discoveries that ended after the change without it (in flight)", `${missed.worst + missed.random} of ${2 * REPS} changes`],
    ],
  );
  report(
    "Discovery: upstream list_changed → catalog",
    `Same setup, discovery every ${ms(PUSH_INTERVAL_MS)}; ${REPS} times a tool is added upstream and a list_changed event published ` +
      `(what an upstream session publishes on notifications/tools/list_changed), each past the ${ms(debounce)} debounce window of the previous discovery.`,
    [
      msRow("list_changed → catalog", pushed, debounce, "debounce"),
      ["list_changed → catalog, p95 / discovery interval", `${((stats(pushed).p95 / PUSH_INTERVAL_MS) * 100).toFixed(3)} %`],
    ],
  );
}

try {
  await main();
} finally {
  for (const w of workers) await w.stop().catch(() => {});
  await fixture?.close();
  await nats?.stop();
}
process.exit(0);

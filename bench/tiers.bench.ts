// Discovery tiers: the actual gaps between discoveries of hot and cold gateways (cold should
// run at about 3× the base interval, hot at 1×), the poller's planned gaps, and what happens
// once the classification expires, names them cold again, or is deleted (back to 1×), with
// how long the pollers take to apply each change.
// Run: node --import tsx bench/tiers.bench.ts
import { Kvm } from "@nats-io/kv";
import { parseEntry } from "../actors/kvStore.ts";
import { ClassificationSchema, type Classification, type Tier } from "../protocol/classification.ts";
import { GatewayStatusSchema } from "../protocol/gateway.ts";
import { PollStampSchema } from "../protocol/poller.ts";
import { KEYS, buckets } from "../protocol/subjects.ts";
import { startFixtureHttp, type FixtureHttp } from "../test/fixtures/fixtureHttp.ts";
import { connectClient } from "../test/helpers/edge.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { startTestWorker, type TestWorker } from "../test/helpers/worker.ts";
import { ms, msRow, ratio, report, stats } from "./report.ts";

const BASE_MS = 500;
const GATEWAYS = 10; // hot cap 2
const USED = 2;
const WINDOW_MS = { classified: 15_000, other: 10_000 };
/** hang bound of every wait */
const WAIT_MS = 30_000;
const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_DISCOVERY_INTERVAL: `${BASE_MS}ms`,
  MCPGW_HEALTH_INTERVAL: "1s",
  MCPGW_CLASSIFICATION_INTERVAL: "1s",
  MCPGW_USAGE_REPORT_INTERVAL: "250ms",
  MCPGW_LEADER_TTL: "3s",
};

type Stamp = { gid: string; at: number; planned: number };

let nats: TestNats | undefined;
let fixture: FixtureHttp | undefined;
let worker: TestWorker | undefined;
const stamps: Stamp[] = [];
/** gateway → its status tier changes, with when this process saw them (wall clock, as the worker's) */
const tiers = new Map<string, Array<{ tier: Tier; at: number }>>();

const tierNow = (gid: string) => tiers.get(gid)?.at(-1)?.tier;

/** Gaps between successive discoveries of each gateway whose stamps both fall in [from, to); the first gap after `from` is dropped (it may span the change). */
function gaps(gids: string[], from: number, to: number): { actual: number[]; planned: number[] } {
  const actual: number[] = [];
  const planned: number[] = [];
  for (const gid of gids) {
    const own = stamps.filter((s) => s.gid === gid && s.at >= from && s.at < to);
    for (let i = 2; i < own.length; i++) actual.push(own[i]!.at - own[i - 1]!.at);
    planned.push(...own.slice(1).map((s) => s.planned));
  }
  return { actual, planned };
}

/** Waits until every gateway's poller applies `tier` (its status shows it); returns how long after `since` each one's status changed. */
async function applied(gids: string[], tier: Tier, since: number): Promise<number[]> {
  await until(`${gids.length} gateways polled as ${tier}`, () => gids.every((g) => tierNow(g) === tier), WAIT_MS);
  return gids.map((g) => tiers.get(g)!.at(-1)!.at - since);
}

const watchFor = async (msLong: number) => {
  const from = Date.now();
  await new Promise((r) => setTimeout(r, msLong));
  return [from, Date.now()] as const;
};

async function main() {
  nats = await startNats();
  fixture = await startFixtureHttp();
  worker = await startTestWorker(nats, ENV);
  const nc = await nats.connect("runtime");
  const state = await new Kvm(nc).open(buckets().state);
  const watch = await state.watch({ key: ">" });
  void (async () => {
    for await (const e of watch) {
      const at = Date.now();
      if (e.operation !== "PUT") continue;
      if (e.key.startsWith("poll.") && e.key.endsWith(".discovery")) {
        const s = parseEntry(PollStampSchema, e);
        if (s?.nextAt) stamps.push({ gid: e.key.split(".")[1]!, at: Date.parse(s.at), planned: Date.parse(s.nextAt) - Date.parse(s.at) });
      } else if (e.key.startsWith(KEYS.gatewayStatusPrefix)) {
        const tier = parseEntry(GatewayStatusSchema, e)?.tier;
        const gid = e.key.slice(KEYS.gatewayStatusPrefix.length);
        const list = tiers.get(gid) ?? [];
        if (tier && list.at(-1)?.tier !== tier) tiers.set(gid, [...list, { tier, at }]);
      }
    }
  })();

  const ids: string[] = [];
  for (let i = 0; i < GATEWAYS; i++) ids.push((await worker.registry.add({ name: `g${i}`, transport: "streamable-http", url: fixture.url(`g${i}`) })).id);
  const used = ids.slice(0, USED);
  const idle = ids.slice(USED);

  // clients use the first gateways through the edge; the classifier makes them hot
  const { client } = await connectClient(worker.edge.url);
  for (let i = 0; i < USED; i++) {
    await until(`g${i}'s tools offered`, async () => (await client.listTools()).tools.some((t) => t.name === `g${i}__echo`), WAIT_MS);
    await client.callTool({ name: `g${i}__echo`, arguments: { text: "hi" } });
  }
  await until("the used gateways classified hot", async () => {
    const c = parseEntry(ClassificationSchema, await worker!.stores.state.get(KEYS.classification));
    return c && used.every((g) => c.hot.includes(g));
  }, WAIT_MS);
  await applied(used, "hot", Date.now());
  await applied(idle, "cold", Date.now());
  const [c0, c1] = await watchFor(WINDOW_MS.classified);
  const hot = gaps(used, c0, c1);
  const cold = gaps(idle, c0, c1);
  await client.close();

  // no classifier: the classification expires (the next worker's waits a 10-minute report window)
  await worker.stop();
  worker = await startTestWorker(nats, { ...ENV, MCPGW_USAGE_REPORT_INTERVAL: "10m" });
  const stale = parseEntry(ClassificationSchema, await worker.stores.state.get(KEYS.classification))!;
  const expiredApplied = await applied(idle, "unclassified", Date.parse(stale.validUntil));
  const [e0, e1] = await watchFor(WINDOW_MS.other);
  const expired = gaps(idle, e0, e1);

  // a valid classification naming them cold again
  const valid: Classification = { ...stale, hot: [], cold: ids, computedAt: new Date().toISOString(), validUntil: new Date(Date.now() + 3_600_000).toISOString() };
  const putAt = Date.now();
  await worker.stores.state.put(KEYS.classification, JSON.stringify(valid));
  const coldApplied = await applied(idle, "cold", putAt);
  const [v0, v1] = await watchFor(WINDOW_MS.other);
  const coldAgain = gaps(idle, v0, v1);

  // deleted: back to 1×
  const deletedAt = Date.now();
  await worker.stores.state.delete(KEYS.classification);
  const deletedApplied = await applied(idle, "unclassified", deletedAt);
  const [d0, d1] = await watchFor(WINDOW_MS.other);
  const deleted = gaps(idle, d0, d1);
  watch.stop();

  const p50 = (sample: number[]) => stats(sample).p50;
  report(
    "Discovery tiers: actual gaps",
    `One in-process worker, ${GATEWAYS} HTTP fixture gateways, discovery base interval ${ms(BASE_MS)}, classification every 1 s; ` +
      `${USED} used through the edge (hot), ${idle.length} idle (cold). Gaps between successive discovery stamps (\`at\`) of each gateway, ` +
      `watched ${WINDOW_MS.classified / 1000} s while classified and ${WINDOW_MS.other / 1000} s in each later state.`,
    [
      msRow("hot, live classification", hot.actual, BASE_MS, "base"),
      msRow("cold, live classification", cold.actual, BASE_MS, "base"),
      ["ratio cold/hot (p50)", ratio(p50(cold.actual) / p50(hot.actual))],
      msRow("formerly cold, classification expired", expired.actual, BASE_MS, "base"),
      msRow("cold, classification written again", coldAgain.actual, BASE_MS, "base"),
      ["ratio cold again / expired (p50)", ratio(p50(coldAgain.actual) / p50(expired.actual))],
      msRow("formerly cold, classification deleted", deleted.actual, BASE_MS, "base"),
      ["ratio cold again / deleted (p50)", ratio(p50(coldAgain.actual) / p50(deleted.actual))],
    ],
  );
  report(
    "Discovery tiers: planned gaps and how soon a change applies",
    "Planned: a discovery stamp's `nextAt − at` (the poller's plan for the tier it applied). Applied: from the classification's " +
      "expiry, write or delete to each idle gateway's status showing the new tier.",
    [
      msRow("planned, hot", hot.planned, BASE_MS, "base"),
      msRow("planned, cold", cold.planned, BASE_MS, "base"),
      msRow("planned, expired", expired.planned, BASE_MS, "base"),
      msRow("planned, cold again", coldAgain.planned, BASE_MS, "base"),
      msRow("planned, deleted", deleted.planned, BASE_MS, "base"),
      msRow("expiry → unclassified applied", expiredApplied, BASE_MS, "base"),
      msRow("write → cold applied", coldApplied, BASE_MS, "base"),
      msRow("delete → unclassified applied", deletedApplied, BASE_MS, "base"),
    ],
  );
}

try {
  await main();
} finally {
  await worker?.stop();
  await fixture?.close();
  await nats?.stop();
}
process.exit(0);

// Issue 6 end to end: gateways used through the edge become hot and are discovered at 1×,
// idle ones cold at 3×; an expired or deleted classification puts everyone back at 1×.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ClassificationSchema, type Classification, type Tier } from "../protocol/classification.ts";
import { GatewayStatusSchema } from "../protocol/gateway.ts";
import { PollStampSchema, type PollStamp } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { getLive, parseEntry } from "../actors/kvStore.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const BASE_MS = 500;
const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_DISCOVERY_INTERVAL: `${BASE_MS}ms`,
  MCPGW_HEALTH_INTERVAL: "1s",
  // a classification is valid for two intervals: 10 s leaves the leader 5 s of lag before the tiers lapse
  MCPGW_CLASSIFICATION_INTERVAL: "5s",
  MCPGW_USAGE_REPORT_INTERVAL: "250ms",
  MCPGW_LEADER_TTL: "3s",
};
/** hang bound of each wait (the steps take a few seconds) */
const WAIT_MS = 30_000;

/** The tier the gateway's poller last read (its stored status); null before it wrote one. */
async function statusTier(w: TestWorker, gid: string): Promise<Tier | null> {
  return parseEntry(GatewayStatusSchema, await getLive(w.stores.state, KEYS.gatewayStatus(gid)))?.tier ?? null;
}

async function discoveryStamp(w: TestWorker, gid: string): Promise<PollStamp | null> {
  return parseEntry(PollStampSchema, await getLive(w.stores.state, KEYS.pollDiscovery(gid)));
}

/**
 * Waits until the gateway's poller applies `tier` (its status says so), then for the next
 * discovery it runs, and returns how far ahead that discovery planned the following one, in
 * base intervals: the way to the gateway's next slot (at least half an interval, less than one
 * and a half, plus jitter under 1/20) and m − 1 more intervals for a multiplier m. So a 1× plan
 * lies in [½, 1.55), a 3× one in [2.5, 3.55); only the actual gaps depend on the machine's speed
 * (measured by bench/tiers.bench.ts).
 */
async function plannedGapAt(w: TestWorker, gid: string, tier: Tier): Promise<number> {
  await until(`${gid} polled as ${tier}`, async () => (await statusTier(w, gid)) === tier, WAIT_MS);
  // the stamp of a discovery that ran before the tier changed may still be the latest
  const before = (await discoveryStamp(w, gid))?.at;
  const stamp = await until(`a discovery of ${gid} as ${tier}`, async () => {
    const st = await discoveryStamp(w, gid);
    return st && st.at !== before ? st : null;
  }, WAIT_MS);
  return (Date.parse(stamp.nextAt!) - Date.parse(stamp.at)) / BASE_MS;
}

// The bounds that tell the two plans apart are 2.5 intervals. A 3× plan is never under it; a 1×
// plan would reach it only if the poller's transition itself stalled for almost an interval
// between reading the clock for `at` and for `nextAt`.
const assertOnce = (gap: number, what: string) => assert.ok(gap >= 0.5 && gap < 2.5, `${what}: next discovery planned ${gap} base intervals ahead, not at 1×`);
const assertThrice = (gap: number, what: string) => assert.ok(gap >= 2.5, `${what}: next discovery planned ${gap} base intervals ahead, not at 3×`);

describe("classification end to end", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let worker: TestWorker | undefined;
  const ids: string[] = [];

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
  });
  after(async () => {
    await worker?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("hot gateways are discovered at 1×, cold at 3×; expired or deleted classification means 1× for all", async () => {
    worker = await startTestWorker(nats, ENV);
    for (let i = 0; i < 5; i++) ids.push((await worker.registry.add({ name: `g${i}`, transport: "streamable-http", url: fixture.url(`g${i}`) })).id);
    const [used, idle] = [ids[0]!, ids[1]!];

    // a client uses g0 through the edge
    const { client } = await connectClient(`${worker.edge.url}`);
    await until("g0's tools offered", async () => (await client.listTools()).tools.some((t) => t.name === "g0__echo"), WAIT_MS);
    for (let i = 0; i < 3; i++) await client.callTool({ name: "g0__echo", arguments: { text: "hi" } });

    // N = 5: hot cap 1, and g0 is the only one with any use
    const classified = await until(
      "g0 classified hot",
      async () => {
        const c = parseEntry(ClassificationSchema, await getLive(worker!.stores.state, KEYS.classification));
        return c && c.hot.length === 1 && c.hot[0] === used ? c : false;
      },
      WAIT_MS,
    );
    assert.deepEqual([...classified.cold].sort(), ids.slice(1).sort());
    const { computeMs, ...meta } = classified.meta;
    assert.deepEqual(meta, { total: 5, hotCap: 1, hotActual: 1, eligible: 1, belowCapReason: null });
    assert.ok(computeMs === undefined || computeMs >= 0);

    const [hot, cold] = await Promise.all([plannedGapAt(worker, used, "hot"), plannedGapAt(worker, idle, "cold")]);
    assertOnce(hot, "hot");
    assertThrice(cold, "cold");
    await client.close();

    // Without a classifier the classification expires: cold becomes 1×.
    // The next worker's classifier waits a 10-minute report window before its first write.
    await worker.stop();
    worker = await startTestWorker(nats, { ...ENV, MCPGW_USAGE_REPORT_INTERVAL: "10m" });
    const stale = parseEntry(ClassificationSchema, await getLive(worker.stores.state, KEYS.classification))!;
    assertOnce(await plannedGapAt(worker, idle, "unclassified"), "expired");
    assert.ok(Date.now() > Date.parse(stale.validUntil), "unclassified only once the classification expired");

    // A valid classification naming it cold slows it to 3× again; deleting the key ends that.
    const valid: Classification = { ...stale, hot: [], cold: ids, computedAt: new Date().toISOString(), validUntil: new Date(Date.now() + 3_600_000).toISOString() };
    await worker.stores.state.put(KEYS.classification, JSON.stringify(valid));
    assertThrice(await plannedGapAt(worker, idle, "cold"), "cold again");
    await worker.stores.state.delete(KEYS.classification);
    assertOnce(await plannedGapAt(worker, idle, "unclassified"), "deleted");
  });
});

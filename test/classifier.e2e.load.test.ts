// Issue 6 end to end: gateways used through the edge become hot and are discovered at 1×,
// idle ones cold at 3×; an expired or deleted classification puts everyone back at 1×.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ClassificationSchema, type Classification } from "../protocol/classification.ts";
import { PollStampSchema } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { getLive } from "../actors/kvStore.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const BASE_MS = 500;
const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_DISCOVERY_INTERVAL: `${BASE_MS}ms`,
  MCPGW_HEALTH_INTERVAL: "1s",
  MCPGW_CLASSIFICATION_INTERVAL: "1s",
  MCPGW_USAGE_REPORT_INTERVAL: "250ms",
  MCPGW_LEADER_TTL: "3s",
};

/** Lets the cycle planned under the previous classification (at most 3×) run out. */
const settle = () => new Promise((r) => setTimeout(r, 2 * 3 * BASE_MS));

/** Median gap between successive discovery stamps of a gateway, watched for `ms`. */
async function discoveryGap(w: TestWorker, gid: string, ms: number): Promise<{ median: number; gaps: number[] }> {
  const seen: number[] = [];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const e = await getLive(w.stores.state, KEYS.pollDiscovery(gid));
    const at = e ? Date.parse(PollStampSchema.parse(e.json()).at) : null;
    if (at !== null && at !== seen.at(-1)) seen.push(at);
    await new Promise((r) => setTimeout(r, 50));
  }
  const gaps = seen.slice(1).map((t, i) => t - seen[i]!);
  const sorted = [...gaps].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)] ?? Number.NaN, gaps };
}

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
    await until("g0's tools offered", async () => (await client.listTools()).tools.some((t) => t.name === "g0__echo"), 15_000);
    for (let i = 0; i < 3; i++) await client.callTool({ name: "g0__echo", arguments: { text: "hi" } });

    // N = 5: hot cap 1, and g0 is the only one with any use
    const classified = await until(
      "g0 classified hot",
      async () => {
        const e = await getLive(worker!.stores.state, KEYS.classification);
        const c = e ? ClassificationSchema.parse(e.json()) : null;
        return c && c.hot.length === 1 && c.hot[0] === used ? c : false;
      },
      15_000,
    );
    assert.deepEqual([...classified.cold].sort(), ids.slice(1).sort());
    assert.deepEqual(classified.meta, { total: 5, hotCap: 1, hotActual: 1, eligible: 1, belowCapReason: null });

    const [hot, cold] = await Promise.all([discoveryGap(worker, used, 7_000), discoveryGap(worker, idle, 7_000)]);
    console.log(`# discovery gaps (base ${BASE_MS} ms): hot median ${hot.median} ms ${JSON.stringify(hot.gaps)}, cold median ${cold.median} ms ${JSON.stringify(cold.gaps)}`);
    assert.ok(hot.median < 2 * BASE_MS, `hot gateway discovered every ${hot.median} ms`);
    assert.ok(cold.median > 2 * BASE_MS, `cold gateway discovered every ${cold.median} ms`);
    await client.close();

    // Without a classifier the classification expires (valid for 2 × 1 s): cold becomes 1×.
    // The next worker's classifier waits a 10-minute report window before its first write.
    await worker.stop();
    worker = await startTestWorker(nats, { ...ENV, MCPGW_USAGE_REPORT_INTERVAL: "10m" });
    const stale = ClassificationSchema.parse((await getLive(worker.stores.state, KEYS.classification))!.json());
    await until("the classification to expire", () => Date.now() > Date.parse(stale.validUntil) + 100, 10_000);
    await settle();
    const expired = await discoveryGap(worker, idle, 5_000);
    console.log(`# expired classification: formerly cold gateway discovered every ${expired.median} ms ${JSON.stringify(expired.gaps)}`);
    assert.ok(expired.median < 2 * BASE_MS, `expired: ${expired.median} ms`);

    // A valid classification naming it cold slows it to 3× again; deleting the key ends that.
    const valid: Classification = { ...stale, hot: [], cold: ids, computedAt: new Date().toISOString(), validUntil: new Date(Date.now() + 3_600_000).toISOString() };
    await worker.stores.state.put(KEYS.classification, JSON.stringify(valid));
    await settle();
    const coldAgain = await discoveryGap(worker, idle, 6_000);
    assert.ok(coldAgain.median > 2 * BASE_MS, `cold again: ${coldAgain.median} ms`);
    await worker.stores.state.delete(KEYS.classification);
    await settle();
    const deleted = await discoveryGap(worker, idle, 5_000);
    console.log(`# deleted classification: discovered every ${deleted.median} ms ${JSON.stringify(deleted.gaps)} (valid cold: ${coldAgain.median} ms)`);
    assert.ok(deleted.median < 2 * BASE_MS, `deleted: ${deleted.median} ms`);
  });
});

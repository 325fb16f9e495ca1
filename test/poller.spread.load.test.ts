// 1,000 gateways on one fixture process and one worker: every gateway is polled, and every
// poll plans the next one at the gateway's own slot of the interval. That those slots are
// spread evenly is a property of the slot function (test/discovery.test.ts); how evenly the
// polls actually run is measured in bench/pollSpread.bench.ts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { phaseOf } from "../actors/discovery.ts";
import { PollStampSchema } from "../protocol/poller.ts";
import { openStores } from "../runtime/nats.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { startFixtureProcess } from "./fixtures/fixtureHttp.ts";
import { directRegistry, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const GATEWAYS = 1_000;
const HEALTH_MS = 10_000;
/** the poller adds up to 5% of the interval (at most 2 s) to each slot */
const JITTER_MAX_MS = Math.min(HEALTH_MS / 20, 2_000);

describe("poll spreading", () => {
  let nats: TestNats;
  let fixture: Awaited<ReturnType<typeof startFixtureProcess>>;
  let worker: TestWorker | undefined;
  before(async () => {
    nats = await startNats();
    // the fixture in its own process, so upstream and worker do not share one CPU
    fixture = await startFixtureProcess();
  });
  after(async () => {
    await worker?.stop();
    await fixture?.stop();
    await nats?.stop();
  });

  it(`${GATEWAYS} gateways: each is polled, and plans its next health check at its own slot, at least half an interval on`, async () => {
    // registered before any worker runs (no "added" events), as after a cluster restart
    const nc = await nats.connect();
    const stores = await openStores(nc, "mcpgw");
    const registry = directRegistry(stores);
    const gids: string[] = [];
    for (let i = 0; i < GATEWAYS; i += 50) {
      const added = await Promise.all(
        Array.from({ length: Math.min(50, GATEWAYS - i) }, (_, j) =>
          registry.add({ name: `g${i + j}`, transport: "streamable-http", url: fixture.url(`g${i + j}`) }),
        ),
      );
      gids.push(...added.map((g) => g.id));
    }

    // every health stamp written from the start: one per successful health check
    const stamps: Array<{ gid: string; at: number; nextAt: number; worker: string }> = [];
    const watch = await stores.state.watch({ key: "poll.*.health" });
    void (async () => {
      for await (const e of watch) {
        if (e.operation !== "PUT") continue;
        const s = PollStampSchema.parse(e.json());
        stamps.push({ gid: e.key.split(".")[1]!, at: Date.parse(s.at), nextAt: Date.parse(s.nextAt!), worker: s.worker });
      }
    })();
    try {
      worker = await startTestWorker(nats, { MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: `${HEALTH_MS}ms`, MCPGW_DISCOVERY_INTERVAL: "1h" });
      // the first interval (plus jitter) should see them all; the bound only stops a hang
      await until("a health check of every gateway", () => new Set(stamps.map((s) => s.gid)).size === GATEWAYS, 180_000);
    } finally {
      watch.stop();
    }

    assert.deepEqual(new Set(stamps.map((s) => s.gid)), new Set(gids));
    for (const s of stamps) {
      assert.equal(s.worker, worker.id);
      // never twice in one interval: the next check at least half an interval after this one ended
      assert.ok(s.nextAt - s.at >= HEALTH_MS / 2, `${s.gid}: next check ${s.nextAt - s.at} ms after the last`);
      // at the gateway's slot of the shared grid, plus its jitter
      const slot = Math.floor(phaseOf(s.gid) * HEALTH_MS);
      const pastSlot = (((s.nextAt - slot) % HEALTH_MS) + HEALTH_MS) % HEALTH_MS;
      assert.ok(pastSlot < JITTER_MAX_MS, `${s.gid}: next check ${pastSlot} ms past its slot`);
    }
  });
});

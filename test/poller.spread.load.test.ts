// 1,000 gateways on one fixture process and one worker: every gateway is polled (the upstream
// receives its ping), and every poller plans its next check at the gateway's own slot of the
// interval (its live status, asked at its address). That those slots are
// spread evenly is a property of the slot function (test/discovery.test.ts); how evenly the
// polls actually run is measured in bench/pollSpread.bench.ts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { phaseOf } from "../actors/discovery.ts";
import { PollerStatusReplySchema } from "../protocol/poller.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { openStores } from "../runtime/nats.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { drainPings, startFixtureProcess } from "./fixtures/fixtureHttp.ts";
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
    const added: Array<{ id: string; name: string }> = [];
    for (let i = 0; i < GATEWAYS; i += 50) {
      added.push(
        ...(await Promise.all(
          Array.from({ length: Math.min(50, GATEWAYS - i) }, (_, j) =>
            registry.add({ name: `g${i + j}`, transport: "streamable-http", url: fixture.url(`g${i + j}`) }),
          ),
        )),
      );
    }
    const gids = added.map((g) => g.id);

    // every health check as the upstream saw it (a check writes nothing to KV)
    const idOf = new Map(added.map((g) => [g.name, g.id] as const));
    const checked = new Set<string>();
    worker = await startTestWorker(nats, { MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: `${HEALTH_MS}ms`, MCPGW_DISCOVERY_INTERVAL: "1h" });
    // the first interval (plus jitter) should see them all; the bound only stops a hang
    await until("a health check of every gateway", async () => {
      for (const [name] of await drainPings(fixture.port)) checked.add(idOf.get(name)!);
      return checked.size === GATEWAYS;
    }, 180_000);
    assert.deepEqual(checked, new Set(gids));

    // each poller's live status, at its own address: the next check planned at its slot
    const s = subjects("mcpgw");
    const ask = () => Promise.all(gids.map((gid) => request(worker!.nc, s.poller.op(gid, "status"), {}, PollerStatusReplySchema, 30_000)));
    // a ping the upstream received may not be answered in the worker yet
    const replies = await until("every poller's check answered", async () => {
      const all = await ask();
      return all.every((r) => r.status.lastSuccessAt !== null) ? all : null;
    }, 60_000);
    // A first discovery falls at the gateway's slot of the (1 h) discovery interval and also sets
    // lastSuccessAt, so for the few gateways discovered during the test (tools counted) the last
    // success may not be a health check: their gap says nothing about the health plan; their slot does.
    let judged = 0;
    for (const r of replies) {
      assert.equal(r.worker, worker.id);
      const at = Date.parse(r.status.lastSuccessAt!);
      const nextAt = Date.parse(r.status.nextPollAt!);
      // never twice in one interval: the next check at least half an interval after the last one ended
      if (r.status.tools === 0) {
        judged++;
        assert.ok(nextAt - at >= HEALTH_MS / 2, `${r.gid}: next check ${nextAt - at} ms after the last`);
      }
      // at the gateway's slot of the shared grid, plus its jitter
      const slot = Math.floor(phaseOf(r.gid) * HEALTH_MS);
      const pastSlot = (((nextAt - slot) % HEALTH_MS) + HEALTH_MS) % HEALTH_MS;
      assert.ok(pastSlot < JITTER_MAX_MS, `${r.gid}: next check ${pastSlot} ms past its slot`);
    }
    assert.ok(judged >= GATEWAYS * 0.9, `the gap judged on ${judged} of ${GATEWAYS} gateways (the rest were discovered during the test)`);
  });
});

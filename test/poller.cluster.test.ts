// Poller ownership across two and three in-process workers: every gateway polled by exactly
// the worker rendezvous hashing names, a killed worker's gateways taken over by the survivor
// it names (and nothing else moved), a push missed during the ownership gap not lost.
// How fast a takeover happens is measured in bench/pollerTakeover.bench.ts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { delayToSlot, phaseOf } from "../actors/discovery.ts";
import { getLive } from "../actors/kvStore.ts";
import { CatalogSchema } from "../protocol/catalog.ts";
import { PollOwnerSchema } from "../protocol/poller.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { publishEvent } from "../runtime/events.ts";
import { openStores, type Stores } from "../runtime/nats.ts";
import { ownerOf } from "../actors/placement.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { until } from "./helpers/wait.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { pollLines, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const HEALTH_MS = 500;
const DISCOVERY_MS = 10 * 60_000;
const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_HEALTH_INTERVAL: `${HEALTH_MS}ms`,
  MCPGW_DISCOVERY_INTERVAL: `${DISCOVERY_MS}ms`,
};
/** default owner TTL (9 s): a dead worker's gateways move after it; waits for a takeover are hang bounds well beyond it */
const OWNER_TTL_MS = 9_000;
const HANG_MS = 30_000;

type Poll = { worker: string; gid: string; kind: string; time: number };

/** Polls the workers started, from their logs. */
function polls(workers: TestWorker[]): Poll[] {
  return workers.flatMap((w) => pollLines(w).map(({ gid, kind, time }) => ({ worker: w.id, gid, kind, time })));
}

const ownerIn = async (stores: Stores, gid: string) => {
  const e = await getLive(stores.state, KEYS.pollOwner(gid));
  return e ? (PollOwnerSchema.parse(e.json()).worker ?? null) : null;
};

describe("rendezvous ownership (no NATS)", () => {
  const ids = Array.from({ length: 3_000 }, (_, i) => (0x5eed0000 + i).toString(16).padStart(16, "0"));
  const workers = ["w0", "w1", "w2"];

  it("spreads gateways evenly over the live workers, whatever order they are listed in", () => {
    const counts = new Map<string, number>();
    for (const gid of ids) {
      const o = ownerOf(gid, workers)!;
      assert.equal(ownerOf(gid, [...workers].reverse()), o);
      counts.set(o, (counts.get(o) ?? 0) + 1);
    }
    for (const w of workers) assert.ok(Math.abs(counts.get(w)! - 1_000) < 100, `${w} owns ${counts.get(w)} of 3,000`);
  });

  it("moves only a dead worker's gateways, each to the survivor it would have gone to anyway", () => {
    for (const gid of ids) {
      const before = ownerOf(gid, workers)!;
      const after = ownerOf(gid, ["w0", "w2"])!;
      if (before !== "w1") assert.equal(after, before, `${gid} moved from live ${before}`);
      else assert.ok(after === "w0" || after === "w2");
    }
    assert.equal(ownerOf(ids[0]!, []), null);
  });
});

describe("gateway pollers across workers", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
  });
  after(async () => {
    await fixture?.close();
    await nats?.stop();
  });

  for (const count of [2, 3]) {
    it(`${count} workers: each gateway polled only by its owner; a killed worker's gateways taken over, nothing else moved`, async () => {
      const prefix = `c${count}`;
      const env = { ...ENV, MCPGW_SUBJECT_PREFIX: prefix, MCPGW_POLL_OWNER_TTL: `${OWNER_TTL_MS}ms` };
      const workers: TestWorker[] = [];
      try {
        for (let i = 0; i < count; i++) workers.push(await startTestWorker(nats, { ...env, MCPGW_WORKER_ID: `${prefix}-w${i}` }));
        const ids = workers.map((w) => w.id);
        const stores = workers[0]!.stores;
        // at least 12 gateways, and more until every worker owns one (gateway ids are random)
        const owner = new Map<string, string>();
        for (let i = 0; owner.size < 12 || new Set(owner.values()).size < count; i++) {
          const gid = (await workers[0]!.registry.add({ name: `${prefix}-g${i}`, transport: "streamable-http", url: fixture.url(`${prefix}-g${i}`) })).id;
          owner.set(gid, ownerOf(gid, ids)!);
        }
        const gids = [...owner.keys()];

        // settled: every gateway claimed by its owner, and polled by it
        await until(
          "every gateway claimed and polled by its owner",
          async () => {
            const seen = polls(workers);
            for (const gid of gids) {
              if ((await ownerIn(stores, gid)) !== owner.get(gid)) return false;
              if (!seen.some((p) => p.gid === gid && p.worker === owner.get(gid))) return false;
            }
            return true;
          },
          HANG_MS,
        );
        const settledAt = Date.now();
        // a few health intervals: every gateway polled twice more
        await until(
          "two more health checks of every gateway",
          () => gids.every((gid) => polls(workers).filter((p) => p.gid === gid && p.kind === "health" && p.time > settledAt).length >= 2),
          HANG_MS,
        );
        const notOwner = polls(workers).filter((p) => p.time > settledAt && p.worker !== owner.get(p.gid));
        assert.deepEqual(notOwner, [], "polls by a worker that does not own the gateway");
        const polling = new Set(polls(workers).filter((p) => p.time > settledAt).map((p) => p.worker));
        assert.equal(polling.size, count, `every worker polls its share: ${[...polling].join(",")}`);

        // kill the worker with the most gateways: its connection closes, nothing is cleaned up
        const perWorker = ids.map((w) => [w, gids.filter((g) => owner.get(g) === w).length] as const).sort((a, b) => b[1] - a[1]);
        const victimId = perWorker[0]![0];
        const victim = workers.find((w) => w.id === victimId)!;
        const orphans = gids.filter((gid) => owner.get(gid) === victimId);
        const survivors = workers.filter((w) => w !== victim);
        const heir = new Map(orphans.map((gid) => [gid, ownerOf(gid, survivors.map((w) => w.id))!]));
        const killedAt = Date.now();
        await victim.nc.close();

        // every orphan claimed by, and polled by, the survivor rendezvous hashing names
        await until(
          "every orphaned gateway claimed and polled again",
          async () => {
            const seen = polls(survivors);
            for (const gid of orphans) {
              if ((await ownerIn(survivors[0]!.stores, gid)) !== heir.get(gid)) return false;
              if (!seen.some((p) => p.gid === gid && p.time > killedAt)) return false;
            }
            return true;
          },
          OWNER_TTL_MS + HANG_MS,
        );
        const all = polls(workers).filter((p) => p.time > settledAt);
        for (const gid of orphans) {
          const byHeir = all.filter((p) => p.gid === gid && p.worker !== victimId);
          assert.ok(byHeir.every((p) => p.worker === heir.get(gid)), `${gid} polled by ${[...new Set(byHeir.map((p) => p.worker))].join(",")}, not only by ${heir.get(gid)}`);
          // no overlap: the dead owner's last poll comes before the heir's first
          const lastByVictim = Math.max(...all.filter((p) => p.gid === gid && p.worker === victimId).map((p) => p.time));
          assert.ok(lastByVictim < Math.min(...byHeir.map((p) => p.time)), `${gid} polled by ${victimId} after ${heir.get(gid)} took it over`);
        }
        // the survivors' own gateways stayed where they were
        const moved = all.filter((p) => !orphans.includes(p.gid) && p.worker !== owner.get(p.gid));
        assert.deepEqual(moved, [], "polls of a survivor's gateway by another worker");
        for (const gid of gids.filter((g) => !orphans.includes(g))) assert.equal(await ownerIn(survivors[0]!.stores, gid), owner.get(gid));
      } finally {
        for (const w of workers) await w.stop();
      }
    });
  }

  it("a list_changed published while a gateway has no poller is discovered by the worker that takes it over", async () => {
    const prefix = "lc";
    const env = { ...ENV, MCPGW_SUBJECT_PREFIX: prefix, MCPGW_POLL_OWNER_TTL: "2s" };
    const workers = [await startTestWorker(nats, { ...env, MCPGW_WORKER_ID: "lc-w0" })];
    try {
      // a gateway whose scheduled discovery is not due for 5 minutes (its slot in the 10-minute
      // grid): during this test only the missed push can make the new owner discover it
      let name = "";
      let gid = "";
      let slotAt = 0;
      for (let i = 0; !gid; i++) {
        const g = await workers[0]!.registry.add({ name: `lc-g${i}`, transport: "streamable-http", url: fixture.url(`lc-g${i}`) });
        const now = Date.now();
        const delay = delayToSlot(now, DISCOVERY_MS, phaseOf(g.id));
        if (delay >= 5 * 60_000) [name, gid, slotAt] = [`lc-g${i}`, g.id, now + delay];
        else await workers[0]!.registry.remove({ id: g.id });
      }
      const stores = await openStores(await nats.connect(), prefix); // outlives the killed worker's connection
      const tools = async () => {
        const e = await getLive(stores.catalog, KEYS.catalog(gid));
        return e ? CatalogSchema.parse(e.json()) : null;
      };
      await until("the first discovery", async () => (await tools())?.tools.some((t) => t.name === "echo"), HANG_MS);
      // a second worker that never saw the gateway added: to it the gateway is not new
      workers.push(await startTestWorker(nats, { ...env, MCPGW_WORKER_ID: "lc-w1" }));
      const ownerId = ownerOf(gid, workers.map((w) => w.id))!;
      await until("the gateway claimed and polled by its owner", async () => (await ownerIn(stores, gid)) === ownerId && polls(workers).some((p) => p.gid === gid && p.worker === ownerId), HANG_MS);
      const victim = workers.find((w) => w.id === ownerId)!;
      const heir = workers.find((w) => w !== victim)!;
      await victim.nc.close();
      // the upstream changes and says so while nobody polls it
      fixture.gateway(name).toolbox.add("late_tool");
      await publishEvent(stores.js, subjects(prefix).evt.gateway(gid, "list_changed"), { type: "list_changed", gid, at: new Date().toISOString(), lists: ["tools"] });
      const found = await until("the tool in the catalog after the takeover", async () => {
        const c = await tools();
        return c?.tools.some((t) => t.name === "late_tool") ? c : null;
      }, HANG_MS);
      assert.ok(Date.parse(found.discoveredAt) < slotAt, "discovered before the gateway's scheduled discovery was due");
      assert.equal(await ownerIn(stores, gid), heir.id, "by the worker that took it over");
    } finally {
      for (const w of workers) await w.stop();
    }
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { classify, GatewayRoster, hotCapOf, type UsageStats } from "../actors/classification.ts";
import { UsageAggregate } from "../actors/usageAggregate.ts";

const ids = (n: number) => Array.from({ length: n }, (_, i) => `g${String(i).padStart(2, "0")}`);
const used = (lastUsedAt: number | null, liveSessions = 0, uses = 1): UsageStats => ({ lastUsedAt, liveSessions, uses });

describe("classification algorithm", () => {
  it("hot cap is floor(20% of N): N < 5 gives 0", () => {
    const table: Array<[number, number]> = [[0, 0], [1, 0], [4, 0], [5, 1], [9, 1], [10, 2], [14, 2], [15, 3], [35, 7], [10_000, 2000]];
    for (const [n, cap] of table) assert.equal(hotCapOf(n), cap, `N=${n}`);
    const r = classify(ids(4), () => used(1000, 5, 50));
    assert.deepEqual(r.hot, []);
    assert.deepEqual(r.cold, ids(4));
    assert.equal(r.meta.hotCap, 0);
    assert.equal(r.meta.eligible, 4);
    assert.equal(r.meta.belowCapReason, null);
  });

  it("breaks ties by last used, then live sessions, then use count, then id", () => {
    const gids = ids(20); // cap 4
    const usage: Record<string, UsageStats> = {
      g00: used(100), // oldest
      g01: used(500, 0, 1),
      g02: used(500, 2, 1), // same time as g01, more live sessions
      g03: used(500, 2, 9), // same time and sessions as g02, more uses
      g04: used(900), // newest
      g05: used(500, 0, 1), // identical to g01: id decides
    };
    const r = classify(gids, (g) => usage[g]);
    assert.deepEqual(r.hot, ["g04", "g03", "g02", "g01"]);
    assert.ok(r.cold.includes("g05") && r.cold.includes("g00"));
    assert.deepEqual(r.meta, { total: 20, hotCap: 4, hotActual: 4, eligible: 6, belowCapReason: null });
  });

  it("never makes a gateway without recorded use hot, and records why hot is below the cap", () => {
    const usage: Record<string, UsageStats> = { g07: used(10), g08: { lastUsedAt: null, liveSessions: 0, uses: 0 } };
    const r = classify(ids(15), (g) => usage[g]); // cap 3, one eligible
    assert.deepEqual(r.hot, ["g07"]);
    assert.equal(r.cold.length, 14);
    assert.equal(r.meta.hotActual, 1);
    assert.equal(r.meta.eligible, 1);
    assert.match(r.meta.belowCapReason ?? "", /only 1 of 15 .* hot cap of 3/);
    const none = classify(ids(15), () => undefined);
    assert.deepEqual(none.hot, []);
    assert.equal(none.cold.length, 15);
  });

  it("counts live sessions alone as recorded use", () => {
    const r = classify(ids(5), (g) => (g === "g03" ? { lastUsedAt: null, liveSessions: 1, uses: 0 } : undefined));
    assert.deepEqual(r.hot, ["g03"]);
  });

  it("is a function of its inputs: any order, any run, same result; hot ⊆ eligible; hot ∪ cold = all", () => {
    const stats = fc.record({ lastUsedAt: fc.option(fc.integer({ min: 0, max: 50 }), { nil: null }), liveSessions: fc.nat(3), uses: fc.nat(3) });
    fc.assert(
      fc.property(fc.uniqueArray(fc.stringMatching(/^[a-z0-9]{1,4}$/), { maxLength: 40 }), fc.array(stats, { maxLength: 40 }), (gids, list) => {
        const usage = new Map(gids.map((g, i) => [g, list[i]] as const));
        const r1 = classify(gids, (g) => usage.get(g));
        const r2 = classify([...gids].reverse(), (g) => usage.get(g));
        assert.deepEqual(r2, r1);
        const eligible = gids.filter((g) => {
          const u = usage.get(g);
          return !!u && (u.lastUsedAt !== null || u.uses > 0 || u.liveSessions > 0);
        });
        assert.equal(r1.hot.length, Math.min(hotCapOf(gids.length), eligible.length));
        assert.ok(r1.hot.every((g) => eligible.includes(g)));
        assert.deepEqual([...r1.hot, ...r1.cold].sort(), [...gids].sort());
        assert.equal(r1.meta.belowCapReason === null, r1.hot.length === r1.meta.hotCap);
      }),
    );
  });
});

describe("usage aggregate", () => {
  const report = (worker: string, gateways: Array<[string, number | null, number, number]>) => ({
    worker,
    at: 0,
    gateways: gateways.map(([gid, lastUsedAt, uses, liveSessions]) => ({ gid, lastUsedAt, uses, liveSessions })),
  });

  it("takes the max of last used, sums use counts and each worker's latest live sessions", () => {
    const a = new UsageAggregate(10_000);
    a.ingest(report("w1", [["g1", 100, 2, 1]]), 0);
    a.ingest(report("w2", [["g1", 300, 3, 2]]), 1);
    a.ingest(report("w1", [["g1", 200, 1, 4]]), 2); // w1's latest replaces its earlier live count
    assert.deepEqual(a.snapshot(3).get("g1"), { lastUsedAt: 300, uses: 6, liveSessions: 6 });
    a.ingest(report("w2", []), 4); // w2 has no live sessions any more
    assert.deepEqual(a.snapshot(5).get("g1"), { lastUsedAt: 300, uses: 6, liveSessions: 4 });
  });

  it("drops a silent worker's live sessions, keeps its history", () => {
    const a = new UsageAggregate(1000);
    a.ingest(report("w1", [["g1", 100, 2, 3]]), 0);
    assert.equal(a.snapshot(1000).get("g1")?.liveSessions, 3);
    assert.deepEqual(a.snapshot(1001).get("g1"), { lastUsedAt: 100, uses: 2, liveSessions: 0 });
  });

  it("forgets workers whose reports stopped as reports arrive, without waiting for a snapshot", () => {
    const a = new UsageAggregate(1000);
    for (let i = 0; i < 50; i++) a.ingest(report(`old${i}`, [["g1", 100, 1, 1]]), 0);
    a.ingest(report("w1", [["g1", 200, 1, 2]]), 500);
    assert.equal(a.workerCount(), 51);
    a.ingest(report("w1", [["g1", 300, 1, 2]]), 1500); // a follower: reports only, no snapshot
    assert.equal(a.workerCount(), 1);
    assert.deepEqual(a.snapshot(1500).get("g1"), { lastUsedAt: 300, uses: 52, liveSessions: 2 });
  });

  it("forgets a removed gateway's totals, and every gateway not among the known ones", () => {
    const a = new UsageAggregate(1000);
    a.ingest(report("w1", [["g1", 100, 2, 0], ["g2", 200, 3, 0], ["g3", 300, 4, 0]]), 0);
    a.forget("g1");
    assert.equal(a.stored("g1"), undefined);
    assert.equal(a.snapshot(1).has("g1"), false);
    a.keepOnly(new Set(["g3"]));
    assert.deepEqual(a.gids(), ["g3"]);
    assert.deepEqual(a.stored("g3"), { lastUsedAt: 300, uses: 4 });
  });

  it("adopts usage kept in KV without counting twice", () => {
    const a = new UsageAggregate(1000);
    a.ingest(report("w1", [["g1", 100, 2, 0]]), 0);
    a.adopt("g1", { lastUsedAt: 50, uses: 10 });
    a.adopt("g2", { lastUsedAt: 70, uses: 1 });
    a.ingest(report("w1", [["g1", null, 1, 0]]), 1);
    assert.deepEqual(a.stored("g1"), { lastUsedAt: 100, uses: 11 });
    assert.deepEqual(a.stored("g2"), { lastUsedAt: 70, uses: 1 });
  });
});

describe("gateway roster", () => {
  it("keeps enabled ids ascending through adds, disables and removals; classify gives the same result from them as from any order", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 1, maxLength: 4 }), fc.boolean(), fc.boolean()), { maxLength: 60 }), (ops) => {
        const roster = new GatewayRoster();
        const model = new Map<string, boolean>();
        for (const [gid, enabled, remove] of ops) {
          if (remove) (roster.remove(gid), model.delete(gid));
          else (roster.set(gid, enabled), model.set(gid, enabled));
          roster.enabledIds(); // cached between changes
        }
        const expected = [...model].filter(([, on]) => on).map(([gid]) => gid).sort();
        assert.deepEqual(roster.enabledIds(), expected);
        const usage = (gid: string): UsageStats | undefined => (gid.length % 2 ? { lastUsedAt: gid.charCodeAt(0), liveSessions: 0, uses: 1 } : undefined);
        assert.deepEqual(classify(roster.enabledIds(), usage), classify([...expected].reverse().concat(expected), usage));
      }),
    );
  });
});

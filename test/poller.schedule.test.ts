// The pollers' schedule on a SimulatedClock with fake effects: timing, health state, tiers, stamps.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SimulatedClock } from "xstate";
import { TICK_MS, PollScheduler, STATUS_REFRESH_MS, type DiscoveryOutcome, type PollKind, type RefreshResponder } from "../actors/pollScheduler.ts";
import { delayToSlot, phaseOf } from "../actors/discovery.ts";
import type { GatewayStatus } from "../protocol/gateway.ts";

const GID = "0123456789abcdef";
const S = 1000;
const H = 60 * S;
const D = 300 * S;
const EMPTY = { tools: [], prompts: [], resources: [], resourceTemplates: [] };

type Options = { classification?: unknown; discoverNow?: boolean; discoveryInterval?: number };

/** One poller with an in-memory upstream (a tool set) and in-memory KV (stamps, catalog, status). */
function harness(opts: Options = {}) {
  const clock = new SimulatedClock();
  /** `holdDiscoveries`: a discovery waits until the test calls the `release` it left in `held` */
  const upstream = { tools: new Set(["echo"]), up: true, discoveryFails: false, holdDiscoveries: false };
  const held: Array<() => void> = [];
  /** the abort signal each discovery was given, in order */
  const signals: AbortSignal[] = [];
  /** the classification the worker's watch holds, and whether the stamps can be read; tests change them while the poller runs */
  const kv = { classification: opts.classification, readFails: false };
  const stamps = new Map<PollKind, { at: string; nextAt: string | null; worker: string }>();
  const catalog = { tools: [] as string[] };
  const healthChecks: number[] = [];
  const discoveries: number[] = [];
  const recorded: Array<{ kind: PollKind; at: string }> = [];
  const statuses: GatewayStatus[] = [];
  const reads: PollKind[] = [];
  const pollers = new PollScheduler({
    timings: { health: H, discovery: opts.discoveryInterval ?? D, listChangedDebounce: 2 * S, backoffMax: 10 * 60 * S },
    unhealthyThreshold: 3,
    clock,
    random: () => 0,
    effects: {
      readDiscoveryStamp: async () => {
        reads.push("discovery");
        if (kv.readFails) throw new Error("state bucket unreachable");
        return stamps.get("discovery");
      },
      classification: () => kv.classification,
      checkHealth: async () => {
        healthChecks.push(clock.now());
        if (!upstream.up) throw new Error("connect ECONNREFUSED");
      },
      discover: async (_gid, signal) => {
        discoveries.push(clock.now());
        signals.push(signal);
        if (upstream.holdDiscoveries) await new Promise<void>((release) => held.push(release));
        if (!upstream.up || upstream.discoveryFails) throw new Error("tools/list failed");
        const tools = [...upstream.tools].sort();
        const changed = tools.join() !== catalog.tools.join();
        catalog.tools = tools;
        return { changed, hash: tools.join(), diff: { added: EMPTY, updated: EMPTY, removed: EMPTY }, counts: { tools: tools.length, prompts: 0, resources: 0 } };
      },
      recordDiscovery: (_gid, at, nextAt) => {
        recorded.push({ kind: "discovery", at });
        stamps.set("discovery", { at, nextAt, worker: "w1" });
      },
      writeStatus: (_gid, status) => {
        statuses.push(status);
      },
    },
  });
  pollers.start(GID, { discoverNow: opts.discoverNow });
  /** what the tests did with the actor: send it an event, stop it */
  const actor = {
    send: (e: { type: "LIST_CHANGED" } | { type: "REFRESH"; responder: RefreshResponder }) =>
      e.type === "LIST_CHANGED" ? pollers.listChanged(GID) : pollers.refresh(GID, e.responder),
    stop: () => pollers.stopAll(),
  };
  /** advances simulated time in 1 s steps, letting promise effects settle after each */
  const advance = async (ms: number) => {
    for (let t = 0; t < ms; t += S) {
      clock.increment(S);
      for (let i = 0; i < 4; i++) await new Promise((r) => setImmediate(r));
    }
  };
  const lastStatus = () => statuses.at(-1);
  return { clock, actor, upstream, kv, stamps, catalog, healthChecks, discoveries, recorded, statuses, lastStatus, advance, reads, held, signals };
}

const gaps = (times: number[]) => times.slice(1).map((t, i) => t - times[i]!);
/** every gap is `period`, give or take the 1 s step of the simulated clock */
const assertGaps = (times: number[], period: number, what: string) => {
  assert.ok(times.length >= 2, `${what}: at least two polls`);
  for (const g of gaps(times)) assert.ok(Math.abs(g - period) <= S, `${what}: gap ${g} ms, expected ${period} ms`);
};

const classification = (now: number, hot: string[], cold: string[], validForMs: number) => ({
  hot,
  cold,
  computedAt: new Date(now).toISOString(),
  validUntil: new Date(now + validForMs).toISOString(),
  leader: "w1",
  leaseRevision: 1,
  meta: { total: 1, hotCap: 0, hotActual: hot.length, eligible: 1, belowCapReason: null },
});

describe("poller schedule", () => {
  it("puts a new tool in the catalog within one discovery interval and drops a removed one", async () => {
    const h = harness();
    await h.advance(D);
    assert.equal(h.discoveries.length, 1, "first discovery at the gateway's slot within the first interval");
    assert.deepEqual(h.catalog.tools, ["echo"]);
    h.upstream.tools.add("new_tool");
    await h.advance(D);
    assert.deepEqual(h.catalog.tools, ["echo", "new_tool"]);
    assert.equal(h.lastStatus()?.tools, 2);
    h.upstream.tools.delete("echo");
    await h.advance(D);
    assert.deepEqual(h.catalog.tools, ["new_tool"]);
    assert.equal(h.lastStatus()?.tools, 1);
    h.actor.stop();
  });

  it("discovers at once when started for a just-added gateway", async () => {
    const h = harness({ discoverNow: true });
    await h.advance(S);
    assert.equal(h.discoveries.length, 1);
    assert.equal(h.discoveries[0], 0);
    h.actor.stop();
  });

  it("turns unhealthy after 3 failures, backs off, and is healthy again on the first success", async () => {
    // discovery once at the start, then not for 12 h: only health checks count here
    const h = harness({ discoverNow: true, discoveryInterval: 24 * 3600 * S });
    await h.advance(H); // first check, healthy
    assert.equal(h.lastStatus()?.health, "healthy");
    h.upstream.up = false;
    const firstFailureIndex = h.healthChecks.length;
    await h.advance(3 * H);
    assert.equal(h.healthChecks.length - firstFailureIndex, 3);
    assert.equal(h.lastStatus()?.health, "unhealthy");
    assert.equal(h.lastStatus()?.consecutiveFailures, 3);
    assert.match(h.lastStatus()?.lastError ?? "", /ECONNREFUSED/);
    const discoveriesWhenUnhealthy = h.discoveries.length;
    await h.advance(2 * H + 4 * H + 8 * H);
    const failing = h.healthChecks.slice(firstFailureIndex);
    // 1× 1× between the first three failures, then 2×, 4×, 8× once unhealthy
    const g = gaps(failing);
    assert.ok(Math.abs(g[0]! - H) <= S && Math.abs(g[1]! - H) <= S, `gaps before unhealthy: ${g}`);
    assert.ok(Math.abs(g[2]! - 2 * H) <= S && Math.abs(g[3]! - 4 * H) <= S && Math.abs(g[4]! - 8 * H) <= S, `backoff gaps: ${g}`);
    assert.equal(h.discoveries.length, discoveriesWhenUnhealthy, "no discovery of an unhealthy gateway");
    h.upstream.up = true;
    const checks = h.healthChecks.length;
    await h.advance(10 * H);
    assert.equal(h.healthChecks.length, checks + 1, "the next check after 16× the interval (capped at 10 min)");
    assert.equal(h.lastStatus()?.health, "healthy");
    assert.equal(h.lastStatus()?.consecutiveFailures, 0);
    assert.equal(h.lastStatus()?.lastError, null);
    h.actor.stop();
  });

  for (const [name, make, multiplier, tier] of [
    ["hot", (now: number) => classification(now, [GID], [], 3_600_000), 1, "hot"],
    ["cold", (now: number) => classification(now, [], [GID], 3_600_000), 3, "cold"],
    ["missing", () => undefined, 1, "unclassified"],
    ["stale", (now: number) => classification(now - 7_200_000, [], [GID], 3_600_000), 1, "unclassified"],
    ["unparsable", () => ({ hot: "everything" }), 1, "unclassified"],
  ] as const) {
    it(`classification ${name}: discovery every ${multiplier}× the interval, health at its own interval`, async () => {
      const h = harness({ classification: make(0) });
      await h.advance(10 * D);
      assertGaps(h.discoveries.slice(1), multiplier * D, "discovery");
      assertGaps(h.healthChecks, H, "health");
      assert.equal(h.healthChecks.length, 50);
      assert.equal(h.lastStatus()?.tier, tier);
      h.actor.stop();
    });
  }

  for (const [name, lose] of [
    ["deleted", (kv: { classification: unknown }) => void (kv.classification = undefined)],
    ["expiring", (kv: { classification: unknown }, now: number) => void (kv.classification = classification(now - 2 * D, [], [GID], 2 * D))],
  ] as const) {
    it(`a cold gateway whose classification is ${name} discovers at 1× from the next slot on`, async () => {
      const h = harness({ classification: classification(0, [], [GID], 24 * 3_600_000) });
      await h.advance(4 * D);
      assert.equal(h.discoveries.length, 2, "cold: the first slot, then 3 intervals later");
      const lastCold = h.discoveries.at(-1)!;
      const lostAt = h.clock.now();
      lose(h.kv, lostAt);
      await h.advance(3 * D);
      const after = h.discoveries.filter((t) => t > lostAt);
      assert.ok(after.length >= 2, `discoveries after the loss: ${after.map((t) => t - lastCold)}`);
      assert.ok(after[0]! - lostAt <= D + S, `first discovery ${after[0]! - lostAt} ms after the loss, not the 3× slot`);
      assertGaps(after, D, "discovery at 1×");
      assert.equal(h.lastStatus()?.tier, "unclassified");
      h.actor.stop();
    });
  }

  it("discovers at its first slot, at 1×, when the stamp cannot be read (fail open), and reads no stamp once it has discovered", async () => {
    const h = harness({ classification: classification(0, [], [GID], 24 * 3_600_000) });
    h.kv.readFails = true;
    await h.advance(D);
    assert.equal(h.discoveries.length, 1, "discovered despite the unreadable stamp");
    assert.equal(h.lastStatus()?.tier, "unclassified");
    const reads = h.reads.filter((k) => k === "discovery").length;
    await h.advance(3 * D);
    assert.equal(h.discoveries.length, 2, "then cold: 3 intervals later");
    assert.equal(h.reads.filter((k) => k === "discovery").length, reads, "no stamp read after its own discovery");
    assert.equal(h.lastStatus()?.tier, "cold");
    h.actor.stop();
  });

  it("a failed discovery does not advance poll.<gid>.discovery", async () => {
    const h = harness();
    await h.advance(D);
    const stamp = h.stamps.get("discovery");
    assert.ok(stamp, "the successful discovery wrote its stamp");
    h.upstream.discoveryFails = true;
    await h.advance(D);
    assert.equal(h.discoveries.length, 2, "the second discovery ran");
    assert.equal(h.stamps.get("discovery"), stamp, "and failed without writing a stamp");
    assert.ok(h.statuses.some((st) => st.consecutiveFailures === 1 && /tools\/list failed/.test(st.lastError ?? "")), "the failure is in the status");
    h.upstream.discoveryFails = false;
    await h.advance(D);
    assert.notEqual(h.stamps.get("discovery"), stamp);
    h.actor.stop();
  });

  it("skips a slot another worker just polled, and treats a future stamp as absent", async () => {
    const h = harness();
    // another worker discovered a moment ago: this slot is skipped, without writing anything
    h.stamps.set("discovery", { at: new Date(0).toISOString(), nextAt: null, worker: "w2" });
    await h.advance(D / 2 - S);
    h.stamps.set("discovery", { at: new Date(h.clock.now()).toISOString(), nextAt: null, worker: "w2" });
    const before = h.discoveries.length;
    await h.advance(D / 2 + S);
    assert.equal(h.recorded.filter((r) => r.kind === "discovery").length, 0);
    // a stamp far in the future must not stop polling
    h.stamps.set("discovery", { at: new Date(h.clock.now() + 100 * D).toISOString(), nextAt: null, worker: "w2" });
    await h.advance(2 * D);
    assert.ok(h.discoveries.length > before, "discovered despite the future stamp");
    assert.ok(h.recorded.some((r) => r.kind === "discovery"));
    h.actor.stop();
  });

  it("checks at its slots without reading or writing state; the status is written when it changes, and again every few intervals for its last success", async () => {
    const h = harness({ discoveryInterval: 100 * D });
    const firstSlot = delayToSlot(0, H, phaseOf(GID));
    await h.advance(firstSlot + S);
    assert.equal(h.healthChecks.length, 1, "a new poller checks at the gateway's slot");
    const written = h.statuses.length;
    await h.advance(5 * H);
    assert.equal(h.healthChecks.length, 6);
    assert.equal(h.reads.length, 0, "a health check reads no state");
    assert.equal(h.statuses.length, written, "checks that changed nothing write nothing");
    assert.ok(h.recorded.every((r) => r.kind === "discovery"), "a health check writes no stamp");
    assertGaps(h.healthChecks, H, "health");
    const stored = h.lastStatus()!.lastSuccessAt!;
    await h.advance(STATUS_REFRESH_MS + H);
    assert.equal(h.statuses.length, written + 1, "the status is written again once its last success is many intervals old");
    assert.ok(Date.parse(h.lastStatus()!.lastSuccessAt!) - Date.parse(stored) >= STATUS_REFRESH_MS);
    // a failure changes what readers act on: written at once
    h.upstream.up = false;
    await h.advance(H);
    assert.equal(h.statuses.length, written + 2);
    assert.equal(h.lastStatus()!.consecutiveFailures, 1);
    h.actor.stop();
  });

  it("discovers at once on list_changed and collects a burst of notices into one more discovery", async () => {
    const h = harness();
    await h.advance(D); // past the first slot
    const before = h.discoveries.length;
    const at = h.clock.now();
    h.actor.send({ type: "LIST_CHANGED" });
    await h.advance(S);
    assert.equal(h.discoveries.length, before + 1, "the first notice discovers at once");
    assert.equal(h.discoveries.at(-1), at);
    for (let i = 0; i < 5; i++) h.actor.send({ type: "LIST_CHANGED" });
    await h.advance(3 * S);
    assert.equal(h.discoveries.length, before + 2, "a burst inside the window costs one more discovery");
    const gapsAfter = gaps(h.discoveries.slice(before));
    for (const g of gapsAfter) assert.ok(g >= 2 * S, `push discoveries ${g} ms apart, at least the 2 s debounce`);
    h.actor.stop();
  });

  it("answers a refresh with the discovery's outcome", async () => {
    const h = harness();
    h.upstream.tools.add("fresh");
    const outcome = new Promise<DiscoveryOutcome>((resolve, reject) => {
      const responder: RefreshResponder = { resolve, reject };
      h.actor.send({ type: "REFRESH", responder });
    });
    await h.advance(S);
    const r = await outcome;
    assert.equal(r.counts.tools, 2);
    assert.equal(h.discoveries.length, 1);
    h.actor.stop();
  });

  it("spreads 10,000 gateways' checks over the interval with one timer: each checked once per interval, busiest second ≤ 2× mean, one wake-up a tick", async () => {
    const clock = new SimulatedClock();
    const checks = new Map<string, number[]>();
    const timers = { live: 0, fired: 0, offGrid: 0 };
    const pollers = new PollScheduler({
      timings: { health: H, discovery: 100 * D, listChangedDebounce: 2 * S, backoffMax: 10 * H },
      unhealthyThreshold: 3,
      clock: {
        now: () => clock.now(),
        setTimeout: (fn, ms) => {
          if ((clock.now() + ms) % TICK_MS !== 0) timers.offGrid++;
          timers.live++;
          return clock.setTimeout(() => (timers.live--, timers.fired++, fn()), ms);
        },
        clearTimeout: (id) => (timers.live--, clock.clearTimeout(id as never)),
      },
      random: Math.random,
      effects: {
        readDiscoveryStamp: async () => undefined,
        classification: () => undefined,
        checkHealth: async (gid) => void checks.get(gid)!.push(clock.now()),
        discover: async () => ({ changed: false, hash: "", diff: { added: EMPTY, updated: EMPTY, removed: EMPTY }, counts: { tools: 0, prompts: 0, resources: 0 } }),
        recordDiscovery: () => {},
        writeStatus: () => {},
      },
    });
    for (let i = 0; i < 10_000; i++) {
      checks.set(`gw${i}`, []);
      pollers.start(`gw${i}`);
    }
    assert.equal(timers.live, 1, "one timer for all pollers");
    for (let t = 0; t < 3 * H; t += S) {
      clock.increment(S);
      for (let i = 0; i < 4; i++) await new Promise((r) => setImmediate(r));
    }
    const perSecond = new Array<number>(60).fill(0);
    for (const times of checks.values()) {
      assert.ok(times.length >= 2, "checked in each interval");
      for (const g of gaps(times)) assert.ok(g <= 1.1 * H, `gap ${g} ms`);
      for (const t of times) if (t >= H && t < 2 * H) perSecond[Math.floor((t - H) / S)]!++;
    }
    const mean = perSecond.reduce((a, b) => a + b, 0) / 60;
    assert.ok(Math.abs(mean - 10_000 / 60) < 1, `mean ${mean} checks per second`);
    assert.ok(Math.max(...perSecond) <= 2 * mean, `busiest second ${Math.max(...perSecond)}, mean ${mean}`);
    // polls due within one tick start together: the timer is armed on the tick grid only, so it wakes the worker at most once a tick
    assert.equal(timers.offGrid, 0, "the timer armed off the tick grid");
    assert.ok(TICK_MS >= 100 && timers.fired <= (3 * H) / TICK_MS + 1, `${timers.fired} wake-ups in ${3 * H} ms`);
    pollers.stopAll();
    assert.equal(timers.live, 0);
  });

  it("stopping a poller aborts its discovery in flight, even after a health check ended meanwhile, and no discovery that already ended", async () => {
    const h = harness();
    await h.advance(D); // the first discovery, at the gateway's slot
    assert.equal(h.signals.length, 1);
    h.upstream.holdDiscoveries = true;
    h.actor.send({ type: "LIST_CHANGED" });
    await h.advance(H + S); // a health check starts and ends while that discovery runs
    assert.equal(h.signals.length, 2);
    assert.equal(h.held.length, 1, "the discovery is still running");
    const checks = h.healthChecks.length;
    assert.ok(checks >= 1 && h.healthChecks.at(-1)! > h.discoveries.at(-1)!, "a check ended during the discovery");
    // the discovery ends; the next one (a notice) is held again, and the poller stops during it
    h.held.shift()!();
    await h.advance(3 * S);
    h.actor.send({ type: "LIST_CHANGED" });
    await h.advance(S);
    assert.equal(h.signals.length, 3);
    h.actor.stop();
    assert.equal(h.signals[2]!.aborted, true, "the discovery in flight is aborted");
    assert.equal(h.signals[1]!.aborted, false, "a discovery that ended holds no controller the stop could reach");
    assert.equal(h.signals[0]!.aborted, false);
    assert.notEqual(h.signals[1], h.signals[2], "each discovery has its own signal");
  });

  it("holds no abort controller between discoveries: a stop right after one ended aborts nothing", async () => {
    const h = harness({ discoverNow: true });
    await h.advance(S);
    assert.equal(h.signals.length, 1);
    assert.equal(h.healthChecks.length, 0, "no check ended since the discovery (the first check waits for its slot)");
    h.actor.stop();
    assert.equal(h.signals[0]!.aborted, false);
  });

  it("writes the status only when a field readers act on changes", async () => {
    const h = harness();
    await h.advance(2 * D);
    assert.ok(h.healthChecks.length >= 10 && h.discoveries.length === 2);
    assert.equal(h.statuses.length, 2, `first health check (healthy), first discovery (counts): ${JSON.stringify(h.statuses)}`);
    h.actor.stop();
  });
});

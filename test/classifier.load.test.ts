import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { Kvm, type KV } from "@nats-io/kv";
import { createActor, toPromise, type AnyActorLogic, type InputFrom, type OutputFrom } from "xstate";
import { GatewayRoster } from "../actors/classification.ts";
import { UsageAggregate } from "../actors/usageAggregate.ts";
import { ClassificationGetReplySchema, ClassificationSchema, LeaderLeaseSchema, type Classification } from "../protocol/classification.ts";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { KEYS, buckets, subjects } from "../protocol/subjects.ts";
import { StoredUsageSchema, type UsageReport } from "../protocol/usage.ts";
import { getLive } from "../actors/kvStore.ts";
import { encodeJson, request } from "../runtime/bus.ts";
import { createClassifierEffects, followRoster } from "../runtime/classifierHost.ts";
import { followGatewayRecords } from "../runtime/gatewayRecords.ts";
import { openStores } from "../runtime/nats.ts";
import { runCli, runTs, START_MS, workerEnv, type Proc } from "./helpers/processes.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { directRegistry, recordKeyWrites, TEST_SECRET_KEY, memoryLogger, testConfig, type KeyWrite } from "./helpers/worker.ts";

const s = subjects();
const TTL_MS = 3000;
/** hang bound of each step of the process test (steps take up to about a TTL) */
const WAIT_MS = 30_000;
/** hang bound of one request */
const REQUEST_MS = 20_000;

async function run<L extends AnyActorLogic>(logic: L, input: InputFrom<L>): Promise<OutputFrom<L>> {
  return toPromise(createActor(logic, { input }).start());
}

describe("classification fence (two workers' effects interleaved on a real server)", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });

  it("rejects the commit a deposed leader prepared before it was stopped", async () => {
    const nc = await nats.connect("runtime");
    const stores = await openStores(nc, "fence");
    const gateways = ["a".repeat(16), "b".repeat(16), "c".repeat(16), "d".repeat(16), "e".repeat(16)];
    const roster = { roster: GatewayRoster.of(gateways.map((id) => ({ id, enabled: true }))), loaded: Promise.resolve() };
    const effects = (worker: string) =>
      createClassifierEffects({ config: testConfig({ MCPGW_WORKER_ID: worker }), log: memoryLogger().log, stores, gateways: roster }, new UsageAggregate(60_000));
    const a = effects("a");
    const b = effects("b");

    // a leads and writes once
    const a1 = (await run(a.actors.acquire, { revision: 0 }))!;
    let prepared = await run(a.actors.prepareDuty, undefined);
    const a2 = (await run(a.actors.renew, { revision: a1 }))!;
    assert.equal(await run(a.actors.commitDuty, { prepared, revision: a2 }), true);
    assert.equal(a.stats.classificationsWritten, 1);

    // a prepares and renews, then stops before committing; b sees the lease stand still and takes over
    prepared = await run(a.actors.prepareDuty, undefined);
    const a3 = (await run(a.actors.renew, { revision: a2 }))!;
    assert.equal(await run(b.actors.fence, { revision: a3 }), true);
    const b1 = await run(b.actors.acquire, { revision: a3 });
    assert.ok(b1);
    const before = await stores.state.get(KEYS.classification);

    // a wakes up and commits: the fence refuses it, nothing changes
    assert.equal(await run(a.actors.commitDuty, { prepared, revision: a3 }), false);
    assert.equal(a.stats.staleWritesRejected, 1);
    assert.equal(a.stats.classificationsWritten, 1);
    assert.equal((await stores.state.get(KEYS.classification))?.revision, before?.revision);
    // ...and so are its renewal and its release
    assert.equal(await run(a.actors.renew, { revision: a3 }), null);
    await run(a.actors.release, { revision: a3 });
    assert.equal(a.stats.staleWritesRejected, 3);
    assert.equal(LeaderLeaseSchema.parse((await stores.state.get(KEYS.leaderClassifier))!.json()).holder, "b");

    // the new leader writes normally
    const bp = await run(b.actors.prepareDuty, undefined);
    const b2 = (await run(b.actors.renew, { revision: b1! }))!;
    await run(b.actors.commitDuty, { prepared: bp, revision: b2 });
    const written = ClassificationSchema.parse((await stores.state.get(KEYS.classification))!.json());
    assert.equal(written.leader, "b");
    assert.equal(written.leaseRevision, b2);
  });

  it("keeps usage in KV for every used gateway, and a new leader with no reports of its own classifies from it", async () => {
    const nc = await nats.connect("runtime");
    const stores = await openStores(nc, "usagekv");
    const gateways = Array.from({ length: 200 }, (_, i) => i.toString(16).padStart(16, "0"));
    const roster = { roster: GatewayRoster.of(gateways.map((id) => ({ id, enabled: true }))), loaded: Promise.resolve() };
    const heard = new UsageAggregate(60_000);
    // 150 used gateways, the later ones more recently
    heard.ingest({ worker: "w", at: 0, gateways: gateways.slice(0, 150).map((gid, i) => ({ gid, lastUsedAt: 1_000 + i, uses: i + 1, liveSessions: 0 })) }, performance.now());
    const effects = (worker: string, usage: UsageAggregate) =>
      createClassifierEffects({ config: testConfig({ MCPGW_WORKER_ID: worker }), log: memoryLogger().log, stores, gateways: roster }, usage);
    const a = effects("a", heard);
    const a1 = (await run(a.actors.acquire, { revision: 0 }))!;
    const prepared = await run(a.actors.prepareDuty, undefined);
    const a2 = (await run(a.actors.renew, { revision: a1 }))!;
    await run(a.actors.commitDuty, { prepared, revision: a2 });
    for (const [i, gid] of gateways.slice(0, 150).entries()) {
      const e = await getLive(stores.state, KEYS.usage(gid));
      assert.deepEqual(e && StoredUsageSchema.parse(e.json()), { lastUsedAt: 1_000 + i, uses: i + 1 }, `usage.${gid}`);
    }
    assert.equal(await getLive(stores.state, KEYS.usage(gateways[199]!)), null, "no key for a gateway without use");

    // b heard nothing: it takes over and classifies from what a kept
    const b = effects("b", new UsageAggregate(60_000));
    await run(a.actors.release, { revision: a2 });
    const b1 = (await run(b.actors.acquire, { revision: (await stores.state.get(KEYS.leaderClassifier))!.revision }))!;
    const bp = await run(b.actors.prepareDuty, undefined);
    const b2 = (await run(b.actors.renew, { revision: b1 }))!;
    await run(b.actors.commitDuty, { prepared: bp, revision: b2 });
    const written = ClassificationSchema.parse((await stores.state.get(KEYS.classification))!.json());
    assert.equal(written.leader, "b");
    assert.deepEqual(written.hot, gateways.slice(110, 150).reverse(), "hot cap 40: the most recently used");
  });

  it("keeps the roster of gateways from their records as they change; a classification reads no record", async () => {
    const nc = await nats.connect("runtime");
    const stores = await openStores(nc, "roster");
    const { log } = memoryLogger();
    const empty = await followGatewayRecords(stores.gateways, log); // an empty bucket: complete at once
    assert.equal(empty.records.size, 0);
    empty.stop();

    const registry = directRegistry(stores, "roster");
    const ids: string[] = [];
    for (let i = 0; i < 300; i += 30) {
      const batch = Array.from({ length: 30 }, (_, j) => registry.add({ name: `r${i + j}`, transport: "streamable-http", url: "http://127.0.0.1:9/mcp", enabled: (i + j) % 10 !== 0 }));
      ids.push(...(await Promise.all(batch)).map((g) => g.id));
    }
    const records = await followGatewayRecords(stores.gateways, log);
    const removed: string[] = [];
    const source = followRoster(records.records, (gid) => removed.push(gid));
    assert.equal(source.roster.enabledIds().length, 270, "every record there was, enabled ones apart");
    await registry.update({ name: "r1", patch: { enabled: false } });
    await registry.remove({ name: "r2" });
    await registry.update({ name: "r10", patch: { enabled: true } });
    await until("the roster to follow an update and a removal", () => source.roster.enabledIds().length === 269 && !source.roster.has(ids[2]!), WAIT_MS);
    assert.deepEqual(removed, [ids[2]], "the removal is told (the classifier forgets its usage)");

    const c = createClassifierEffects({ config: testConfig({ MCPGW_WORKER_ID: "r" }), log, stores, gateways: source }, new UsageAggregate(60_000));
    let held = (await run(c.actors.acquire, { revision: 0 }))!;
    for (const round of [1, 2]) {
      const prepared = await run(c.actors.prepareDuty, undefined);
      held = (await run(c.actors.renew, { revision: held }))!;
      assert.equal(await run(c.actors.commitDuty, { prepared, revision: held }), true);
      const written = ClassificationSchema.parse((await stores.state.get(KEYS.classification))!.json());
      assert.equal(written.meta.total, 269);
      assert.ok(!written.cold.includes(ids[1]!) && !written.cold.includes(ids[2]!) && written.cold.includes(ids[10]!));
      // the first duty of a term also lists the usage kept in KV (none here); then one read: the fence's
      assert.deepEqual({ ...c.stats.lastDuty, computeMs: 0, cpuMs: 0 }, { computeMs: 0, cpuMs: 0, kvReads: round === 1 ? 2 : 1, kvWrites: 1 }, `duty ${round}`);
    }
    source.stop();
    records.stop();
  });

  it("a fence on a lease that moved does nothing", async () => {
    const nc = await nats.connect("runtime");
    const stores = await openStores(nc, "fence2");
    const roster = { roster: new GatewayRoster(), loaded: Promise.resolve() };
    const c = createClassifierEffects({ config: testConfig({ MCPGW_WORKER_ID: "c" }), log: memoryLogger().log, stores, gateways: roster }, new UsageAggregate(1));
    const r1 = (await run(c.actors.acquire, { revision: 0 }))!;
    await run(c.actors.renew, { revision: r1 });
    assert.equal(await run(c.actors.fence, { revision: r1 }), false);
    assert.equal(await stores.state.get(KEYS.classification), null);
  });
});

type Child = Proc & { id: string };
type Seen = KeyWrite;

describe("classifier across three worker processes", () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let state: KV;
  const children = new Map<string, Child>();
  let seen: Seen[] = [];
  let gids: string[] = [];
  let usageTimer: NodeJS.Timeout | undefined;

  function startChild(id: string): Child {
    const env = workerEnv(nats, TEST_SECRET_KEY, {
      MCPGW_WORKER_ID: id,
      MCPGW_LEADER_TTL: `${TTL_MS}ms`,
      MCPGW_CLASSIFICATION_INTERVAL: "1s",
      MCPGW_USAGE_REPORT_INTERVAL: "500ms",
      MCPGW_HEALTH_INTERVAL: "60s",
      MCPGW_LOG_LEVEL: "info",
    });
    const child: Child = { id, ...runTs("runtime/main.ts", [], env) };
    children.set(id, child);
    return child;
  }

  async function cliOutput(args: string[]): Promise<string> {
    const cli = runCli(nats, args);
    assert.equal((await cli.exited).code, 0, cli.output());
    return cli.output();
  }

  const logged = (c: Child, msg: string) => c.output().includes(`"msg":"${msg}`);
  const leases = () => seen.filter((e) => e.key === KEYS.leaderClassifier);
  const classificationWrites = () => seen.filter((e) => e.key === KEYS.classification);
  const classifications = () => classificationWrites().filter((e) => e.op === "PUT").map((e) => ({ ...e, c: e.value as Classification }));
  /** a fence bump: the classification rewritten unchanged (a follower about to take the lease over) */
  const isFenceBump = (e: Seen) => {
    const writes = classificationWrites();
    const i = writes.indexOf(e);
    return e.op === "PUT" && i > 0 && writes[i - 1]!.op === "PUT" && JSON.stringify(writes[i - 1]!.value) === JSON.stringify(e.value);
  };
  const holderOf = (e: Seen | undefined) => (e?.op === "PUT" ? LeaderLeaseSchema.parse(e.value).holder : null);

  before(async () => {
    nats = await startNats();
    nc = await nats.connect("runtime");
    await openStores(nc, s.prefix);
    state = await new Kvm(nc).open(buckets().state);
    // every write of the two keys, in stream order
    seen = (await recordKeyWrites(state, [KEYS.leaderClassifier, KEYS.classification])).writes;
    for (const id of ["w1", "w2", "w3"]) startChild(id);
    await until("three workers started", () => [...children.values()].every((c) => logged(c, "worker started")), START_MS);
    for (let i = 0; i < 10; i++) {
      const g = await request(nc, s.admin.gateway("add"), { name: `gw${i}`, transport: "streamable-http", url: "http://127.0.0.1:9/mcp" }, GatewayViewSchema, REQUEST_MS);
      gids.push(g.id);
    }
    // two gateways in use, as a worker's upstream sessions would report them
    const report = (): UsageReport => ({
      worker: "probe",
      at: Date.now(),
      gateways: [
        { gid: gids[3]!, lastUsedAt: Date.now() - 1000, uses: 1, liveSessions: 1 },
        { gid: gids[7]!, lastUsedAt: Date.now(), uses: 1, liveSessions: 0 },
      ],
    });
    usageTimer = setInterval(() => nc.publish(s.evt.usage, encodeJson(report())), 250);
  });

  after(async () => {
    clearInterval(usageTimer);
    for (const c of children.values()) {
      c.child.kill("SIGCONT");
      c.child.kill("SIGKILL");
    }
    await Promise.all([...children.values()].map((c) => c.exited));
    await nats?.stop();
  });

  it("classifies from usage under exactly one leader, survives SIGKILL, SIGSTOP and SIGTERM of the leader", async () => {
    // 1. the first classification: the used gateways are hot (N = 10, cap 2), in rank order
    const first = await until("a classification with the used gateways hot", () =>
      classifications().find((e) => e.c.hot.length === 2 && e.c.meta.total === 10),
      WAIT_MS,
    );
    assert.deepEqual(first.c.hot, [gids[7], gids[3]]);
    assert.equal(first.c.cold.length, 8);
    const reply = await request(nc, s.admin.classificationGet, {}, ClassificationGetReplySchema, REQUEST_MS);
    assert.equal(reply.valid, true);
    assert.equal(reply.leader?.holder, first.c.leader);
    const cli = await cliOutput(["classification"]);
    assert.match(cli, new RegExp(`leader\\s+${first.c.leader} \\(lease revision`));
    assert.match(cli, new RegExp(`hot\\s+1\\s+${gids[7]}\\s+gw7\\nhot\\s+2\\s+${gids[3]}\\s+gw3\\n`));
    assert.match(cli, /10 enabled, 2 with recorded use, hot 2 of cap 2/);
    const bad = await nc.request(s.admin.classificationGet, encodeJson({ nope: 1 }), { timeout: REQUEST_MS });
    assert.match(new TextDecoder().decode(bad.data), /"code":"invalid_request"/);

    // 2. SIGKILL the leader: another takes over the lease it never released (after the
    // standstill; how long that takes is measured by bench/leader.bench.ts), fencing first
    const l1 = children.get(first.c.leader)!;
    l1.child.kill("SIGKILL");
    await l1.exited;
    // until someone else leads, every classification (and every fence bump of one) names l1
    const second = await until("a classification by a new leader", () => classifications().find((e) => e.revision > first.revision && e.c.leader !== l1.id), WAIT_MS);
    const l2 = children.get(second.c.leader)!;
    const takeover = leases().find((e) => holderOf(e) === l2.id)!;
    const replaced = leases().filter((e) => e.revision < takeover.revision).at(-1);
    assert.equal(replaced?.op, "PUT", "the killed leader never released the lease: its successor replaced it");
    assert.equal(holderOf(replaced), l1.id);
    const lastWriteBefore = classificationWrites().filter((e) => e.revision < takeover.revision).at(-1)!;
    assert.ok(lastWriteBefore.revision > replaced!.revision && isFenceBump(lastWriteBefore), "the successor fenced the classification before claiming the lease");
    assert.ok(second.revision > takeover.revision);

    // 3. SIGSTOP the new leader; the third worker takes over; SIGCONT: it steps down, its writes are refused
    const outputBefore = l2.output().length;
    l2.child.kill("SIGSTOP");
    const third = await until("a classification by the third worker", () => classifications().find((e) => e.revision > second.revision && e.c.leader !== l2.id), WAIT_MS);
    // The third worker took over after seeing l2's lease stand still for a TTL, and l2's own
    // term (measured on its monotonic clock, which runs on while stopped) is shorter than
    // that: l2 wakes past its term, with no need to wait longer here.
    l2.child.kill("SIGCONT");
    await until("the woken leader to step down", () => l2.output().slice(outputBefore).includes("classifier stepped down"), WAIT_MS);
    await until("its stale write to be rejected", () => /stale .* rejected/.test(l2.output().slice(outputBefore)), WAIT_MS);
    // whatever the woken leader sent before its rejection is in the stream before the leader's next classification
    const mark = Math.max(...seen.map((e) => e.revision));
    const next = await until("the leader to classify again", () => classifications().find((e) => e.revision > mark && e.c.leader === third.c.leader), WAIT_MS);
    const since = classifications().filter((e) => e.revision >= third.revision && e.revision <= next.revision);
    assert.deepEqual(
      since.filter((e) => e.c.leader !== third.c.leader).map((e) => e.revision),
      [],
      "after the takeover, no classification was written by the deposed leader",
    );
    assert.equal(holderOf(leases().filter((e) => e.revision <= next.revision).at(-1)), third.c.leader);

    // 4. SIGTERM the leader: it releases the lease (a delete) and the survivor claims the
    // released lease at once, not after a standstill; it exits cleanly
    const l3 = children.get(third.c.leader)!;
    l3.child.kill("SIGTERM");
    const classifierLog = (c: Child) => c.output().split("\n").filter((l) => /classif|lease/.test(l)).slice(-8).join("\n");
    const handover = await until("a lease taken by the survivor", () => leases().find((e) => e.revision > next.revision && holderOf(e) === l2.id), WAIT_MS);
    const handed = leases().filter((e) => e.revision < handover.revision).slice(-2);
    assert.deepEqual(
      handed.map((e) => [e.op, holderOf(e)]),
      [
        ["PUT", l3.id],
        ["DEL", null],
      ],
      `a clean shutdown deletes the lease and the survivor claims the deleted key\n${classifierLog(l3)}\n${classifierLog(l2)}`,
    );
    await until("a classification by the survivor", () => classifications().find((e) => e.revision > handover.revision && e.c.leader === l2.id), WAIT_MS);
    assert.equal((await l3.exited).code, 0, "exit 0: the shutdown finished within its bound");
    assert.ok(logged(l3, "classifier lease released"));

    // Exactly one leader at any time: every classification a leader computed came right after a
    // lease write by the same holder, or after a release, in stream order. Fence bumps rewrite the
    // previous value unchanged (a follower that lost the race for the lease may land its bump
    // after the winner's lease write); they carry nobody's new result, so they are skipped.
    const writes = seen.filter((e) => e.key === KEYS.classification && e.op === "PUT");
    for (const [i, cl] of writes.entries()) {
      if (i > 0 && JSON.stringify(cl.value) === JSON.stringify(writes[i - 1]!.value)) continue;
      const lease = leases().filter((l) => l.revision < cl.revision).at(-1);
      if (lease?.op === "PUT") assert.equal(holderOf(lease), (cl.value as Classification).leader, `classification rev ${cl.revision}`);
    }
    const holders = leases().map(holderOf).filter((h, i, all) => h !== null && h !== all[i - 1]);
    assert.deepEqual(holders.filter((h) => h !== null), [l1.id, l2.id, l3.id, l2.id]);
  });
});

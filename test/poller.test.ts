// Gateway pollers end to end: a real nats-server, a real worker, real MCP fixture upstreams
// whose tool lists change while the test runs.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { getLive } from "../actors/kvStore.ts";
import { CatalogChangedEventSchema, CatalogSchema, RefreshReplySchema, type Catalog } from "../protocol/catalog.ts";
import { GatewayStatusSchema } from "../protocol/gateway.ts";
import { PollStampSchema, PollerStatusReplySchema } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { publishEvent } from "../runtime/events.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { until } from "./helpers/wait.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { pollLines, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_HEALTH_INTERVAL: "400ms",
  MCPGW_DISCOVERY_INTERVAL: "1s",
  // The worker's classifier first classifies one usage-report window after start; with fewer
  // than 5 gateways it would mark them all cold (3× discovery) in the middle of these tests.
  MCPGW_USAGE_REPORT_INTERVAL: "10m",
};


describe("gateway pollers (one worker)", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let worker: TestWorker;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    worker = await startTestWorker(nats, ENV);
  });
  after(async () => {
    await worker?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  const catalog = async (gid: string): Promise<{ value: Catalog; revision: number } | null> => {
    const e = await getLive(worker.stores.catalog, KEYS.catalog(gid));
    return e ? { value: CatalogSchema.parse(e.json()), revision: e.revision } : null;
  };
  const toolNames = async (gid: string) => (await catalog(gid))?.value.tools.map((t) => t.name).sort() ?? [];
  const add = (name: string, extra: Record<string, unknown> = {}) =>
    worker.registry.add({ name, transport: "streamable-http", url: fixture.url(name), ...extra });

  /** The discovery stamps of a gateway as they are written (one per successful discovery), from a KV watch. */
  const watchDiscoveries = async (gid: string) => {
    const stamps: number[] = [];
    const w = await worker.stores.state.watch({ key: KEYS.pollDiscovery(gid) });
    void (async () => {
      for await (const e of w) if (e.operation === "PUT") stamps.push(Date.parse(PollStampSchema.parse(e.json()).at));
    })();
    return { stamps, stop: () => w.stop() };
  };

  /**
   * Waits for the catalog to satisfy `ok` after an upstream change made at `changedAt`, and
   * checks that the first discovery to start after the change put it there: of the discoveries
   * that ended between the change and that catalog write, at most one (the one in flight when
   * the upstream changed) missed it.
   */
  const pickedUpByNextDiscovery = async (gid: string, what: string, changedAt: number, stamps: number[], ok: (c: Catalog) => boolean) => {
    const written = await until(what, async () => {
      const c = await catalog(gid);
      return c && ok(c.value) ? c.value : null;
    }, 30_000);
    const writtenAt = Date.parse(written.discoveredAt);
    // that discovery's own stamp follows its catalog write; every earlier stamp has arrived by then
    await until("the stamp of the discovery that wrote it", () => stamps.some((at) => at >= writtenAt), 30_000);
    // (strictly after the change: one that ended in the same millisecond, before it, is not counted)
    const missed = stamps.filter((at) => at > changedAt && at < writtenAt);
    assert.ok(missed.length <= 1, `${missed.length} discoveries ended after the change without picking it up`);
  };

  it("discovers a new gateway at once, then picks up a tool added and removed upstream at the next scheduled discovery", async () => {
    const events: unknown[] = [];
    const sub = worker.nc.subscribe(worker.ctx.s.evt.catalogAll, { callback: (_e, m) => void events.push(m.json()) });
    const gw = await add("alpha");
    const first = await until("the first discovery", () => catalog(gw.id), 30_000);
    assert.ok(first.value.tools.some((t) => t.name === "echo"));
    assert.deepEqual(first.value.prompts.map((p) => p.name), ["greet"]);
    assert.deepEqual(first.value.resources.map((r) => r.uri), ["fixture://info"]);
    assert.deepEqual(first.value.resourceTemplates.map((r) => r.uriTemplate), ["fixture://items/{id}"]);

    // steady state: wait for a scheduled discovery to end, then change the upstream (the worst
    // case). Nothing pushes here (the poller's probe connections are not upstream sessions),
    // so only the scheduled discoveries can carry the change.
    const discoveries = await watchDiscoveries(gw.id);
    try {
      const seen = await until("the first discovery's stamp", () => discoveries.stamps.length, 30_000);
      await until("a scheduled discovery", () => discoveries.stamps.length > seen, 30_000);
      const addedAt = Date.now();
      fixture.gateway("alpha").toolbox.add("dynamic_tool");
      await pickedUpByNextDiscovery(gw.id, "the new tool in the catalog", addedAt, discoveries.stamps, (c) => c.tools.some((t) => t.name === "dynamic_tool"));

      const removedAt = Date.now();
      fixture.gateway("alpha").toolbox.remove("dynamic_tool");
      await pickedUpByNextDiscovery(gw.id, "the removed tool gone", removedAt, discoveries.stamps, (c) => !c.tools.some((t) => t.name === "dynamic_tool"));
    } finally {
      discoveries.stop();
    }

    // the event follows the catalog write
    const changes = () => events.map((e) => CatalogChangedEventSchema.parse(e)).filter((e) => e.gid === gw.id);
    await until("an event naming the removed tool", async () => changes().some((c) => c.diff.removed.tools.includes("dynamic_tool")), 30_000);
    assert.ok(changes().some((c) => c.diff.added.tools.includes("dynamic_tool")), "an event names the added tool");
    sub.unsubscribe();

    // the status follows the catalog write
    const view = await until("the status counting the tools again", async () => {
      const v = await worker.registry.get({ name: "alpha" });
      return v.status?.tools === first.value.tools.length ? v : null;
    }, 30_000);
    assert.equal(view.status?.health, "healthy");
    assert.equal(view.status?.prompts, 1);
    assert.equal(view.status?.tier, "unclassified");
    assert.ok(view.status?.lastSuccessAt);
  });

  it("writes neither catalog nor status when an unchanged gateway is polled; stamps advance", async () => {
    const gw = await add("steady");
    const cat = await until("first discovery", () => catalog(gw.id), 30_000);
    // the status as the first discovery leaves it (a health check may have written one before, without the counts)
    const statusEntry = await until("the status with the discovered counts", async () => {
      const e = await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id));
      return e && GatewayStatusSchema.parse(e.json()).tools === cat.value.tools.length ? e : null;
    }, 30_000);
    const stamp = async () => {
      const e = await getLive(worker.stores.state, KEYS.pollDiscovery(gw.id));
      return e ? PollStampSchema.parse(e.json()).at : null;
    };
    const firstStamp = await until("discovery stamp", stamp, 30_000);
    // two more discoveries (each a full poll of the unchanged upstream)
    const secondStamp = await until("a later discovery", async () => ((await stamp()) !== firstStamp ? await stamp() : null), 30_000);
    await until("yet another discovery", async () => ((await stamp()) !== secondStamp ? true : null), 30_000);
    assert.equal((await catalog(gw.id))!.revision, cat.revision, "catalog not rewritten");
    const statusNow = await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id));
    assert.equal(statusNow?.revision, statusEntry.revision, "status not rewritten");
    assert.ok(Date.parse(secondStamp!) > Date.parse(firstStamp!));
  });

  it("an upstream list_changed puts the change in the catalog before any scheduled discovery is due", async () => {
    const slow = await startTestWorker(nats, { ...ENV, MCPGW_DISCOVERY_INTERVAL: "10m" });
    try {
      await worker.stop();
      // only the slow worker polls now
      const gw = await slow.registry.add({ name: "pushy", transport: "streamable-http", url: fixture.url("pushy") });
      await until("first discovery", async () => (await getLive(slow.stores.catalog, KEYS.catalog(gw.id))) ?? null, 30_000);
      const first = await until("the first discovery's stamp", async () => {
        const e = await getLive(slow.stores.state, KEYS.pollDiscovery(gw.id));
        return e ? PollStampSchema.parse(e.json()) : null;
      }, 30_000);
      // a scheduled discovery comes at least half an interval (5 min) after the first: the only
      // way the change below can reach the catalog before then is the push
      const scheduledAt = Date.parse(first.nextAt!);
      assert.ok(scheduledAt - Date.parse(first.at) >= 5 * 60_000, `next scheduled discovery planned at ${first.nextAt}, after ${first.at}`);
      // past the debounce window of that first discovery (on the worker's own clock), so the push is not held back by it
      const debounceOver = Date.parse(first.at) + slow.ctx.config.poller.listChangedDebounce + 1;
      await new Promise((r) => setTimeout(r, Math.max(0, debounceOver - Date.now())));
      fixture.gateway("pushy").toolbox.add("pushed_tool");
      // what an upstream session actor publishes when its upstream sends notifications/tools/list_changed
      await publishEvent(slow.stores.js, slow.ctx.s.evt.gateway(gw.id, "list_changed"), { type: "list_changed", gid: gw.id, at: new Date().toISOString(), lists: ["tools"] });
      const pushed = await until(
        "the pushed tool",
        async () => {
          const e = await getLive(slow.stores.catalog, KEYS.catalog(gw.id));
          const c = e ? CatalogSchema.parse(e.json()) : null;
          return c?.tools.some((t) => t.name === "pushed_tool") ? c : null;
        },
        30_000,
      );
      assert.ok(Date.parse(pushed.discoveredAt) < scheduledAt, "discovered before the scheduled discovery was due");
    } finally {
      await slow.stop();
      worker = await startTestWorker(nats, ENV);
    }
  });

  it("marks a failing gateway unhealthy after 3 failures and healthy again on the first success", async () => {
    const gw = await add("flaky");
    const status = async () => {
      const e = await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id));
      return e ? GatewayStatusSchema.parse(e.json()) : null;
    };
    await until("healthy", async () => (await status())?.health === "healthy", 30_000);
    fixture.setDown("flaky", true);
    const down = await until("unhealthy", async () => ((await status())?.health === "unhealthy" ? await status() : null), 30_000);
    assert.ok(down!.consecutiveFailures >= 3);
    assert.match(down!.lastError ?? "", /503|down/i);
    const view = await worker.registry.get({ id: gw.id });
    assert.equal(view.status?.health, "unhealthy");
    fixture.setDown("flaky", false);
    // backoff after 3 failures at 400 ms: the next check is at most 2-4 intervals away
    const up = await until("healthy again", async () => ((await status())?.health === "healthy" ? await status() : null), 30_000);
    assert.equal(up!.consecutiveFailures, 0);
    assert.equal(up!.lastError, null);
  });

  it("refreshes on request and replies with the diff", async () => {
    // discovery only when asked (10 min interval), so no scheduled one can see the change first
    const slow = await startTestWorker(nats, { ...ENV, MCPGW_DISCOVERY_INTERVAL: "10m" });
    const admin = await nats.connect("admin");
    try {
      await worker.stop();
      const gw = await slow.registry.add({ name: "manual", transport: "streamable-http", url: fixture.url("manual") });
      await until("first discovery", async () => (await getLive(slow.stores.catalog, KEYS.catalog(gw.id))) ?? null, 30_000);
      fixture.gateway("manual").toolbox.add("by_hand");
      const r = await request(admin, slow.ctx.s.admin.gateway("refresh"), { name: "manual" }, RefreshReplySchema, 30_000);
      assert.equal(r.gid, gw.id);
      assert.equal(r.changed, true);
      assert.deepEqual(r.diff.added.tools, ["by_hand"]);
      assert.ok((await toolNames(gw.id)).includes("by_hand"));
      const again = await request(admin, slow.ctx.s.admin.gateway("refresh"), { id: gw.id }, RefreshReplySchema, 30_000);
      assert.equal(again.changed, false);
      assert.equal(again.hash, r.hash);
      // a refused request: bad input, unknown gateway
      await assert.rejects(request(admin, slow.ctx.s.admin.gateway("refresh"), { name: "NOT A NAME" }, RefreshReplySchema, 30_000), /invalid/);
      await assert.rejects(request(admin, slow.ctx.s.admin.gateway("refresh"), { name: "nobody" }, RefreshReplySchema, 30_000), /no gateway/);
    } finally {
      await admin.close();
      await slow.stop();
      worker = await startTestWorker(nats, ENV);
    }
  });

  it("each poller answers at its own address (status, refresh); admin and viewer cannot reach it", async () => {
    // discovery only when asked (10 min interval), so only a refresh can see the new tool
    const slow = await startTestWorker(nats, { ...ENV, MCPGW_DISCOVERY_INTERVAL: "10m" });
    const admin = await nats.connect("admin");
    const viewer = await nats.connect("viewer");
    let slowRunning = true;
    try {
      await worker.stop();
      const gw = await slow.registry.add({ name: "addressed", transport: "streamable-http", url: fixture.url("addressed") });
      const s = slow.ctx.s;
      const status = await until(
        "the poller's live status: healthy",
        async () => {
          const r = await request(slow.nc, s.poller.op(gw.id, "status"), {}, PollerStatusReplySchema, 5_000).catch(() => null);
          return r?.status.health === "healthy" ? r : null;
        },
        30_000,
      );
      assert.equal(status.gid, gw.id);
      assert.equal(status.worker, slow.ctx.config.workerId);
      assert.ok(status.status.lastSuccessAt !== null);
      await until("first discovery", async () => (await getLive(slow.stores.catalog, KEYS.catalog(gw.id))) ?? null, 30_000);

      // bad input at the address is refused and changes nothing
      await assert.rejects(request(slow.nc, s.poller.op(gw.id, "refresh"), { id: gw.id }, RefreshReplySchema, 5_000), /invalid/);
      await assert.rejects(request(slow.nc, `${s.poller.actor(gw.id).slice(0, -1)}nope`, {}, RefreshReplySchema, 5_000), /unknown poller operation/);

      // the attack: admin and viewer ask the poller to discover (or for its status) directly
      fixture.gateway("addressed").toolbox.add("after_attack");
      for (const nc of [admin, viewer]) {
        for (const op of ["refresh", "status"] as const) {
          await assert.rejects(request(nc, s.poller.op(gw.id, op), {}, RefreshReplySchema, 2_000));
        }
      }
      assert.ok(!(await toolNames(gw.id)).includes("after_attack"), "no discovery ran for them");
      // the runtime's own refresh at the address does run one: the tool was still undiscovered
      const r = await request(slow.nc, s.poller.op(gw.id, "refresh"), {}, RefreshReplySchema, 30_000);
      assert.equal(r.changed, true);
      assert.deepEqual(r.diff.added.tools, ["after_attack"]);

      // its worker stops; the worker that takes the gateway over answers at the same address
      slowRunning = false;
      await slow.stop();
      const other = await startTestWorker(nats, { ...ENV, MCPGW_DISCOVERY_INTERVAL: "10m" });
      try {
        await until(
          "the successor's poller at the address",
          async () => (await request(other.nc, s.poller.op(gw.id, "status"), {}, PollerStatusReplySchema, 5_000).catch(() => null))?.worker === other.ctx.config.workerId || null,
          30_000,
        );
        fixture.gateway("addressed").toolbox.add("moved");
        const byAdmin = await request(admin, other.ctx.s.admin.gateway("refresh"), { id: gw.id }, RefreshReplySchema, 30_000);
        assert.deepEqual(byAdmin.diff.added.tools, ["moved"]);
        await other.registry.remove({ id: gw.id });
      } finally {
        await other.stop();
      }
    } finally {
      await admin.close();
      await viewer.close();
      if (slowRunning) await slow.stop();
      worker = await startTestWorker(nats, ENV);
    }
  });

  it("a stopped poller's queued poll never starts, and its pending refresh is answered", async () => {
    // one poll at a time and a frozen upstream holding it: the other gateway's polls queue up.
    // Discovery only when asked (10 min interval), so a discovery of hog below is the refresh's.
    // long enough that the premise below (the removal is handled while the stuck poll still holds
    // the slot) holds on a very busy machine too; the test waits it out once
    const POLL_TIMEOUT_MS = 20_000;
    const one = await startTestWorker(nats, { ...ENV, MCPGW_MAX_CONCURRENT_POLLS: "1", MCPGW_POLL_TIMEOUT: `${POLL_TIMEOUT_MS}ms`, MCPGW_DISCOVERY_INTERVAL: "10m" });
    /** "poll" lines in log order: the slot queue's order */
    const polls = (from = 0) => pollLines(one, from);
    try {
      await worker.stop();
      const hog = await one.registry.add({ name: "hog", transport: "streamable-http", url: fixture.url("hog") });
      const queued = await one.registry.add({ name: "queued", transport: "streamable-http", url: fixture.url("queued") });
      for (const g of [hog, queued]) await until("first discovery", async () => (await getLive(one.stores.catalog, KEYS.catalog(g.id))) ?? null, 30_000);
      await until("queued's status", () => getLive(one.stores.state, KEYS.gatewayStatus(queued.id)), 30_000);

      const hogRequests = fixture.gateway("hog").stats.headers.length;
      fixture.setFrozen("hog", true);
      // a poll stuck at its request (a ping on the kept session) holds the slot for the whole poll timeout
      await until("a poll of the frozen gateway stuck, holding the only slot", async () => fixture.gateway("hog").stats.headers.length > hogRequests, 30_000);
      // hog's polls run one at a time (health only): its latest poll line is the holder's, written
      // before it waited for the slot and began to connect; polls fell due after it wait behind it
      const holder = polls().filter((l) => l.gid === hog.id).at(-1)!;
      await until("a poll of the other gateway waiting for the slot", async () => polls(holder.i + 1).some((l) => l.gid === queued.id), 30_000);
      await one.registry.remove({ id: queued.id });
      await until("its poller stopped", async () => (await getLive(one.stores.state, KEYS.gatewayStatus(queued.id))) === null, 30_000);
      // (its kept session is closed as it stops: that DELETE is its last request)
      await until("its kept session closed", async () => fixture.gateway("queued").sessions.size === 0, 30_000);
      const queuedRequests = fixture.gateway("queued").stats.headers.length;
      // the scenario's premise (a hang bound in effect, not a speed requirement): the poller stopped
      // while its poll still waited for the slot. The stuck connect lets go of the slot no sooner
      // than the poll timeout (20 s) after it began; handling the removal takes milliseconds.
      assert.ok(Date.now() < holder.time + POLL_TIMEOUT_MS - 1_000, "the removal was handled while the slot was surely still held");
      // the frozen poll times out and frees the slot; hog answers again. Polls take the slot
      // in the order they fell due: once a hog poll that fell due after the stopped poller's last
      // one has ended (the next of its kind is due), every poll queued before it has had its turn.
      const lastQueued = polls().filter((l) => l.gid === queued.id).at(-1)!.i;
      fixture.setFrozen("hog", false);
      await until(
        "a poll of hog queued behind the stopped poller's, and ended",
        () => polls(lastQueued + 1).filter((l) => l.gid === hog.id && l.kind === "health").length >= 2,
        POLL_TIMEOUT_MS + 30_000,
      );
      assert.equal(fixture.gateway("queued").stats.headers.length, queuedRequests, "no request to the removed gateway after its poller stopped");

      // a refresh waiting on the frozen gateway's poller, which stops: answered at once, not left to time out
      const hogRequestsAgain = fixture.gateway("hog").stats.headers.length;
      fixture.setFrozen("hog", true);
      await until("a poll of the frozen gateway holding the slot again", async () => fixture.gateway("hog").stats.headers.length > hogRequestsAgain, 30_000);
      const admin = await nats.connect("admin");
      const asked = one.lines.length;
      const pending = request(admin, one.ctx.s.admin.gateway("refresh"), { id: hog.id }, RefreshReplySchema, 30_000);
      pending.catch(() => {}); // judged below
      // the refresh reached the poller: it started a discovery (which waits behind the frozen poll)
      await until("the refresh's discovery of hog", () => polls(asked).some((l) => l.gid === hog.id && l.kind === "discovery"), 30_000);
      await one.registry.remove({ id: hog.id });
      await assert.rejects(pending, /poller stopped/);
      await admin.close();
    } finally {
      fixture.setFrozen("hog", false);
      await one.stop();
      worker = await startTestWorker(nats, ENV);
    }
  });

  it("health checks and discoveries share one kept MCP session; a forgotten session is replaced without a failed check", async () => {
    const gw = await add("kept");
    const opened = () => fixture.gateway("kept").opened.length;
    const pings = () => fixture.gateway("kept").pings;
    await until("first discovery", () => catalog(gw.id), 30_000);
    // five health checks (400 ms) and at least one more discovery (1 s) on the one session
    const first = await until("a health check", async () => (pings() > 0 ? pings() : null), 30_000);
    await until("five more health checks", async () => pings() >= first + 5, 30_000);
    assert.equal(opened(), 1, "one initialize for every health check and discovery");

    // the upstream restarts (forgets every session): the next check opens a new one and succeeds
    await fixture.dropSessions("kept");
    const before = pings();
    // the first ping after the restart meets a forgotten session (404); the one on the new session is answered
    await until("a health check on a new session", async () => opened() === 2 && pings() >= before + 2, 30_000);
    await until("the next check's outcome", async () => pings() >= before + 3, 30_000);
    assert.equal(opened(), 2, "one new session after the restart");
    const status = await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id));
    const parsed = GatewayStatusSchema.parse(status!.json());
    assert.equal(parsed.consecutiveFailures, 0);
    assert.equal(parsed.lastError, null);

    // removing the gateway closes its session at the upstream
    await worker.registry.remove({ id: gw.id });
    await until("its session closed at the upstream", async () => fixture.gateway("kept").sessions.size === 0, 30_000);
  });

  it("stops polling a removed gateway", async () => {
    const gw = await add("gone");
    await until("first discovery", () => catalog(gw.id), 30_000);
    await worker.registry.remove({ id: gw.id });
    // the status is deleted after the poller stopped (and the gateway was forgotten, so no poll can start)
    await until("its poller stopped", async () => (await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id))) === null, 30_000);
    const pollsOf = () => pollLines(worker).filter((p) => p.gid === gw.id).length;
    const before = pollsOf();
    // several health intervals (400 ms) and a discovery interval (1 s) later
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(pollsOf(), before, "no poll of the removed gateway after its poller stopped");
    assert.equal(await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id)), null, "its status stays deleted");
  });
});

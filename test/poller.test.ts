// Gateway pollers end to end: a real nats-server, a real worker, real MCP fixture upstreams
// whose tool lists change while the test runs.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { getLive } from "../actors/kvStore.ts";
import { CatalogChangedEventSchema, CatalogSchema, RefreshReplySchema, type Catalog } from "../protocol/catalog.ts";
import { GatewayStatusSchema } from "../protocol/gateway.ts";
import { PollStampSchema } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { publishEvent } from "../runtime/events.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { until } from "./helpers/wait.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

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

  it("discovers a new gateway at once, then picks up a tool added and removed upstream within one interval", async () => {
    const events: unknown[] = [];
    const sub = worker.nc.subscribe(worker.ctx.s.evt.catalogAll, { callback: (_e, m) => void events.push(m.json()) });
    const gw = await add("alpha");
    const first = await until("the first discovery", () => catalog(gw.id));
    assert.ok(first.value.tools.some((t) => t.name === "echo"));
    assert.deepEqual(first.value.prompts.map((p) => p.name), ["greet"]);
    assert.deepEqual(first.value.resources.map((r) => r.uri), ["fixture://info"]);
    assert.deepEqual(first.value.resourceTemplates.map((r) => r.uriTemplate), ["fixture://items/{id}"]);

    // steady state: wait for a scheduled discovery to end, then change the upstream (the worst case)
    const stamp = async () => (await getLive(worker.stores.state, KEYS.pollDiscovery(gw.id)))?.revision ?? 0;
    const seen = await stamp();
    await until("a scheduled discovery", async () => (await stamp()) > seen, 5_000);
    fixture.gateway("alpha").toolbox.add("dynamic_tool");
    const addedAt = Date.now();
    await until("the new tool in the catalog", async () => (await toolNames(gw.id)).includes("dynamic_tool"), 5_000);
    const addLatency = Date.now() - addedAt;
    // the bound: one discovery interval (1 s), plus the slot jitter (≤ 5%) and the discovery round trip itself
    assert.ok(addLatency < 1_000 * 1.05 + 500, `new tool after ${addLatency} ms`);

    fixture.gateway("alpha").toolbox.remove("dynamic_tool");
    await until("the removed tool gone", async () => !(await toolNames(gw.id)).includes("dynamic_tool"), 5_000);

    // the event follows the catalog write
    const changes = () => events.map((e) => CatalogChangedEventSchema.parse(e)).filter((e) => e.gid === gw.id);
    await until("an event naming the removed tool", async () => changes().some((c) => c.diff.removed.tools.includes("dynamic_tool")), 5_000);
    assert.ok(changes().some((c) => c.diff.added.tools.includes("dynamic_tool")), "an event names the added tool");
    sub.unsubscribe();

    // the status follows the catalog write
    const view = await until("the status counting the tools again", async () => {
      const v = await worker.registry.get({ name: "alpha" });
      return v.status?.tools === first.value.tools.length ? v : null;
    });
    assert.equal(view.status?.health, "healthy");
    assert.equal(view.status?.prompts, 1);
    assert.equal(view.status?.tier, "unclassified");
    assert.ok(view.status?.lastSuccessAt);
    console.log(`# new tool reached the catalog ${addLatency} ms after it appeared upstream (discovery interval 1 s)`);
  });

  it("writes neither catalog nor status when an unchanged gateway is polled; stamps advance", async () => {
    const gw = await add("steady");
    await until("first discovery", () => catalog(gw.id));
    const statusEntry = await until("status", () => getLive(worker.stores.state, KEYS.gatewayStatus(gw.id)));
    const cat = (await catalog(gw.id))!;
    const stamp = async () => {
      const e = await getLive(worker.stores.state, KEYS.pollDiscovery(gw.id));
      return e ? PollStampSchema.parse(e.json()).at : null;
    };
    const firstStamp = await until("discovery stamp", stamp);
    // two more discoveries (each a full poll of the unchanged upstream)
    const secondStamp = await until("a later discovery", async () => ((await stamp()) !== firstStamp ? await stamp() : null), 5_000);
    await until("yet another discovery", async () => ((await stamp()) !== secondStamp ? true : null), 5_000);
    assert.equal((await catalog(gw.id))!.revision, cat.revision, "catalog not rewritten");
    const statusNow = await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id));
    assert.equal(statusNow?.revision, statusEntry.revision, "status not rewritten");
    assert.ok(Date.parse(secondStamp!) > Date.parse(firstStamp!));
  });

  it("an upstream list_changed puts the change in the catalog within 3 s", async () => {
    const slow = await startTestWorker(nats, { ...ENV, MCPGW_DISCOVERY_INTERVAL: "10m" });
    try {
      await worker.stop();
      // only the slow worker polls now: a change can reach the catalog only through the push
      const gw = await slow.registry.add({ name: "pushy", transport: "streamable-http", url: fixture.url("pushy") });
      await until("first discovery", async () => (await getLive(slow.stores.catalog, KEYS.catalog(gw.id))) ?? null);
      // past the debounce window of that first discovery, so the push is not held back by it
      await new Promise((r) => setTimeout(r, 2_100));
      fixture.gateway("pushy").toolbox.add("pushed_tool");
      const t0 = Date.now();
      // what an upstream session actor publishes when its upstream sends notifications/tools/list_changed
      await publishEvent(slow.stores.js, slow.ctx.s.evt.gateway(gw.id, "list_changed"), { type: "list_changed", gid: gw.id, at: new Date().toISOString(), lists: ["tools"] });
      await until(
        "the pushed tool",
        async () => {
          const e = await getLive(slow.stores.catalog, KEYS.catalog(gw.id));
          return e && CatalogSchema.parse(e.json()).tools.some((t) => t.name === "pushed_tool");
        },
        5_000,
      );
      const latency = Date.now() - t0;
      assert.ok(latency < 3_000, `list_changed → catalog took ${latency} ms`);
      console.log(`# list_changed reached the catalog after ${latency} ms`);
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
    await until("healthy", async () => (await status())?.health === "healthy");
    fixture.setDown("flaky", true);
    const down = await until("unhealthy", async () => ((await status())?.health === "unhealthy" ? await status() : null), 10_000);
    assert.ok(down!.consecutiveFailures >= 3);
    assert.match(down!.lastError ?? "", /503|down/i);
    const view = await worker.registry.get({ id: gw.id });
    assert.equal(view.status?.health, "unhealthy");
    fixture.setDown("flaky", false);
    // backoff after 3 failures at 400 ms: the next check is at most 2-4 intervals away
    const up = await until("healthy again", async () => ((await status())?.health === "healthy" ? await status() : null), 10_000);
    assert.equal(up!.consecutiveFailures, 0);
    assert.equal(up!.lastError, null);
  });

  it("refreshes on request and replies with the diff", async () => {
    const gw = await add("manual", { enabled: true });
    await until("first discovery", () => catalog(gw.id));
    const admin = await nats.connect("admin");
    fixture.gateway("manual").toolbox.add("by_hand");
    const r = await request(admin, worker.ctx.s.admin.gateway("refresh"), { name: "manual" }, RefreshReplySchema, 10_000);
    assert.equal(r.gid, gw.id);
    assert.equal(r.changed, true);
    assert.deepEqual(r.diff.added.tools, ["by_hand"]);
    assert.ok((await toolNames(gw.id)).includes("by_hand"));
    const again = await request(admin, worker.ctx.s.admin.gateway("refresh"), { id: gw.id }, RefreshReplySchema, 10_000);
    assert.equal(again.changed, false);
    assert.equal(again.hash, r.hash);
    // a refused request: bad input, unknown gateway
    await assert.rejects(request(admin, worker.ctx.s.admin.gateway("refresh"), { name: "NOT A NAME" }, RefreshReplySchema, 5_000), /invalid/);
    await assert.rejects(request(admin, worker.ctx.s.admin.gateway("refresh"), { name: "nobody" }, RefreshReplySchema, 5_000), /no gateway/);
  });

  it("a stopped poller's queued poll never starts, and its pending refresh is answered", async () => {
    // one poll at a time and a frozen upstream holding it: the other gateway's polls queue up
    const one = await startTestWorker(nats, { ...ENV, MCPGW_MAX_CONCURRENT_POLLS: "1", MCPGW_POLL_TIMEOUT: "3s" });
    try {
      await worker.stop();
      const hog = await one.registry.add({ name: "hog", transport: "streamable-http", url: fixture.url("hog") });
      const queued = await one.registry.add({ name: "queued", transport: "streamable-http", url: fixture.url("queued") });
      for (const g of [hog, queued]) await until("first discovery", async () => (await getLive(one.stores.catalog, KEYS.catalog(g.id))) ?? null);
      await until("queued's status", () => getLive(one.stores.state, KEYS.gatewayStatus(queued.id)));

      const hogRequests = fixture.gateway("hog").stats.headers.length;
      fixture.setFrozen("hog", true);
      await until("a poll of the frozen gateway holding the only slot", async () => fixture.gateway("hog").stats.headers.length > hogRequests);
      const frozenAt = Date.now();
      const pollLines = () => one.lines.map((l) => JSON.parse(l) as { msg?: string; gid?: string; time: number });
      await until("a poll of the other gateway waiting for the slot", async () => pollLines().some((l) => l.msg === "poll" && l.gid === queued.id && l.time >= frozenAt));
      await one.registry.remove({ id: queued.id });
      await until("its poller stopped", async () => (await getLive(one.stores.state, KEYS.gatewayStatus(queued.id))) === null);
      const queuedRequests = fixture.gateway("queued").stats.headers.length;
      // the frozen poll times out (3 s) and frees the slot: the stopped poller's poll must not take it
      await new Promise((r) => setTimeout(r, 4_000));
      assert.equal(fixture.gateway("queued").stats.headers.length, queuedRequests, "no request to the removed gateway after its poller stopped");

      // a refresh waiting on the frozen gateway's poller, which stops: answered at once, not left to time out
      const admin = await nats.connect("admin");
      const pending = request(admin, one.ctx.s.admin.gateway("refresh"), { id: hog.id }, RefreshReplySchema, 20_000);
      await new Promise((r) => setTimeout(r, 300));
      await one.registry.remove({ id: hog.id });
      await assert.rejects(pending, /poller stopped/);
      await admin.close();
    } finally {
      fixture.setFrozen("hog", false);
      await one.stop();
      worker = await startTestWorker(nats, ENV);
    }
  });

  it("stops polling a removed gateway", async () => {
    const gw = await add("gone");
    await until("first discovery", () => catalog(gw.id));
    await worker.registry.remove({ id: gw.id });
    await new Promise((r) => setTimeout(r, 300));
    const before = fixture.gateway("gone").stats.initializes;
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(fixture.gateway("gone").stats.initializes, before, "no more polls");
    assert.equal(await getLive(worker.stores.state, KEYS.gatewayStatus(gw.id)), null);
  });
});

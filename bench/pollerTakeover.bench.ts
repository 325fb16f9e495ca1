// Poller takeover: when a worker dies (its NATS connection closes, nothing is cleaned up), how
// long its gateways go unpolled, with 2 and 3 workers; and how long a list_changed published
// during that ownership gap takes to reach the catalog. Ratios are to the owner TTL, after
// which the survivors judge the dead worker gone.
// Run: node --import tsx bench/pollerTakeover.bench.ts
import { getLive } from "../actors/kvStore.ts";
import { CatalogSchema } from "../protocol/catalog.ts";
import { PollOwnerSchema } from "../protocol/poller.ts";
import { KEYS } from "../protocol/subjects.ts";
import { publishEvent } from "../runtime/events.ts";
import type { Stores } from "../runtime/nats.ts";
import { ownerOf } from "../actors/placement.ts";
import { startFixtureHttp, type FixtureHttp } from "../test/fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { startTestWorker, type TestWorker } from "../test/helpers/worker.ts";
import { ms, msRow, report } from "./report.ts";

const TTL_MS = 3_000;
/** the default owner TTL, for one table at the setting a cluster runs with */
const DEFAULT_TTL_MS = 9_000;
const DEFAULT_REPS = 2;
const GAP_TTL_MS = 2_000;
const HEALTH_MS = 500;
const GATEWAYS = 12;
const REPS = 5;
/** hang bound of every wait */
const WAIT_MS = 30_000;
const ENV = {
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_HEALTH_INTERVAL: `${HEALTH_MS}ms`,
  MCPGW_DISCOVERY_INTERVAL: "10m",
  MCPGW_USAGE_REPORT_INTERVAL: "10m",
};

let nats: TestNats | undefined;
let fixture: FixtureHttp | undefined;
const running: TestWorker[] = [];
let run = 0;

type Line = { msg?: string; gid?: string; kind?: string; time: number };
const lines = (w: TestWorker) => w.lines.map((l) => JSON.parse(l) as Line);
/** when a worker first logged `msg` (of `kind`, if given) for a gateway after `since` */
const firstLine = (w: TestWorker, msg: string, gid: string, since: number, kind?: string) =>
  lines(w).find((l) => l.msg === msg && l.gid === gid && l.time > since && (kind === undefined || l.kind === kind))?.time;

const ownerIn = async (stores: Stores, gid: string) => {
  const e = await getLive(stores.state, KEYS.pollOwner(gid));
  return e ? PollOwnerSchema.parse(e.json()).worker : null;
};

async function startWorkers(count: number, ttl: number): Promise<{ prefix: string; workers: TestWorker[] }> {
  const prefix = `r${run++}`;
  const workers: TestWorker[] = [];
  for (let i = 0; i < count; i++) {
    const w = await startTestWorker(nats!, { ...ENV, MCPGW_SUBJECT_PREFIX: prefix, MCPGW_WORKER_ID: `${prefix}-w${i}`, MCPGW_POLL_OWNER_TTL: `${ttl}ms` });
    workers.push(w);
    running.push(w);
  }
  return { prefix, workers };
}

async function stopAll() {
  for (const w of running.splice(0)) await w.stop().catch(() => {});
}

/** Waits until each gateway is claimed and polled by the worker rendezvous hashing names among `workers`. */
async function settled(workers: TestWorker[], gids: string[], stores: Stores) {
  const ids = workers.map((w) => w.id);
  await until(
    "every gateway claimed and polled by its owner",
    async () => {
      for (const gid of gids) {
        const owner = ownerOf(gid, ids)!;
        if ((await ownerIn(stores, gid)) !== owner) return false;
        if (!firstLine(workers.find((w) => w.id === owner)!, "poll", gid, 0)) return false;
      }
      return true;
    },
    WAIT_MS,
  );
}

/** One run: `count` workers, the one with the most gateways dies; per orphan, kill → claimed and kill → polled again. */
async function takeover(count: number, ttl: number) {
  const { prefix, workers } = await startWorkers(count, ttl);
  const ids = workers.map((w) => w.id);
  const gids: string[] = [];
  for (let i = 0; i < GATEWAYS; i++) gids.push((await workers[0]!.registry.add({ name: `${prefix}-g${i}`, transport: "streamable-http", url: fixture!.url(`${prefix}-g${i}`) })).id);
  await settled(workers, gids, workers[0]!.stores);
  const [victimId] = ids.map((w) => [w, gids.filter((g) => ownerOf(g, ids) === w).length] as const).sort((a, b) => b[1] - a[1])[0]!;
  const victim = workers.find((w) => w.id === victimId)!;
  const survivors = workers.filter((w) => w !== victim);
  const orphans = gids.filter((g) => ownerOf(g, ids) === victimId);
  const killedAt = Date.now();
  await victim.nc.close();
  const heirOf = (gid: string) => survivors.find((w) => w.id === ownerOf(gid, survivors.map((s) => s.id)))!;
  await until("every orphan health-checked again", () => orphans.every((g) => firstLine(heirOf(g), "poll", g, killedAt, "health")), ttl + WAIT_MS);
  const since = (g: string, msg: string, kind?: string) => firstLine(heirOf(g), msg, g, killedAt, kind)! - killedAt;
  const claimed = orphans.map((g) => since(g, "polling gateway"));
  const polled = orphans.map((g) => since(g, "poll"));
  const checked = orphans.map((g) => since(g, "poll", "health"));
  await stopAll();
  return { claimed, polled, checked, orphans: orphans.length };
}

/** One run: 2 workers, the gateway's owner dies, the upstream's list_changed is published at once; kill → the change in the catalog. */
async function missedPush() {
  const { prefix, workers } = await startWorkers(1, GAP_TTL_MS);
  const name = `${prefix}-lc`;
  const gid = (await workers[0]!.registry.add({ name, transport: "streamable-http", url: fixture!.url(name) })).id;
  const stores = workers[0]!.stores;
  await until("the first discovery", () => getLive(stores.catalog, KEYS.catalog(gid)), WAIT_MS);
  // a second worker that never saw the gateway added: to it the gateway is not new
  const second = await startTestWorker(nats!, { ...ENV, MCPGW_SUBJECT_PREFIX: prefix, MCPGW_WORKER_ID: `${prefix}-w1`, MCPGW_POLL_OWNER_TTL: `${GAP_TTL_MS}ms` });
  running.push(second);
  workers.push(second);
  await settled(workers, [gid], second.stores);
  const victim = workers.find((w) => w.id === ownerOf(gid, workers.map((x) => x.id)))!;
  const heir = workers.find((w) => w !== victim)!;
  const killedAt = Date.now();
  await victim.nc.close();
  fixture!.gateway(name).toolbox.add("late_tool");
  await publishEvent(heir.stores.js, heir.ctx.s.evt.gateway(gid, "list_changed"), { type: "list_changed", gid, at: new Date().toISOString(), lists: ["tools"] });
  const writtenAt = await until("the change in the catalog", async () => {
    const e = await getLive(heir.stores.catalog, KEYS.catalog(gid));
    const c = e ? CatalogSchema.parse(e.json()) : null;
    return c?.tools.some((t) => t.name === "late_tool") ? Date.parse(c.discoveredAt) : null;
  }, GAP_TTL_MS + WAIT_MS);
  const claimed = firstLine(heir, "polling gateway", gid, killedAt)! - killedAt;
  await stopAll();
  return { claimed, discovered: writtenAt - killedAt };
}

async function main() {
  nats = await startNats();
  fixture = await startFixtureHttp();

  const runs = async (count: number, ttl: number, reps: number) => {
    const r = { claimed: [] as number[], polled: [] as number[], checked: [] as number[], worst: [] as number[], orphans: 0 };
    for (let i = 0; i < reps; i++) {
      const one = await takeover(count, ttl);
      r.claimed.push(...one.claimed);
      r.polled.push(...one.polled);
      r.checked.push(...one.checked);
      r.worst.push(Math.max(...one.polled));
      r.orphans += one.orphans;
    }
    report(
      `Poller takeover: ${count} workers, one killed, owner TTL ${ms(ttl)}`,
      `${count} in-process workers on a local nats-server, ${GATEWAYS} fixture gateways (streamable HTTP), owner TTL ${ms(ttl)}, health every ${ms(HEALTH_MS)}; ` +
        `${reps} runs, each killing the worker with the most gateways (its connection closed, nothing released): ${r.orphans} orphaned gateways in all. ` +
        `Times from the kill to the heir's log lines. (The heir's first poll is a discovery: it saw the gateway added and never polled it.)`,
      [
        msRow("kill → gateway claimed by its heir (poller started)", r.claimed, ttl, "TTL"),
        msRow("kill → gateway polled again (any poll)", r.polled, ttl, "TTL"),
        msRow("kill → gateway health-checked again", r.checked, ttl, "TTL"),
        msRow("kill → last orphan of a run polled again", r.worst, ttl, "TTL"),
      ],
    );
  };
  for (const count of [2, 3]) await runs(count, TTL_MS, REPS);
  await runs(3, DEFAULT_TTL_MS, DEFAULT_REPS);

  const gap = { claimed: [] as number[], discovered: [] as number[] };
  for (let i = 0; i < REPS; i++) {
    const r = await missedPush();
    gap.claimed.push(r.claimed);
    gap.discovered.push(r.discovered);
  }
  report(
    "Poller takeover: list_changed during the ownership gap",
    `2 in-process workers, owner TTL ${ms(GAP_TTL_MS)}, discovery every 10 min; ${REPS} runs, each killing the gateway's owner and at once ` +
      `publishing a list_changed for it (a tool added upstream). Times from the kill.`,
    [msRow("kill → gateway claimed by the survivor", gap.claimed, GAP_TTL_MS, "TTL"), msRow("kill → the change in the catalog", gap.discovered, GAP_TTL_MS, "TTL")],
  );
}

try {
  await main();
} finally {
  await stopAll();
  await fixture?.close();
  await nats?.stop();
}
process.exit(0);

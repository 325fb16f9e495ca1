// Faults of the system itself under load: SIGKILL of a worker, and a nats-server restart, while
// client sessions call tools back to back. Clients fail over between edges as a load balancer
// would. Every answer must be the caller's own (echo of a unique text), every session must work
// again after the fault, and the registered state must be intact.
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { startFixtureProcess } from "../../test/fixtures/fixtureHttp.ts";
import { type CallRecord, Checks, failoverClient, loadLoop, ms, type ScenarioResult, startSystem, type System, textOf, waitForTools } from "../harness.ts";

/** the clients' own request timeout: a call whose answer was lost ends by it */
const CLIENT_TIMEOUT_MS = 10_000;

type Run = { records: CallRecord[]; mismatches: number; faultAt: number; faultEnd: number; lanes: number };

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function setUp(sys: System, lanes: number): Promise<{ clients: Client[]; stopFixture(): Promise<void> }> {
  const fixture = await startFixtureProcess();
  await sys.addGateway({ name: "counter", transport: "streamable-http", url: fixture.url("counter") });
  const edges = () => sys.workers.map((w) => w.edgeUrl);
  const clients: Client[] = [];
  for (let i = 0; i < lanes; i++) clients.push(await failoverClient(edges, i, `lane-${i}`));
  await waitForTools(clients[0]!, ["counter__echo"]);
  return { clients, stopFixture: fixture.stop };
}

async function underFault(sys: System, clients: Client[], durationMs: number, fault: () => Promise<void>): Promise<Run> {
  let mismatches = 0;
  const load = loadLoop(clients.length, async (lane, n) => {
    const text = `lane ${lane} call ${n}`;
    const got = textOf(await clients[lane]!.callTool({ name: "counter__echo", arguments: { text } }, undefined, { timeout: CLIENT_TIMEOUT_MS }));
    if (got !== text) mismatches++;
  });
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, durationMs / 3));
  const faultAt = performance.now();
  await fault();
  const faultEnd = performance.now();
  await new Promise((r) => setTimeout(r, Math.max(0, durationMs - (performance.now() - t0))));
  await load.stop();
  return { records: load.records, mismatches, faultAt, faultEnd, lanes: clients.length };
}

function summarise(run: Run, c: Checks) {
  const failed = run.records.filter((r) => !r.ok).sort((a, b) => a.at - b.at);
  const lastFail = failed.at(-1);
  c.check("every answer was the caller's own", run.mismatches === 0, `${run.mismatches} mismatches`);
  const kinds = new Map<string, number>();
  for (const f of failed) {
    const k = (f.error ?? "?").replace(/\d+/g, "N").slice(0, 70);
    kinds.set(k, (kinds.get(k) ?? 0) + 1);
  }
  const okMs = run.records.filter((r) => r.ok).map((r) => r.ms);
  // recovery of each lane that failed: from the end of the fault to its first success begun after it
  const recoveries: number[] = [];
  for (const lane of new Set(failed.map((f) => f.lane))) {
    const firstOk = run.records.filter((r) => r.lane === lane && r.ok && r.at >= run.faultEnd).sort((x, y) => x.at - y.at)[0];
    if (firstOk) recoveries.push(firstOk.at + firstOk.ms - run.faultEnd);
  }
  const inFlight = failed.filter((f) => f.at < run.faultEnd).length;
  return {
    load: `${run.lanes} client sessions calling back to back: ${run.records.length.toLocaleString("en-US")} calls, p50 ${ms(percentile(okMs, 50))}, p99 ${ms(percentile(okMs, 99))}`,
    failures:
      failed.length === 0
        ? "0 failed calls"
        : `${failed.length} of ${run.records.length} failed, ${inFlight} of them begun before the fault ended (${[...kinds].map(([k, v]) => `${v}× ${k}`).join("; ")})`,
    recovery: !lastFail
      ? "no call failed"
      : recoveries.length === 0
        ? `no lane that saw a failure called again within the window (client timeout ${ms(CLIENT_TIMEOUT_MS)})`
        : `the ${recoveries.length} lane(s) that saw a failure answered again ${ms(percentile(recoveries, 50))} (p50), ${ms(Math.max(...recoveries))} (max) after the fault ended`,
  };
}

/** One fault under load, and what must hold after it: every session answers, state intact, no worker crashed. */
async function faultUnderLoad(
  opts: { durationMs: number; lanes: number },
  what: { scenario: string; faults: string; after: string },
  fault: (sys: System) => Promise<void>,
): Promise<ScenarioResult> {
  const sys = await startSystem({ workers: 2 });
  const c = new Checks();
  let stopFixture = async () => {};
  try {
    const setup = await setUp(sys, opts.lanes);
    stopFixture = setup.stopFixture;
    const before = await sys.gatewaySnapshot();
    const toolNames = async () => (await setup.clients[0]!.listTools()).tools.map((t) => t.name).sort().join(",");
    const catalogBefore = await toolNames();
    const run = await underFault(sys, setup.clients, opts.durationMs, () => fault(sys));
    const sum = summarise(run, c);
    // every session (those whose upstream session or edge was hit included) works again
    const fresh = await Promise.all(setup.clients.map((cl, i) => cl.callTool({ name: "counter__echo", arguments: { text: `after ${i}` } }).then((r) => textOf(r) === `after ${i}`, () => false)));
    c.check(`every client session works after ${what.after}`, fresh.every(Boolean), `${fresh.filter(Boolean).length}/${fresh.length}`);
    const after = await sys.gatewaySnapshot();
    c.check("gateway records intact", after.size === before.size && [...before].every(([id, j]) => after.get(id) === j));
    c.check("the federated catalog is intact", (await toolNames()) === catalogBefore);
    c.check("no remaining worker crashed", sys.workers.length > 0 && sys.workers.every((w) => w.proc.child.exitCode === null && w.proc.child.signalCode === null));
    await Promise.all(setup.clients.map((cl) => cl.close().catch(() => {})));
    return { scenario: what.scenario, ...sum, faults: what.faults, intact: `${before.size} gateway record(s) byte-identical, catalog identical; every session answers afterwards`, ok: c.ok, checks: c.list };
  } finally {
    await stopFixture();
    await sys.stop();
  }
}

export function workerKill(opts: { durationMs: number; lanes: number }): Promise<ScenarioResult> {
  return faultUnderLoad(opts, { scenario: "worker SIGKILL under load", faults: "SIGKILL of one of 2 workers (its edge and its upstream sessions)", after: "the kill" }, async (sys) => {
    await sys.killWorker(sys.workers[0]!, "SIGKILL");
  });
}

export function natsRestart(opts: { durationMs: number; lanes: number; downMs: number }): Promise<ScenarioResult> {
  return faultUnderLoad(
    opts,
    { scenario: "nats-server restart under load", faults: `nats-server stopped (SIGTERM) for ${ms(opts.downMs)}, then started on the same port and store`, after: "the restart" },
    (sys) => sys.restartNats(opts.downMs),
  );
}

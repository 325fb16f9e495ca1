// Replicated state on a 3-node NATS cluster that loses a node, under load (`npm test`'s
// sequential phase; `npm run chaos` runs it too). Two worker processes with
// MCPGW_JS_REPLICAS=3 know all three nodes; a client session calls a tool in a loop and an
// operator adds, lists and removes gateways in a loop while the node that leads most of the
// state's streams is SIGKILLed; a session begun after the kill makes its first call. How long
// service takes to come back is measured in bench/cluster.bench.ts; the time bounds here only
// stop a hang.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { GatewayListReplySchema, GatewayRemoveReplySchema } from "../protocol/gateway.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { ProtocolError } from "../protocol/envelope.ts";
import { request } from "../runtime/bus.ts";
import { requestThroughNodeLoss } from "../runtime/jetstreamRetry.ts";
import { openStores } from "../runtime/nats.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient } from "./helpers/edge.ts";
import { busiestLeader, startNatsCluster, stateStreams, type TestNatsCluster } from "./helpers/natsCluster.ts";
import { edgeUrlOf, runTs, workerEnv, type Proc } from "./helpers/processes.ts";
import { until } from "./helpers/wait.ts";
import { TEST_SECRET_KEY } from "./helpers/worker.ts";

let cluster: TestNatsCluster;
let fixture: FixtureHttp;
const workers: Proc[] = [];
const clients: Client[] = [];
/** hang bound of one request: beyond a leader election and a reconnect */
const REQUEST_MS = 30_000;
/** how long the loops keep going after the kill */
const AFTER_KILL_MS = 8_000;

before(async () => {
  cluster = await startNatsCluster(3);
  fixture = await startFixtureHttp();
});
after(async () => {
  await Promise.allSettled(clients.map((c) => c.close()));
  for (const { child } of workers) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await Promise.all(workers.map((w) => w.exited));
  await fixture?.close();
  await cluster?.stop();
});

/** An error as `<code>: <message>`: the envelope's code of an admin reply, `rpc <code>` of an MCP error. */
function errorText(err: unknown): string {
  if (err instanceof ProtocolError) return `${err.code}: ${err.message}`;
  if (err instanceof McpError) return `rpc ${err.code}: ${err.message}`;
  return String(err);
}

describe("replicated state on a 3-node NATS cluster", () => {
  it("SIGKILL of the node leading the buckets under load: sessions, new sessions and admin requests keep working, no internal error, state intact", async (t) => {
    const s = subjects("mcpgw");
    const edges: string[] = [];
    for (const id of ["c1", "c2"]) {
      const w = runTs("runtime/main.ts", [], workerEnv(cluster, TEST_SECRET_KEY, { MCPGW_WORKER_ID: id, MCPGW_JS_REPLICAS: "3", MCPGW_LOG_LEVEL: "warn" }));
      workers.push(w);
      edges.push(await edgeUrlOf(w));
    }

    // The operator's connection avoids the node that will die: it watches, it is not under test.
    const setup = await cluster.connect();
    const victim = await busiestLeader(setup, "mcpgw");
    const others = cluster.nodes.filter((n) => n.name !== victim);
    const admin = await cluster.connect("admin", others.map((n) => n.url).join(","));
    // as the CLI asks: through a node loss (runtime/jetstreamRetry.ts)
    const adminRequest = <T extends z.ZodType>(subject: string, payload: unknown, schema: T) =>
      requestThroughNodeLoss(admin, subject, payload, schema, { timeoutMs: REQUEST_MS, readOnly: s.admin.readOnly.has(subject) });

    const gid = (await request(admin, s.admin.gateway("add"), { name: "up", transport: "streamable-http", url: fixture.url("up") }, z.object({ id: z.string() }), REQUEST_MS)).id;
    const session = (await connectClient(edges[0]!, { name: "old-session" })).client;
    clients.push(session);
    await until("the gateway's tools in the catalog", async () => (await session.listTools()).tools.some((t) => t.name === "up__increment"), 60_000);
    const first = await session.callTool({ name: "up__increment", arguments: {} });
    assert.equal((first.content as Array<{ text: string }>)[0]!.text, "1");

    const state = await openStores(setup, "mcpgw");
    const kept = async () =>
      Promise.all([
        state.gateways.get(KEYS.gateway(gid)),
        state.gateways.get(`name.up`),
        state.catalog.get(KEYS.catalog(gid)),
      ]).then((es) => es.map((e) => (e ? { key: e.key, revision: e.revision, op: e.operation, value: e.string() } : null)));
    const before = await kept();
    assert.ok(before.every((e) => e?.op === "PUT"), "the gateway's record, name and catalog are stored");

    type Op = { what: string; start: number; end: number; error?: string; value?: string; name?: string };
    const ops: Op[] = [];
    let stopAt = Infinity;
    // Each operation starts on its own cadence, not after the previous one: a request in flight
    // when the node dies waits out its own timeout without holding back the ones after it.
    const pace = async (what: string, everyMs: number, f: (op: Op) => Promise<string | void>) => {
      const running: Promise<void>[] = [];
      while (performance.now() < stopAt) {
        const op: Op = { what, start: performance.now(), end: 0 };
        running.push(
          f(op).then(
            (v) => void (op.value = v ?? undefined),
            (err) => void (op.error = errorText(err)),
          ).finally(() => {
            op.end = performance.now();
            ops.push(op);
          }),
        );
        await new Promise((r) => setTimeout(r, everyMs));
      }
      await Promise.all(running);
    };
    const callLoop = pace("call", 100, async () => {
      const r = await session.callTool({ name: "up__increment", arguments: {} }, undefined, { timeout: REQUEST_MS });
      if (r.isError) throw new Error(`tool error: ${JSON.stringify(r.content)}`);
      return (r.content as Array<{ text: string }>)[0]!.text;
    });
    let n = 0;
    const adminLoop = pace("admin", 200, async (op) => {
      const name = (op.name = `loop-${n++}`);
      await adminRequest(s.admin.gateway("add"), { name, transport: "streamable-http", url: fixture.url(name), enabled: false }, z.object({ id: z.string() }));
      const listed = await adminRequest(s.admin.gateway("list"), {}, GatewayListReplySchema);
      if (!listed.gateways.some((g) => g.name === name)) throw new Error(`${name} missing from the list`);
      await adminRequest(s.admin.gateway("remove"), { name }, GatewayRemoveReplySchema);
    });

    await new Promise((r) => setTimeout(r, 2_000));
    const routesBefore = await Promise.all(others.map((n) => n.routes()));
    const killAt = performance.now();
    await cluster.nodes.find((x) => x.name === victim)!.kill();
    stopAt = performance.now() + AFTER_KILL_MS;
    // The kill is over once both survivors have dropped their route to the dead node: until then
    // a survivor may still route a request to a subscriber behind it, and that request is lost
    // with the node (in flight at the kill: a write or a call then ends by its own timeout).
    const killSeen = until(
      "the survivors to drop their routes to the dead node",
      async () => (await Promise.all(others.map((n) => n.routes()))).every((r, i) => r < routesBefore[i]!) && performance.now(),
      REQUEST_MS,
    );
    // a session that starts after the kill; its outcome is asserted below, after the diagnostics
    const freshFirst = await (async () => {
      const fresh = (await connectClient(edges[1]!, { name: "new-session" })).client;
      clients.push(fresh);
      t.diagnostic(`a new session connected ${Math.round(performance.now() - killAt)} ms after the kill`);
      return fresh.callTool({ name: "up__increment", arguments: {} }, undefined, { timeout: REQUEST_MS });
    })().then(
      (r) => (t.diagnostic(`its first call answered ${Math.round(performance.now() - killAt)} ms after the kill`), r),
      (err: unknown) => new Error(`a new session's first call failed ${Math.round(performance.now() - killAt)} ms after the kill: ${errorText(err)}`),
    );
    await Promise.all([callLoop, adminLoop]);
    const killOverAt = await killSeen;
    t.diagnostic(`the survivors dropped their routes to the dead node ${Math.round(killOverAt - killAt)} ms after the kill`);

    // what a failure is read against (reported, not asserted: speed is the bench's)
    const slow = ops.filter((o) => o.start >= killOverAt).sort((a, b) => b.end - b.start - (a.end - a.start))[0];
    if (slow) t.diagnostic(`slowest operation begun after the kill: ${slow.what} at ${Math.round(slow.start - killAt)} ms, ${Math.round(slow.end - slow.start)} ms${slow.error ? `: ${slow.error}` : ""}`);
    for (const o of ops.filter((x) => x.error)) t.diagnostic(`failed: ${o.what} begun ${Math.round(o.start - killAt)} ms after the kill, after ${Math.round(o.end - o.start)} ms: ${o.error}`);
    const after = ops.filter((o) => o.start >= killOverAt);
    assert.deepEqual(ops.filter((o) => o.error && /^(internal|rpc -32603):/.test(o.error)), [], "no internal error, in flight or not");
    assert.deepEqual(after.filter((o) => o.error), [], "every call and admin request begun after the kill succeeds");
    assert.ok(after.some((o) => o.what === "call") && after.some((o) => o.what === "admin"), "calls and admin requests went on after the kill");
    if (freshFirst instanceof Error) throw freshFirst;
    assert.equal(freshFirst.isError, undefined, "a new session's first call succeeds");
    assert.equal((freshFirst.content as Array<{ text: string }>)[0]!.text, "1");
    // the old session kept its one upstream session: a new one would count from 1 again
    const counts = ops.filter((o) => o.what === "call" && !o.error).map((o) => Number(o.value));
    assert.equal(new Set(counts).size, counts.length, `one upstream session, counting on: ${counts.join(",")}`);

    assert.deepEqual(await kept(), before, "the gateway's record, name and catalog are intact");
    const listed = await request(admin, s.admin.gateway("list"), {}, GatewayListReplySchema, REQUEST_MS);
    // an admin round in flight at the kill may have stopped between its add and its remove
    const unfinished = ops.filter((o) => o.what === "admin" && o.error).map((o) => o.name);
    assert.deepEqual(listed.gateways.map((g) => g.name).filter((x) => !unfinished.includes(x)), ["up"], "every finished loop gateway was removed again");
  });
});

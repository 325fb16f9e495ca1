// Streams survive their edge (issue 10): worker processes, the SDK client behind a loopback
// failover (its fetch goes to the first worker that takes a connection), a real upstream.
// A worker killed mid-call: the client resumes its POST stream at the other worker and gets
// the call's result. A worker stopped mid-call: it lets the call finish on its stream first.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { edgeUrlOf, runTs, workerEnv, type Proc } from "./helpers/processes.ts";
import { TEST_SECRET_KEY } from "./helpers/worker.ts";

const s = subjects();
/** hang bound of one step (a worker process starting, a call) */
const BOUND_MS = 30_000;
const text = (r: unknown) => ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? "");

/**
 * The client's way to the workers: each request goes to the first origin in `order` that
 * takes a connection (a killed worker refuses them), and is recorded.
 */
function failover() {
  const seen: Array<{ origin: string; method: string; lastEventId: string | null }> = [];
  const state = { order: [] as string[] };
  const fetchVia: typeof fetch = async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    let lastError: unknown;
    for (const origin of state.order) {
      const target = new URL(url.pathname + url.search, origin);
      try {
        const res = await fetch(target, init);
        seen.push({ origin, method: init?.method ?? "GET", lastEventId: new Headers(init?.headers).get("last-event-id") });
        return res;
      } catch (err) {
        lastError = err;
      }
    }
    throw lastError;
  };
  return { fetch: fetchVia, seen, state };
}

describe("client streams survive their worker", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  const workers: Proc[] = [];
  const start = async (id: string) => {
    const w = runTs("runtime/main.ts", [], workerEnv(nats, TEST_SECRET_KEY, { MCPGW_WORKER_ID: id, MCPGW_LOG_LEVEL: "warn", MCPGW_SHUTDOWN_TIMEOUT: "10s" }));
    workers.push(w);
    return { proc: w, origin: new URL(await edgeUrlOf(w)).origin };
  };

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
  });
  after(async () => {
    for (const { child } of workers) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await Promise.all(workers.map((w) => w.exited));
    await fixture?.close();
    await nats?.stop();
  });

  it("SIGKILL of the worker holding a 3 s call's stream: the client resumes at the worker hosting its upstream session and receives the result", async () => {
    const b = await start("resume-b");
    const admin = await nats.connect("admin");
    await request(admin, s.admin.gateway("add"), { name: "counter", transport: "streamable-http", url: fixture.url("counter") }, z.object({ id: z.string() }), BOUND_MS);
    const way = failover();
    way.state.order = [b.origin];
    const { client } = await connectClient(`${b.origin}/mcp`, { fetch: way.fetch });
    await until("the gateway's tools in the catalog", async () => (await client.listTools()).tools.some((t) => t.name === "counter__sleep"), BOUND_MS);
    // B is the only worker: the client's upstream session lives there
    assert.equal(text(await client.callTool({ name: "counter__increment", arguments: {} })), "1");

    const a = await start("resume-a");
    way.state.order = [a.origin, b.origin];
    const tokens: string[] = [];
    const call = client.callTool({ name: "counter__sleep", arguments: { ms: 3000 } }, undefined, { onresumptiontoken: (t) => void tokens.push(t), timeout: BOUND_MS });
    await until("A holds the call's stream (its priming event arrived)", () => tokens.length > 0, BOUND_MS);
    assert.equal(way.seen.at(-1)?.origin, a.origin);
    a.proc.child.kill("SIGKILL");
    await a.proc.exited;

    assert.equal(text(await call), "slept 3000");
    const resumed = way.seen.filter((r) => r.lastEventId !== null);
    assert.ok(resumed.length >= 1, "the client resumed its stream");
    assert.equal(resumed[0]!.origin, b.origin);
    assert.equal(resumed[0]!.lastEventId, tokens[0]);
    // the session goes on at B
    assert.equal(text(await client.callTool({ name: "counter__increment", arguments: {} })), "2");
    await client.close();
    await admin.close();
  });

  it("SIGTERM of the worker holding a call's stream: the call finishes on that stream before the worker exits", async () => {
    const b = await start("drain-b");
    const a = await start("drain-a");
    const admin = await nats.connect("admin");
    await request(admin, s.admin.gateway("add"), { name: "drainer", transport: "streamable-http", url: fixture.url("drainer") }, z.object({ id: z.string() }), BOUND_MS);
    await admin.close();
    const way = failover();
    way.state.order = [a.origin, b.origin];
    const { client } = await connectClient(`${a.origin}/mcp`, { fetch: way.fetch });
    await until("the gateway's tools in the catalog", async () => (await client.listTools()).tools.some((t) => t.name === "drainer__sleep"), BOUND_MS);
    const tokens: string[] = [];
    const call = client.callTool({ name: "drainer__sleep", arguments: { ms: 2000 } }, undefined, { onresumptiontoken: (t) => void tokens.push(t), timeout: BOUND_MS });
    await until("A holds the call's stream", () => tokens.length > 0, BOUND_MS);
    a.proc.child.kill("SIGTERM");
    assert.equal(text(await call), "slept 2000");
    assert.deepEqual(
      way.seen.filter((r) => r.lastEventId !== null && !r.lastEventId.startsWith("get.")),
      [],
      "answered on its own stream, not by resuming it elsewhere",
    );
    assert.equal((await a.proc.exited).code, 0);
    await client.close();
  });
});

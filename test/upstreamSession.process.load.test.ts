// Upstream sessions in worker processes: SIGKILL of the hosting worker, and SIGTERM of a
// worker with 1,000 live sessions. Run one file at a time (the `*.load.test.ts` phase): it
// starts worker processes and opens 1,000 upstream sessions. How long these take is measured
// in bench/upstreamSession.bench.ts; the time bounds here only stop a hang.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { subjects, type Subjects } from "../protocol/subjects.ts";
import { SessionListReplySchema, type UpstreamCallReply } from "../protocol/upstream.ts";
import { encodeJson, isNoResponders, request } from "../runtime/bus.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { until } from "./helpers/wait.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { runTs, workerEnv, type Proc } from "./helpers/processes.ts";
import { memoryLogger, TEST_SECRET_KEY } from "./helpers/worker.ts";

let nats: TestNats;
let fixture: FixtureHttp;
let nc: NatsConnection;
const children: Proc[] = [];
/** hang bound of an admin request (answered in milliseconds; a fan-out waits at most 3 s for workers) */
const REQUEST_MS = 20_000;

before(async () => {
  nats = await startNats();
  fixture = await startFixtureHttp();
  nc = await nats.connect("runtime");
});
after(async () => {
  for (const { child } of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await Promise.all(children.map((c) => c.exited));
  await fixture?.close();
  await nats?.stop();
});

function startWorkerProcess(prefix: string, id: string, env: Record<string, string> = {}): Proc {
  const proc = runTs("runtime/main.ts", [], workerEnv(nats, TEST_SECRET_KEY, { MCPGW_SUBJECT_PREFIX: prefix, MCPGW_WORKER_ID: id, MCPGW_LOG_LEVEL: "warn", ...env }));
  children.push(proc);
  return proc;
}

/** How the process exited; a hang bound only (the worker gives up by itself at 2× its shutdown timeout). */
async function exitedWithin(proc: Proc, ms: number): Promise<Awaited<Proc["exited"]>> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`process ${proc.child.pid} did not exit within ${ms} ms`)), ms)));
  try {
    return await Promise.race([proc.exited, bound]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitForWorkers(on: Subjects, ids: string[]): Promise<void> {
  await until(
    `workers ${ids.join(", ")}`,
    async () => {
      const r = await request(nc, on.admin.sessionList, {}, SessionListReplySchema, 2000).catch(() => null);
      return ids.every((id) => r?.workers.includes(id));
    },
    30_000,
  );
}

async function addGateway(on: Subjects, name: string): Promise<string> {
  return (await request(nc, on.admin.gateway("add"), { name, transport: "streamable-http", url: fixture.url(name) }, z.object({ id: z.string() }), REQUEST_MS)).id;
}

const call = (name: string, args: Record<string, unknown> = {}) => ({ method: "tools/call" as const, params: { name, arguments: args }, requestId: `r${Math.random()}`, headers: {} });

function text(reply: UpstreamCallReply): string {
  assert.ok("result" in reply, `expected a result, got ${JSON.stringify(reply)}`);
  return (reply.result.content as Array<{ text: string }>)[0]!.text;
}

describe("upstream sessions in worker processes", () => {
  it("SIGKILL of the hosting worker → the next call is answered by a new upstream session on the survivor", async () => {
    const ks = subjects("ktest");
    const caller = createUpstreamCaller(nc, ks, { callTimeoutMs: 10_000, log: memoryLogger().log });
    const k1 = startWorkerProcess("ktest", "k1");
    const k2 = startWorkerProcess("ktest", "k2");
    await waitForWorkers(ks, ["k1", "k2"]);
    const gid = await addGateway(ks, "killme");
    const a = "session-a";
    assert.equal(text(await caller.call(a, gid, call("increment"))), "1");
    const host = (await request(nc, ks.admin.sessionList, { sid: a }, SessionListReplySchema, REQUEST_MS)).sessions[0]!.worker;
    const [victim, survivor] = host === "k1" ? [k1, "k2"] : [k2, "k1"];
    victim.child.kill("SIGKILL");
    // A request that reaches the dead worker before nats-server has seen its socket close has
    // an unknown outcome and is never retried; callers see "no responders" once the server knows.
    const gone = async () =>
      nc.request(ks.upstream.op(a, gid, "status"), encodeJson({}), { timeout: 100 }).then(
        () => false,
        (err: unknown) => isNoResponders(err),
      );
    // the kernel closes a killed process's sockets at once; the bound only stops a hang
    await until("nats-server to drop the killed worker", gone, 30_000);
    // the caller's own timeout (10 s) bounds the call
    assert.equal(text(await caller.call(a, gid, call("increment"))), "1", "a new upstream session");
    assert.equal((await exitedWithin(victim, 30_000)).signal, "SIGKILL");
    const now = await request(nc, ks.admin.sessionList, { sid: a }, SessionListReplySchema, REQUEST_MS);
    assert.deepEqual(now.sessions.map((x) => x.worker), [survivor]);
  });

  it("SIGTERM of a worker with 1,000 live sessions: a graceful exit (code 0, not the hard deadline's 1) that ends every upstream session", async () => {
    const SESSIONS = 1_000;
    // Closing 1,000 sessions takes about 4 s of CPU on 2 cores (bench/upstreamSession.bench.ts),
    // so the hard deadline sits well above that: the test is about a clean exit, not its speed.
    const shutdownMs = 10_000;
    const ts = subjects("ttest");
    const caller = createUpstreamCaller(nc, ts, { callTimeoutMs: 30_000, log: memoryLogger().log });
    const t1 = startWorkerProcess("ttest", "t1", { MCPGW_SHUTDOWN_TIMEOUT: `${shutdownMs}ms` });
    await waitForWorkers(ts, ["t1"]);
    const gid = await addGateway(ts, "many");
    let next = 0;
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (next < SESSIONS) {
          const x = `many-${next++}`;
          await caller.call(x, gid, call("echo", { text: "x" }));
        }
      }),
    );
    const live = await request(nc, ts.admin.sessionList, {}, SessionListReplySchema, REQUEST_MS);
    assert.equal(live.sessions.length, SESSIONS);
    t1.child.kill("SIGTERM");
    // runtime/main.ts exits 1 if its hard deadline (2× shutdownTimeout) fires before the worker
    // has stopped, 0 once every session is closed: the exit code tells which, whatever the clock.
    assert.deepEqual(await exitedWithin(t1, 60_000), { code: 0, signal: null }, `a graceful exit, not the hard shutdown deadline\n${t1.output().slice(-2000)}`);
    // every upstream session was ended politely (its DELETE reached the upstream), none left open there
    await until("the upstream sessions to be ended", () => fixture.gateway("many").sessions.size === 0, 30_000);
  });
});

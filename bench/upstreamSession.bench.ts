// Upstream session actors: how much calls in one session overlap, how long a bounded close
// takes, how soon a call is answered again after its worker process is SIGKILLed, how fast a
// worker opens 1,000 upstream sessions, and how long SIGTERM takes with 1,000 of them live.
// Real nats-server, real MCP fixture servers (streamable HTTP in this process, stdio children).
// Run: node --import tsx bench/upstreamSession.bench.ts
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { subjects, type Subjects } from "../protocol/subjects.ts";
import { SessionListReplySchema, type UpstreamCallReply } from "../protocol/upstream.ts";
import { encodeJson, isNoResponders, request } from "../runtime/bus.ts";
import { createUpstreamCaller, type UpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "../test/fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { isRunning, runTs, workerEnv, type Proc } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { memoryLogger, startTestWorker, TEST_SECRET_KEY, type TestWorker } from "../test/helpers/worker.ts";
import { ms, msRow, ratio, report, stats } from "./report.ts";

/** hang bound of every wait */
const WAIT_MS = 30_000;
const SLEEP_MS = 200;
const PARALLEL = 10;
const OVERLAP_REPS = 20;
const SERIAL_REPS = 3;
/** the in-process worker's shutdown timeout (closes) */
const CLOSE_SHUTDOWN_MS = 500;
const CLOSE_REPS = 6;
const KILL_REPS = 6;
const SESSIONS = 1_000;
const OPEN_CONCURRENCY = 50;
/** worker processes' shutdown timeout: the default */
const TERM_SHUTDOWN_MS = 5_000;
const TERM_REPS = 3;
const STDIO_FIXTURE = ["--import", "tsx", "test/fixtures/stdioFixture.ts"];

let nats: TestNats | undefined;
let fixture: FixtureHttp | undefined;
let nc: NatsConnection | undefined;
const inProcess: TestWorker[] = [];
const procs = new Set<Proc>();
let seq = 0;

const rid = () => `r${++seq}`;
const tool = (name: string, args: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  method: "tools/call" as const,
  params: { name, arguments: args },
  requestId: rid(),
  headers: {},
  ...extra,
});
function text(reply: UpstreamCallReply): string {
  if (!("result" in reply)) throw new Error(`expected a result, got ${JSON.stringify(reply)}`);
  return (reply.result.content as Array<{ text: string }>)[0]!.text;
}
const callerOn = (s: Subjects, callTimeoutMs = 30_000) => createUpstreamCaller(nc!, s, { callTimeoutMs, log: memoryLogger("silent").log });
const addGateway = async (s: Subjects, spec: Record<string, unknown>) =>
  (await request(nc!, s.admin.gateway("add"), { transport: "streamable-http", ...spec }, z.object({ id: z.string() }), 10_000)).id;
const listSessions = (s: Subjects, filter: { sid?: string } = {}) => request(nc!, s.admin.sessionList, filter, SessionListReplySchema, 10_000);
const timed = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
  const t0 = performance.now();
  const v = await f();
  return [v, performance.now() - t0];
};
/** A worker process (`runtime/main.ts`) on `prefix`, resolved once it has started. */
async function startWorkerProcess(prefix: string, id: string, env: Record<string, string> = {}): Promise<Proc> {
  const proc = runTs("runtime/main.ts", [], workerEnv(nats!, TEST_SECRET_KEY, { MCPGW_SUBJECT_PREFIX: prefix, MCPGW_WORKER_ID: id, MCPGW_LOG_LEVEL: "info", MCPGW_HEALTH_INTERVAL: "60s", ...env }));
  procs.add(proc);
  void proc.exited.then(() => procs.delete(proc));
  await proc.waitFor(/"msg":"worker started/, WAIT_MS);
  return proc;
}

// ---- 10 concurrent calls in one upstream session ----

async function overlap() {
  const s = subjects("obench");
  inProcess.push(await startTestWorker(nats!, { MCPGW_SUBJECT_PREFIX: "obench", MCPGW_WORKER_ID: "o1" }));
  const caller = callerOn(s);
  const gid = await addGateway(s, { name: "overlap", url: fixture!.url("overlap") });
  const g = fixture!.gateway("overlap");
  const sid = "overlap-a";
  await caller.call(sid, gid, tool("echo", { text: "warm" }));
  const parallel: number[] = [];
  const maxInFlight: number[] = [];
  for (let i = 0; i < OVERLAP_REPS; i++) {
    g.stats.maxSleepsInFlight = 0;
    const [, t] = await timed(() => Promise.all(Array.from({ length: PARALLEL }, () => caller.call(sid, gid, tool("sleep", { ms: SLEEP_MS })).then(text))));
    parallel.push(t);
    maxInFlight.push(g.stats.maxSleepsInFlight);
  }
  const serial: number[] = [];
  for (let i = 0; i < SERIAL_REPS; i++) {
    const [, t] = await timed(async () => {
      for (let j = 0; j < PARALLEL; j++) text(await caller.call(sid, gid, tool("sleep", { ms: SLEEP_MS })));
    });
    serial.push(t);
  }
  const p = stats(parallel);
  const serialP50 = stats(serial).p50;
  report(
    `Upstream session: ${PARALLEL} concurrent calls in one session`,
    `One in-process worker on a local nats-server, one fixture gateway (streamable HTTP, in this process), one warm upstream session. ` +
      `${OVERLAP_REPS} times ${PARALLEL} concurrent sleep(${SLEEP_MS} ms) calls, all from one downstream session; then ${SERIAL_REPS} times the same ${PARALLEL} calls one after another.`,
    [
      msRow(`${PARALLEL} concurrent calls, all answered`, parallel, SLEEP_MS, "one call's sleep"),
      msRow(`${PARALLEL} calls one after another`, serial, PARALLEL * SLEEP_MS, `${PARALLEL}× sleep`),
      ["concurrent / serial (p50)", `${ratio(p.p50 / serialP50)} (1.00 = no overlap, ${ratio(1 / PARALLEL)} = perfect)`],
      ["sleeps at the upstream at once (min over batches)", `${Math.min(...maxInFlight)} of ${PARALLEL}`],
    ],
  );
}

// ---- bounded close ----

async function closes() {
  const s = subjects("cbench");
  inProcess.push(await startTestWorker(nats!, { MCPGW_SUBJECT_PREFIX: "cbench", MCPGW_WORKER_ID: "c1", MCPGW_SHUTDOWN_TIMEOUT: `${CLOSE_SHUTDOWN_MS}ms` }));
  const caller = callerOn(s);
  const close = async (sid: string, gid: string) => {
    await nc!.request(s.upstream.op(sid, gid, "close"), encodeJson({}), { timeout: WAIT_MS });
  };
  const long = { ms: 300_000 };

  const frozen: number[] = [];
  const frozenCut: number[] = [];
  const gidF = await addGateway(s, { name: "frozen", url: fixture!.url("frozen") });
  const g = fixture!.gateway("frozen");
  for (let i = 0; i < CLOSE_REPS; i++) {
    const sid = `frozen-${i}`;
    await caller.call(sid, gidF, tool("echo", { text: "up" }));
    const inflight = g.stats.sleepsInFlight;
    const sleeping = caller.call(sid, gidF, tool("sleep", long, { timeoutMs: long.ms })).then(
      () => {
        throw new Error("the in-flight call was answered, not cut off");
      },
      () => performance.now(),
    );
    await until("the sleep to run", () => g.stats.sleepsInFlight > inflight, WAIT_MS);
    fixture!.setFrozen("frozen", true);
    const t0 = performance.now();
    await close(sid, gidF);
    frozen.push(performance.now() - t0);
    frozenCut.push((await sleeping) - t0);
    fixture!.setFrozen("frozen", false);
  }

  const stdio: number[] = [];
  const killed: number[] = [];
  const dir = mkdtempSync(join(tmpdir(), "mcpgw-bench-"));
  try {
    const callLog = join(dir, "calls.log");
    const gidS = await addGateway(s, {
      name: "stubborn",
      transport: "stdio",
      stdio: { command: process.execPath, args: [...STDIO_FIXTURE, "--ignore-sigterm", "--linger"], env: { FIXTURE_CALL_LOG: callLog } },
    });
    for (let i = 0; i < CLOSE_REPS; i++) {
      const sid = `stubborn-${i}`;
      const pid = Number(text(await caller.call(sid, gidS, tool("pid"))));
      const sleeping = caller.call(sid, gidS, tool("sleep", long, { timeoutMs: long.ms })).catch(() => {});
      await until("the sleep to run in the child", () => readFileSync(callLog, "utf8").includes(`${pid} sleep\n`), WAIT_MS);
      const t0 = performance.now();
      await close(sid, gidS);
      stdio.push(performance.now() - t0);
      await until("the child to be gone", () => !isRunning(pid), WAIT_MS);
      killed.push(performance.now() - t0);
      await sleeping;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  report(
    "Upstream session: bounded close",
    `One in-process worker, MCPGW_SHUTDOWN_TIMEOUT ${ms(CLOSE_SHUTDOWN_MS)} (a polite close gets that long, then the session is forced; the machine gives up at 2×). ` +
      `${CLOSE_REPS} closes each: an HTTP upstream frozen (answers nothing, the session's DELETE neither) with a ${ms(long.ms)} call in flight; ` +
      `a stdio child that ignores SIGTERM and stdin EOF with a ${ms(long.ms)} call in flight. Timed from the close request to its reply.`,
    [
      msRow("frozen HTTP upstream: close → reply", frozen, CLOSE_SHUTDOWN_MS, "shutdownTimeout"),
      msRow("frozen HTTP upstream: close → in-flight call cut off", frozenCut, CLOSE_SHUTDOWN_MS, "shutdownTimeout"),
      msRow("stubborn stdio child: close → reply", stdio, CLOSE_SHUTDOWN_MS, "shutdownTimeout"),
      msRow("stubborn stdio child: close → child gone", killed, CLOSE_SHUTDOWN_MS, "shutdownTimeout"),
    ],
  );
}

// ---- SIGKILL of the hosting worker process ----

async function sigkill() {
  const s = subjects("kbench");
  const caller = callerOn(s, 10_000);
  let next = 1;
  const workers = new Map<string, Proc>();
  const start = async () => {
    const id = `k${next++}`;
    workers.set(id, await startWorkerProcess("kbench", id));
  };
  await Promise.all([start(), start()]);
  await until("both workers to answer", async () => (await listSessions(s).catch(() => null))?.workers.length === 2, WAIT_MS);
  const gid = await addGateway(s, { name: "killme", url: fixture!.url("killme") });
  const warm: number[] = [];
  const gone: number[] = [];
  const answered: number[] = [];
  for (let i = 0; i < KILL_REPS; i++) {
    const sid = `kill-${i}`;
    text(await caller.call(sid, gid, tool("increment")));
    for (let j = 0; j < 3; j++) warm.push((await timed(() => caller.call(sid, gid, tool("get_count"))))[1]);
    const host = (await listSessions(s, { sid })).sessions[0]!.worker;
    const victim = workers.get(host)!;
    workers.delete(host);
    const t0 = performance.now();
    victim.child.kill("SIGKILL");
    // a request reaching the dead worker before nats-server has seen its socket close is lost (never retried)
    await until(
      "nats-server to drop the killed worker",
      () =>
        nc!.request(s.upstream.op(sid, gid, "status"), encodeJson({}), { timeout: 100 }).then(
          () => false,
          (err: unknown) => isNoResponders(err),
        ),
      WAIT_MS,
    );
    gone.push(performance.now() - t0);
    const reply = text(await caller.call(sid, gid, tool("increment")));
    answered.push(performance.now() - t0);
    if (reply !== "1") throw new Error(`expected a new upstream session, got count ${reply}`);
    await victim.exited;
    await start();
    await until("two workers again", async () => (await listSessions(s).catch(() => null))?.workers.length === 2, WAIT_MS);
  }
  for (const p of workers.values()) p.child.kill("SIGTERM");
  await Promise.all([...workers.values()].map((p) => p.exited));
  const w = stats(warm);
  report(
    "Upstream session: SIGKILL of the hosting worker process",
    `Two worker processes on a local nats-server, one fixture gateway (streamable HTTP, in this process). ${KILL_REPS} times: a session's ` +
      `upstream session is opened, the worker process hosting it is SIGKILLed, the caller waits until nats-server answers "no responders" ` +
      `for the dead actor's address (polling status every ≤100 ms), then calls again: the survivor opens a new upstream session and answers.`,
    [
      msRow("warm call on a live session (baseline)", warm),
      msRow("SIGKILL → dead actor's address gone", gone),
      msRow("SIGKILL → next call answered by the survivor", answered, w.p50, "warm call p50"),
    ],
  );
}

// ---- 1,000 sessions on one worker process: opening them, then SIGTERM ----

async function manySessions() {
  const s = subjects("tbench");
  const caller = callerOn(s);
  const rates: number[] = [];
  const opens: number[] = [];
  const exits: number[] = [];
  const upstreamEnded: number[] = [];
  const codes: Array<number | null> = [];
  for (let rep = 0; rep < TERM_REPS; rep++) {
    const proc = await startWorkerProcess("tbench", `t${rep}`, { MCPGW_SHUTDOWN_TIMEOUT: `${TERM_SHUTDOWN_MS}ms` });
    const name = `many-${rep}`;
    const gid = await addGateway(s, { name, url: fixture!.url(name) });
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: OPEN_CONCURRENCY }, async () => {
        while (next < SESSIONS) {
          const sid = `many-${rep}-${next++}`;
          const [, t] = await timed(() => caller.call(sid, gid, tool("echo", { text: "x" })));
          opens.push(t);
        }
      }),
    );
    rates.push(SESSIONS / ((performance.now() - t0) / 1000));
    const live = (await listSessions(s)).sessions.length;
    if (live !== SESSIONS) throw new Error(`expected ${SESSIONS} live sessions, found ${live}`);
    const g = fixture!.gateway(name);
    const stop0 = performance.now();
    let endedAt: number | null = null;
    const watch = setInterval(() => {
      if (endedAt === null && g.sessions.size === 0) endedAt = performance.now();
    }, 5);
    proc.child.kill("SIGTERM");
    const { code } = await proc.exited;
    exits.push(performance.now() - stop0);
    codes.push(code);
    await until("the upstream sessions to be ended", () => g.sessions.size === 0, WAIT_MS);
    clearInterval(watch);
    upstreamEnded.push((endedAt ?? performance.now()) - stop0);
  }
  const r = stats(rates);
  report(
    `Upstream session: ${SESSIONS.toLocaleString("en")} sessions on one worker process`,
    `One worker process on a local nats-server, one fixture gateway (streamable HTTP, in this process, which also runs the callers). ` +
      `${TERM_REPS} times: ${SESSIONS} downstream sessions each open an upstream session with one call (${OPEN_CONCURRENCY} at a time), ` +
      `then the worker gets SIGTERM with all of them live (MCPGW_SHUTDOWN_TIMEOUT ${ms(TERM_SHUTDOWN_MS)}; main.ts exits 1 at 2× that).`,
    [
      ["sessions opened per second", `p50 ${Math.round(r.p50)}, min ${Math.round(r.min)}, max ${Math.round(r.max)} (n=${r.n})`],
      msRow("first call of a session (spawn, claim, connect, initialize, call)", opens),
      msRow("SIGTERM → process exit", exits, TERM_SHUTDOWN_MS, "shutdownTimeout"),
      msRow("SIGTERM → every upstream session ended at the upstream", upstreamEnded, TERM_SHUTDOWN_MS, "shutdownTimeout"),
      ["exit codes", codes.join(", ")],
    ],
  );
}

try {
  nats = await startNats();
  fixture = await startFixtureHttp();
  nc = await nats.connect("runtime");
  await overlap();
  await closes();
  await sigkill();
  await manySessions();
} finally {
  for (const w of inProcess) await w.stop().catch(() => {});
  for (const p of procs) p.child.kill("SIGKILL");
  await Promise.all([...procs].map((p) => p.exited));
  await fixture?.close();
  await nats?.stop();
}
process.exit(0);

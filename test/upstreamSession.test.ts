// Upstream session actors against a real nats-server and real MCP servers (HTTP, SSE, stdio,
// server-everything), with in-process workers. Worker processes (SIGKILL, SIGTERM): upstreamSession.process.load.test.ts.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { AnyEnvelopeSchema } from "../protocol/envelope.ts";
import { ProtocolError } from "../protocol/envelope.ts";
import { KEYS, subjects, type Subjects } from "../protocol/subjects.ts";
import { SessionEvictReplySchema, SessionListReplySchema, type UpstreamCallReply } from "../protocol/upstream.ts";
import { UsageReportSchema } from "../protocol/usage.ts";
import { decodeJson, encodeJson, request } from "../runtime/bus.ts";
import { publishEvent } from "../runtime/events.ts";
import { createUpstreamCaller, type UpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { isRunning } from "./helpers/processes.ts";
import { until } from "./helpers/wait.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const SHUTDOWN_MS = 500;
/** a call's hang bound (no test here waits it out): it includes spawning a stdio upstream through tsx, over 17 s at load 50 */
const CALL_MS = 60_000;
const WORKER_ENV = { MCPGW_SHUTDOWN_TIMEOUT: `${SHUTDOWN_MS}ms`, MCPGW_CALL_TIMEOUT: `${CALL_MS}ms`, MCPGW_USAGE_REPORT_INTERVAL: "200ms" };
const STDIO_FIXTURE = ["--import", "tsx", "test/fixtures/stdioFixture.ts"];
const EVERYTHING = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js");

let nats: TestNats;
let fixture: FixtureHttp;
let w1: TestWorker;
let w2: TestWorker;
let nc: NatsConnection;
let caller: UpstreamCaller;
let seq = 0;

/** hang bound of an admin request (answered in milliseconds; a fan-out waits at most 3 s for workers) */
const REQUEST_MS = 20_000;
const sid = (label: string) => `${label}-${++seq}`;
const SESSION_HEADER = "x-test-session";

/** upstream sessions a downstream session opened (pollers open their own, without the header) */
function initializes(gateway: string): number {
  return fixture.gateway(gateway).opened.filter((h) => typeof h[SESSION_HEADER] === "string").length;
}
const rid = () => `r${++seq}`;

async function addGateway(spec: Record<string, unknown>, on: Subjects = s, conn = () => nc): Promise<string> {
  const body = { transport: "streamable-http", passthroughHeaders: [SESSION_HEADER], ...spec };
  const view = await request(conn(), on.admin.gateway("add"), body, z.object({ id: z.string() }), REQUEST_MS);
  return view.id;
}

async function updateGateway(id: string, patch: Record<string, unknown>): Promise<void> {
  await request(nc, s.admin.gateway("update"), { id, patch }, z.unknown(), REQUEST_MS);
}

function text(reply: UpstreamCallReply): string {
  assert.ok("result" in reply, `expected a result, got ${JSON.stringify(reply)}`);
  const content = reply.result.content as Array<{ type: string; text: string }>;
  return content[0]!.text;
}

/** a tools/call from downstream session `session` */
const tool = (session: string, name: string, args: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  method: "tools/call" as const,
  params: { name, arguments: args },
  requestId: rid(),
  headers: { [SESSION_HEADER]: session },
  ...extra,
});
const rpc = (session: string, method: string, params?: Record<string, unknown>) =>
  ({ method, params, requestId: rid(), headers: { [SESSION_HEADER]: session } }) as Parameters<UpstreamCaller["call"]>[2];

async function listSessions(filter: { sid?: string; gid?: string } = {}) {
  return request(nc, s.admin.sessionList, filter, SessionListReplySchema, REQUEST_MS);
}

/** `until` with this file's hang bound: 20 s for what takes well under a second on a working machine */
const waitFor = (what: string, check: () => Promise<boolean> | boolean, ms = 20_000) => until(what, check, ms);

before(async () => {
  nats = await startNats();
  fixture = await startFixtureHttp();
  w1 = await startTestWorker(nats, { ...WORKER_ENV, MCPGW_WORKER_ID: "w1" });
  w2 = await startTestWorker(nats, { ...WORKER_ENV, MCPGW_WORKER_ID: "w2" });
  nc = await nats.connect("runtime");
  caller = createUpstreamCaller(nc, s, { callTimeoutMs: CALL_MS, log: memoryLogger().log });
});

after(async () => {
  await w1?.stop();
  await w2?.stop();
  await fixture?.close();
  await nats?.stop();
});

describe("upstream sessions: isolation, reuse, concurrency", () => {
  it("isolates downstream sessions: A counts 5, B counts 3, exactly two initializes", async () => {
    const gid = await addGateway({ name: "iso", url: fixture.url("iso") });
    const a = sid("A");
    const b = sid("B");
    for (let i = 0; i < 5; i++) await caller.call(a, gid, tool(a, "increment"));
    for (let i = 0; i < 3; i++) await caller.call(b, gid, tool(b, "increment"));
    assert.equal(text(await caller.call(a, gid, tool(a, "get_count"))), "5");
    assert.equal(text(await caller.call(b, gid, tool(b, "get_count"))), "3");
    assert.equal(initializes("iso"), 2);
  });

  it("reuses one upstream session: 10 calls → 1 initialize", async () => {
    const gid = await addGateway({ name: "reuse", url: fixture.url("reuse") });
    const a = sid("A");
    for (let i = 0; i < 10; i++) assert.equal(text(await caller.call(a, gid, tool(a, "echo", { text: `n${i}` }))), `n${i}`);
    assert.equal(initializes("reuse"), 1);
    assert.equal(fixture.gateway("reuse").stats.calls.echo, 10);
  });

  it("overlaps calls in one session: 10 sleeps run at the upstream at once", async () => {
    const gid = await addGateway({ name: "parallel", url: fixture.url("parallel") });
    const g = fixture.gateway("parallel");
    const a = sid("A");
    await caller.call(a, gid, rpc(a, "ping"));
    // Each sleep lasts far longer than the wait below may: all 10 can only be running at the
    // upstream at once if the session sends a call without waiting for the ones before it.
    // (How long overlapping calls take is measured in bench/upstreamSession.bench.ts.)
    const aborts = Array.from({ length: 10 }, () => new AbortController());
    const calls = aborts.map((ac) => caller.call(a, gid, tool(a, "sleep", { ms: 300_000 }, { timeoutMs: 300_000 }), ac.signal).catch((e: unknown) => e));
    await waitFor("10 sleeps running at the upstream at once", () => g.stats.sleepsInFlight === 10, 30_000);
    assert.equal(g.stats.maxSleepsInFlight, 10);
    for (const ac of aborts) ac.abort();
    for (const r of await Promise.all(calls)) assert.equal((r as Error).name, "AbortError");
    await waitFor("the upstream to see the 10 cancellations", () => g.stats.cancelled === 10 && g.stats.sleepsInFlight === 0);
    assert.equal(text(await caller.call(a, gid, tool(a, "echo", { text: "after" }))), "after");
    assert.equal(initializes("parallel"), 1);
  });

  it("concurrent first calls for one key end with one actor and one initialize", async () => {
    const gid = await addGateway({ name: "race", url: fixture.url("race") });
    const a = sid("A");
    const replies = await Promise.all(Array.from({ length: 12 }, (_, i) => caller.call(a, gid, tool(a, "echo", { text: `c${i}` }))));
    assert.deepEqual(replies.map(text), Array.from({ length: 12 }, (_, i) => `c${i}`));
    assert.equal(initializes("race"), 1);
    const list = await listSessions({ sid: a });
    assert.equal(list.sessions.length, 1);
    assert.deepEqual(list.workers, ["w1", "w2"]);
    const claim = await w1.stores.sessions.get(KEYS.upstreamClaim(a, gid));
    assert.equal(JSON.parse(new TextDecoder().decode(claim!.value)).worker, list.sessions[0]!.worker);
  });
});

describe("upstream sessions: operations", () => {
  it("forwards every MCP operation; JSON-RPC errors come back unchanged; only allowed headers pass", async () => {
    const gid = await addGateway({
      name: "ops",
      url: fixture.url("ops"),
      headers: { "x-static": "yes" },
      auth: { type: "bearer", token: "upstream-secret" },
      passthroughHeaders: [SESSION_HEADER, "X-Tenant"],
    });
    const a = sid("A");
    const call = async (method: string, params?: Record<string, unknown>) => {
      const r = await caller.call(a, gid, rpc(a, method, params));
      assert.ok("result" in r, `${method}: ${JSON.stringify(r)}`);
      return r.result as any;
    };
    assert.ok((await call("tools/list")).tools.some((t: { name: string }) => t.name === "increment"));
    assert.deepEqual((await call("prompts/list")).prompts.map((p: { name: string }) => p.name), ["greet"]);
    assert.equal((await call("prompts/get", { name: "greet", arguments: { who: "Ada" } })).messages[0].content.text, "Hello, Ada!");
    assert.ok((await call("resources/list")).resources.some((r: { uri: string }) => r.uri === "fixture://info"));
    assert.equal((await call("resources/read", { uri: "fixture://info" })).contents[0].text, "fixture ops");
    assert.equal((await call("resources/templates/list")).resourceTemplates[0].uriTemplate, "fixture://items/{id}");
    const completion = await call("completion/complete", { ref: { type: "ref/resource", uri: "fixture://items/{id}" }, argument: { name: "id", value: "ap" } });
    assert.deepEqual(completion.completion.values, ["apple", "apricot"]);
    assert.deepEqual(await call("ping"), {});

    const missing = await caller.call(a, gid, rpc(a, "prompts/get", { name: "nope" }));
    assert.ok("rpcError" in missing);
    assert.equal(missing.rpcError.code, -32602);
    // exactly what the fixture's SDK server put on the wire (the client SDK's own prefix is removed)
    assert.equal(missing.rpcError.message, "MCP error -32602: Prompt nope not found");

    const headers = { [SESSION_HEADER]: a, "X-Tenant": "t1", Authorization: "Bearer client-token", Cookie: "c=1", "x-other": "no" };
    const seen = JSON.parse(text(await caller.call(a, gid, { ...tool(a, "whoami"), headers })));
    assert.equal(seen["x-tenant"], "t1");
    assert.equal(seen["x-static"], "yes");
    assert.equal(seen.authorization, "Bearer upstream-secret");
    assert.equal(seen.cookie, undefined);
    assert.equal(seen["x-other"], undefined);
    assert.equal(initializes("ops"), 1);
  });

  it("carries progress with the downstream token, cancellation to the upstream, list_changed as an event", async () => {
    const gid = await addGateway({ name: "notes", url: fixture.url("notes") });
    const a = sid("A");
    const notes: any[] = [];
    const sub = nc.subscribe(s.stream.ofStream(a, "post-1"), { callback: (_e, m) => void notes.push(decodeJson(m.data)) });
    const listChanged: any[] = [];
    const evSub = nc.subscribe(s.evt.gateway(gid, "list_changed"), { callback: (_e, m) => void listChanged.push(decodeJson(m.data)) });
    try {
      const req = tool(a, "progress", { steps: 3 });
      const done = await caller.call(a, gid, { ...req, stream: "post-1", params: { ...req.params, _meta: { progressToken: "tok-1" } } });
      assert.equal(text(done), "done 3");
      await waitFor("three progress notifications and the answer on the call's stream", () => notes.length >= 4);
      assert.deepEqual(
        notes.slice(0, 3).map((n) => [n.gid, n.message.method, n.message.params.progressToken, n.message.params.progress]),
        [1, 2, 3].map((i) => [gid, "notifications/progress", "tok-1", i]),
      );
      assert.deepEqual([notes[3].requestId, notes[3].reply], [req.requestId, { ok: true, data: done }]);

      const ac = new AbortController();
      const sleeping = caller.call(a, gid, tool(a, "sleep", { ms: 10_000 }), ac.signal);
      await waitFor("the sleep to start", () => (fixture.gateway("notes").stats.calls.sleep ?? 0) === 1);
      ac.abort();
      await assert.rejects(sleeping, { name: "AbortError" });
      await waitFor("the upstream to see the cancellation", () => fixture.gateway("notes").stats.cancelled === 1);
      assert.equal(text(await caller.call(a, gid, tool(a, "echo", { text: "still here" }))), "still here");

      fixture.gateway("notes").toolbox.add("fresh");
      await waitFor("a list_changed event", () => listChanged.length > 0);
      assert.deepEqual([listChanged[0].type, listChanged[0].gid, listChanged[0].lists], ["list_changed", gid, ["tools"]]);
      assert.equal(initializes("notes"), 1);
    } finally {
      sub.unsubscribe();
      evSub.unsubscribe();
    }
  });

  it("a list change right after another is still published (coalesced, not dropped)", async () => {
    const gid = await addGateway({ name: "notes2", url: fixture.url("notes2") });
    const a = sid("A");
    await caller.call(a, gid, rpc(a, "ping"));
    const events: any[] = [];
    const evSub = nc.subscribe(s.evt.gateway(gid, "list_changed"), { callback: (_e, m) => void events.push(decodeJson(m.data)) });
    try {
      fixture.gateway("notes2").toolbox.add("first");
      await waitFor("the first list_changed event", () => events.length === 1);
      fixture.gateway("notes2").toolbox.add("second");
      fixture.gateway("notes2").toolbox.add("third");
      await waitFor("one more event for the changes that followed", () => events.length === 2);
      assert.deepEqual(events[1].lists, ["tools"]);
    } finally {
      evSub.unsubscribe();
    }
  });

  it("reports usage per gateway (batched, core NATS)", async () => {
    const gid = await addGateway({ name: "usage", url: fixture.url("usage") });
    const reports: any[] = [];
    const sub = nc.subscribe(s.evt.usage, { callback: (_e, m) => void reports.push(UsageReportSchema.parse(decodeJson(m.data))) });
    try {
      const a = sid("A");
      for (let i = 0; i < 3; i++) await caller.call(a, gid, tool(a, "echo", { text: "u" }));
      await waitFor("usage with 3 uses and a live session", () => {
        const mine = reports.flatMap((r) => r.gateways.filter((g: any) => g.gid === gid));
        return mine.reduce((n: number, g: any) => n + g.uses, 0) === 3 && mine.some((g: any) => g.liveSessions === 1 && g.lastUsedAt !== null);
      });
    } finally {
      sub.unsubscribe();
    }
  });
});

describe("upstream sessions: failures and eviction", () => {
  it("a tool error keeps the session; a transport error recreates it on the next call", async () => {
    const gid = await addGateway({ name: "flaky", url: fixture.url("flaky") });
    const a = sid("A");
    await caller.call(a, gid, tool(a, "increment"));
    await caller.call(a, gid, tool(a, "increment"));
    const failed = await caller.call(a, gid, tool(a, "fail"));
    assert.ok("result" in failed && failed.result.isError === true);
    assert.equal(text(await caller.call(a, gid, tool(a, "get_count"))), "2");
    assert.equal(initializes("flaky"), 1);

    fixture.setDown("flaky", true);
    await assert.rejects(caller.call(a, gid, tool(a, "get_count")), (err: unknown) => {
      assert.ok(err instanceof ProtocolError);
      assert.equal(err.code, "unavailable");
      assert.match(err.message, /flaky/);
      return true;
    });
    fixture.setDown("flaky", false);
    await waitFor("the broken session to go", async () => (await listSessions({ sid: a })).sessions.length === 0);
    assert.equal(text(await caller.call(a, gid, tool(a, "get_count"))), "0", "a new upstream session");
    assert.equal(initializes("flaky"), 2);
  });

  it("an unknown or disabled gateway is unavailable, naming it", async () => {
    await assert.rejects(caller.call(sid("A"), "0123456789abcdef", rpc("x", "ping")), (err: unknown) => {
      assert.ok(err instanceof ProtocolError && err.code === "unavailable" && err.message.includes("0123456789abcdef"));
      return true;
    });
    const gid = await addGateway({ name: "off", url: fixture.url("off"), enabled: false });
    await assert.rejects(caller.call(sid("A"), gid, rpc("x", "ping")), /off .*disabled/);
    await assert.rejects(caller.call("bad.sid", gid, rpc("x", "ping")));
  });

  it("a gateway that refuses connections: every first call fails with the connect error, naming the gateway", async () => {
    // A refused connect fails within milliseconds, often before the caller's call reaches the
    // fresh actor: the call must still get the reason, not wait out its timeout or run out of spawns.
    const gid = await addGateway({ name: "refuses", url: "http://127.0.0.1:1/mcp" });
    const slow = createUpstreamCaller(nc, s, { callTimeoutMs: 120_000, log: memoryLogger().log });
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, i) => slow.call(sid(`R${i}`), gid, rpc("x", "ping")).then(() => "answered", (err: unknown) => err)),
    );
    for (const err of outcomes) {
      assert.ok(err instanceof ProtocolError, String(err));
      assert.equal(err.code, "unavailable", err.message);
      assert.match(err.message, /refuses \(.*cannot connect/);
    }
  });

  it("URL change → the next call reaches the new URL; a description edit keeps the session", async () => {
    const gid = await addGateway({ name: "mover", url: fixture.url("m1") });
    const a = sid("A");
    assert.equal(text(await caller.call(a, gid, tool(a, "increment"))), "1");
    await updateGateway(gid, { description: "cosmetic", tags: ["x"] });
    assert.equal(text(await caller.call(a, gid, tool(a, "increment"))), "2", "same upstream session");
    const evictions = () => [...w1.lines, ...w2.lines].filter((l) => l.includes('"evicting upstream sessions"') && l.includes("gateway connection changed (url)")).length;
    const before = evictions();
    await updateGateway(gid, { url: fixture.url("m2") });
    await waitFor("the session to be evicted", async () => (await listSessions({ gid })).sessions.length === 0);
    // Every worker handles gateway events in order: the URL change found the session still
    // there, so the description edit before it had left it alone (no sleep needed to know).
    assert.equal(evictions(), before + 1, "evicted by the URL change, not before");
    assert.equal(text(await caller.call(a, gid, tool(a, "increment"))), "1");
    assert.equal(initializes("m1"), 1);
    assert.equal(initializes("m2"), 1);
  });

  /** Opens sessions until both workers host at least one. */
  async function sessionsOnBothWorkers(gid: string): Promise<string[]> {
    const sids: string[] = [];
    for (let i = 0; i < 40; i++) {
      const x = sid("S");
      sids.push(x);
      await caller.call(x, gid, tool(x, "echo", { text: "hi" }));
      if (new Set((await listSessions({ gid })).sessions.map((i) => i.worker)).size === 2) return sids;
    }
    assert.fail("sessions never spread over both workers");
  }

  it("gateway removed → its actors are gone on every worker and their claims deleted", async () => {
    const gid = await addGateway({ name: "gone", url: fixture.url("gone") });
    const sids = await sessionsOnBothWorkers(gid);
    await request(nc, s.admin.gateway("remove"), { id: gid }, z.unknown(), REQUEST_MS);
    await waitFor("every actor of the gateway to go", async () => (await listSessions({ gid })).sessions.length === 0);
    for (const x of sids) {
      await waitFor("the claim to be deleted", async () => (await w1.stores.sessions.get(KEYS.upstreamClaim(x, gid)))?.operation !== "PUT");
    }
    await assert.rejects(caller.call(sids[0]!, gid, rpc(sids[0]!, "ping")), /not registered/);
  });

  it("downstream session end → its actors are gone; other sessions stay", async () => {
    const gid = await addGateway({ name: "ending", url: fixture.url("ending") });
    const a = sid("A");
    const b = sid("B");
    await caller.call(a, gid, tool(a, "echo", { text: "a" }));
    await caller.call(b, gid, tool(b, "echo", { text: "b" }));
    await publishEvent(w1.stores.js, s.evt.sessionClosed(a), { sid: a, at: new Date().toISOString(), reason: "client closed" });
    await waitFor("A's actor to go", async () => (await listSessions({ sid: a })).sessions.length === 0);
    assert.equal((await listSessions({ sid: b })).sessions.length, 1);
  });

  it("operators evict by session, by gateway, and drain — on every worker", async () => {
    const gid = await addGateway({ name: "evictme", url: fixture.url("evictme") });
    const sids = await sessionsOnBothWorkers(gid);
    const bySid = await request(nc, s.admin.sessionEvict, { sid: sids[0] }, SessionEvictReplySchema, REQUEST_MS);
    assert.deepEqual(bySid, { evicted: 1, workers: ["w1", "w2"] });
    const byGid = await request(nc, s.admin.sessionEvict, { gid }, SessionEvictReplySchema, REQUEST_MS);
    assert.equal(byGid.evicted, sids.length - 1);
    await waitFor("evicted sessions to go", async () => (await listSessions({ gid })).sessions.length === 0);
    await assert.rejects(request(nc, s.admin.sessionEvict, {}, SessionEvictReplySchema, REQUEST_MS), (err: unknown) => {
      assert.ok(err instanceof ProtocolError && err.code === "invalid_request" && err.issues?.[0]?.path === "sid");
      return true;
    });

    const again = await sessionsOnBothWorkers(gid);
    const drained = await request(nc, s.admin.drain, { reason: "new CA" }, SessionEvictReplySchema, REQUEST_MS);
    assert.ok(drained.evicted >= again.length);
    await waitFor("a drained cluster", async () => (await listSessions()).sessions.length === 0);
    assert.equal(text(await caller.call(again[0]!, gid, tool(again[0]!, "get_count"))), "0", "usable again after a drain");
  });
});

describe("upstream sessions: idle validation against a real upstream", () => {
  let iw: TestWorker;
  const is = subjects("itest");
  let icaller: UpstreamCaller;

  before(async () => {
    iw = await startTestWorker(nats, { ...WORKER_ENV, MCPGW_SUBJECT_PREFIX: "itest", MCPGW_WORKER_ID: "i1", MCPGW_IDLE_VALIDATION: "300ms", MCPGW_PROBE_TIMEOUT: "500ms" });
    icaller = createUpstreamCaller(nc, is, { callTimeoutMs: CALL_MS, log: memoryLogger().log });
  });
  after(async () => {
    await iw?.stop();
  });

  it("a failed probe recreates the session and serves the waiting call, even with a call still running on the old one", async () => {
    const gid = await addGateway({ name: "reprobe", url: fixture.url("reprobe") }, is);
    const a = sid("A");
    assert.equal(text(await icaller.call(a, gid, tool(a, "increment"))), "1");
    const long = icaller.call(a, gid, tool(a, "sleep", { ms: 20_000 })).catch((e: unknown) => e);
    await waitFor("the long call to start", () => (fixture.gateway("reprobe").stats.calls.sleep ?? 0) === 1);
    await new Promise((r) => setTimeout(r, 500)); // longer than idleValidation: the next call probes first
    const g = fixture.gateway("reprobe");
    const seen = g.stats.headers.length;
    fixture.setFrozen("reprobe", true);
    const next = icaller.call(a, gid, tool(a, "get_count"));
    await waitFor("the probe to reach the upstream", () => g.stats.headers.length > seen);
    fixture.setFrozen("reprobe", false);
    // the probe times out (MCPGW_PROBE_TIMEOUT), the old connection is closed under the long call, a new one serves get_count
    assert.equal(text(await next), "0", "served by a new upstream session");
    assert.ok((await long) instanceof ProtocolError, "the call on the replaced connection fails");
    assert.equal(initializes("reprobe"), 2);
    assert.equal((await request(nc, is.admin.sessionList, { sid: a }, SessionListReplySchema, REQUEST_MS)).sessions.length, 1, "the new session stays");
  });
});

describe("upstream sessions: stdio and a third-party server", () => {
  it("stdio: one child process per session, isolated and reused, env secrets opened", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mcpgw-stdio-"));
    try {
      const initLog = join(dir, "init.log");
      const gid = await addGateway({
        name: "stdio",
        transport: "stdio",
        stdio: { command: process.execPath, args: STDIO_FIXTURE, env: { FIXTURE_INIT_LOG: initLog, FIXTURE_SECRET: "s3cr3t" } },
      });
      const a = sid("A");
      const b = sid("B");
      for (let i = 0; i < 3; i++) await caller.call(a, gid, tool(a, "increment"));
      await caller.call(b, gid, tool(b, "increment"));
      assert.equal(text(await caller.call(a, gid, tool(a, "get_count"))), "3");
      assert.equal(text(await caller.call(b, gid, tool(b, "get_count"))), "1");
      const pidA = text(await caller.call(a, gid, tool(a, "pid")));
      const pidB = text(await caller.call(b, gid, tool(b, "pid")));
      assert.notEqual(pidA, pidB);
      const lines = readFileSync(initLog, "utf8").trim().split("\n");
      assert.ok(lines.some((l) => l === `${pidA} s3cr3t`) && lines.some((l) => l === `${pidB} s3cr3t`));
      assert.equal(lines.filter((l) => l.startsWith(`${pidA} `)).length, 1, "A's child initialized once");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("@modelcontextprotocol/server-everything over stdio", async () => {
    const gid = await addGateway({ name: "everything", transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } });
    const a = sid("A");
    const tools = await caller.call(a, gid, rpc(a, "tools/list"));
    assert.ok("result" in tools && (tools.result.tools as Array<{ name: string }>).some((t) => t.name === "echo"));
    assert.match(text(await caller.call(a, gid, tool(a, "echo", { message: "hello everything" }))), /hello everything/);
    const prompts = await caller.call(a, gid, rpc(a, "prompts/list"));
    assert.ok("result" in prompts && Array.isArray(prompts.result.prompts));
  });
});

describe("upstream sessions: bounded close", () => {
  /** A call far longer than any bound here: it can only end early by being cut off. */
  const LONG = { ms: 300_000 };
  /** Closes the actor; the request's timeout only stops a hang (the close itself is bounded by 2× shutdownTimeout). */
  async function close(a: string, gid: string): Promise<void> {
    const m = await nc.request(s.upstream.op(a, gid, "close"), encodeJson({}), { timeout: 30_000 });
    assert.equal(AnyEnvelopeSchema.parse(decodeJson(m.data)).ok, true);
  }
  /**
   * The in-flight call was answered by the close: an `unavailable` error naming the gateway
   * (the session closed, or its connection was closed under the call), not its result and not
   * a timeout (the call's own timeout is 5 minutes).
   */
  function cutOff(result: unknown, gateway: string): void {
    assert.ok(result instanceof ProtocolError, `expected an error, got ${JSON.stringify(result)}`);
    assert.equal(result.code, "unavailable", result.message);
    assert.match(result.message, new RegExp(`gateway ${gateway} \\(`));
  }

  it("an HTTP upstream that stops answering: close returns, cutting off the calls in flight", async () => {
    const gid = await addGateway({ name: "frozen", url: fixture.url("frozen") });
    const g = fixture.gateway("frozen");
    const a = sid("A");
    await caller.call(a, gid, tool(a, "echo", { text: "up" }));
    const sleeping = caller.call(a, gid, tool(a, "sleep", LONG, { timeoutMs: LONG.ms })).catch((e: unknown) => e);
    await waitFor("the sleep to run at the upstream", () => g.stats.sleepsInFlight === 1);
    fixture.setFrozen("frozen", true); // from now on nothing is answered, the session's DELETE neither
    const seen = g.stats.headers.length;
    const stuck = caller.call(a, gid, tool(a, "echo", { text: "never" }, { timeoutMs: LONG.ms })).catch((e: unknown) => e);
    await waitFor("the second call to reach the frozen upstream", () => g.stats.headers.length > seen);
    await close(a, gid);
    cutOff(await sleeping, "frozen");
    cutOff(await stuck, "frozen");
    assert.equal((await listSessions({ sid: a })).sessions.length, 0);
    fixture.setFrozen("frozen", false);
  });

  it("a stdio child ignoring SIGTERM and stdin EOF: close returns, cutting off the call in flight, and the child is killed", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mcpgw-stubborn-"));
    try {
      const callLog = join(dir, "calls.log");
      const gid = await addGateway({
        name: "stubborn",
        transport: "stdio",
        stdio: { command: process.execPath, args: [...STDIO_FIXTURE, "--ignore-sigterm", "--linger"], env: { FIXTURE_CALL_LOG: callLog } },
      });
      const a = sid("A");
      const pid = Number(text(await caller.call(a, gid, tool(a, "pid"))));
      const sleeping = caller.call(a, gid, tool(a, "sleep", LONG, { timeoutMs: LONG.ms })).catch((e: unknown) => e);
      await waitFor("the sleep to run in the child", () => readFileSync(callLog, "utf8").includes(`${pid} sleep\n`));
      await close(a, gid);
      cutOff(await sleeping, "stubborn");
      await waitFor("the child to be gone", () => !isRunning(pid));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Upstream session actors against a real nats-server and real MCP servers (HTTP, SSE, stdio,
// server-everything), with in-process workers and, for SIGKILL/SIGTERM, worker processes.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
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
import { memoryLogger, startTestWorker, TEST_SECRET_KEY, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const SHUTDOWN_MS = 500;
const WORKER_ENV = { MCPGW_SHUTDOWN_TIMEOUT: `${SHUTDOWN_MS}ms`, MCPGW_CALL_TIMEOUT: "10s", MCPGW_USAGE_REPORT_INTERVAL: "200ms" };
const STDIO_FIXTURE = ["--import", "tsx", "test/fixtures/stdioFixture.ts"];
const EVERYTHING = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js");

let nats: TestNats;
let fixture: FixtureHttp;
let w1: TestWorker;
let w2: TestWorker;
let nc: NatsConnection;
let caller: UpstreamCaller;
let seq = 0;

const sid = (label: string) => `${label}-${++seq}`;
const SESSION_HEADER = "x-test-session";

/** upstream sessions a downstream session opened (pollers open their own, without the header) */
function initializes(gateway: string): number {
  return fixture.gateway(gateway).opened.filter((h) => typeof h[SESSION_HEADER] === "string").length;
}
const rid = () => `r${++seq}`;

async function addGateway(spec: Record<string, unknown>, on: Subjects = s, conn = () => nc): Promise<string> {
  const body = { transport: "streamable-http", passthroughHeaders: [SESSION_HEADER], ...spec };
  const view = await request(conn(), on.admin.gateway("add"), body, z.object({ id: z.string() }), 5000);
  return view.id;
}

async function updateGateway(id: string, patch: Record<string, unknown>): Promise<void> {
  await request(nc, s.admin.gateway("update"), { id, patch }, z.unknown(), 5000);
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
  return request(nc, s.admin.sessionList, filter, SessionListReplySchema, 5000);
}

async function waitFor(what: string, check: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

before(async () => {
  nats = await startNats();
  fixture = await startFixtureHttp();
  w1 = await startTestWorker(nats, { ...WORKER_ENV, MCPGW_WORKER_ID: "w1" });
  w2 = await startTestWorker(nats, { ...WORKER_ENV, MCPGW_WORKER_ID: "w2" });
  nc = await nats.connect("runtime");
  caller = createUpstreamCaller(nc, s, { callTimeoutMs: 10_000, log: memoryLogger().log });
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

  it("overlaps calls in one session: 10 × sleep(200) finish well under 2 s", async () => {
    const gid = await addGateway({ name: "parallel", url: fixture.url("parallel") });
    const a = sid("A");
    await caller.call(a, gid, rpc(a, "ping"));
    const t0 = performance.now();
    const replies = await Promise.all(Array.from({ length: 10 }, () => caller.call(a, gid, tool(a, "sleep", { ms: 200 }))));
    const elapsed = performance.now() - t0;
    console.log(`# measured: 10 parallel sleep(200) calls through one upstream session took ${elapsed.toFixed(0)} ms`);
    assert.ok(replies.every((r) => text(r) === "slept 200"));
    assert.ok(elapsed < 2000, `took ${elapsed} ms`);
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

// What an upstream says to its client, through the upstream session actor, against a real
// nats-server and real MCP servers (the fixture over streamable HTTP and stdio,
// server-everything): a subscriber on `stream.<sid>.*` plays the client, answering the
// upstream's requests on the actor's `answer` op.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { after, before, describe, it } from "node:test";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { z } from "zod";
import { AnyEnvelopeSchema } from "../protocol/envelope.ts";
import type { DownstreamSession } from "../protocol/edge.ts";
import { KEYS, STREAM_GET, subjects } from "../protocol/subjects.ts";
import { parseServerRequestId, StreamEventSchema, type StreamEvent, type UpstreamAnswerRequest, type UpstreamCallReply } from "../protocol/upstream.ts";
import { decodeJson, encodeJson, request } from "../runtime/bus.ts";
import { createUpstreamCaller, type UpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { freePort, keepUntilExit, startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";
import { spawn } from "node:child_process";

const s = subjects();
const STDIO_FIXTURE = ["--import", "tsx", "test/fixtures/stdioFixture.ts"];
const EVERYTHING = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js");
const CLIENT_CAPS = { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } };
const REQUEST_MS = 20_000;
/** a call's hang bound: it includes spawning a stdio upstream through tsx, which took over 17 s at load 50 */
const CALL_MS = 60_000;

let nats: TestNats;
let fixture: FixtureHttp;
let w: TestWorker;
let nc: NatsConnection;
let caller: UpstreamCaller;
let seq = 0;
const rid = () => `r${++seq}`;
const waitFor = (what: string, check: () => Promise<boolean> | boolean, ms = 20_000) => until(what, check, ms);

before(async () => {
  nats = await startNats();
  fixture = await startFixtureHttp();
  w = await startTestWorker(nats, { MCPGW_WORKER_ID: "relay1", MCPGW_CALL_TIMEOUT: `${CALL_MS}ms`, MCPGW_SHUTDOWN_TIMEOUT: "500ms" });
  nc = await nats.connect("runtime");
  caller = createUpstreamCaller(nc, s, { callTimeoutMs: CALL_MS, log: memoryLogger().log });
});

after(async () => {
  await w?.stop();
  await fixture?.close();
  await nats?.stop();
});

async function addGateway(spec: Record<string, unknown>, on = s): Promise<string> {
  return (await request(nc, on.admin.gateway("add"), { transport: "streamable-http", ...spec }, z.object({ id: z.string() }), REQUEST_MS)).id;
}

/** A client session record (what the edge writes at initialize): the actor reads the client's capabilities, level and subscriptions from it. */
async function clientSession(extra: Partial<DownstreamSession> = {}, capabilities: Record<string, unknown> = CLIENT_CAPS, worker = w): Promise<string> {
  const sid = randomBytes(16).toString("hex");
  const now = new Date().toISOString();
  const record: DownstreamSession = {
    sid,
    owner: "0".repeat(64),
    gid: null,
    protocolVersion: "2025-11-25",
    clientInfo: { name: "test-client", version: "1" },
    capabilities,
    createdAt: now,
    lastSeenAt: now,
    ...extra,
  };
  await worker.stores.sessions.create(KEYS.downstreamSession(sid), JSON.stringify(record));
  return sid;
}

type Seen = { streamId: string; event: StreamEvent };

/** Plays the client: every event of the session's streams, in arrival order; answers requests with `answer` (none: never answers). */
function playClient(sid: string, answer?: (m: { id?: string; method: string; params?: Record<string, unknown> }) => Omit<UpstreamAnswerRequest, "id"> | undefined, on = s) {
  const seen: Seen[] = [];
  const answers: unknown[] = [];
  const sub: Subscription = nc.subscribe(on.stream.session(sid), {
    callback: (_e, m) => {
      const event = StreamEventSchema.parse(decodeJson(m.data));
      seen.push({ streamId: on.parseStream(m.subject)!.streamId, event });
      if (!("message" in event) || event.message.id === undefined) return;
      const reply = answer?.(event.message);
      if (!reply) return;
      const target = parseServerRequestId(event.message.id)!.gid;
      void nc
        .request(on.upstream.op(sid, target, "answer"), encodeJson({ id: event.message.id, ...reply }), { timeout: REQUEST_MS })
        .then((r) => answers.push(AnyEnvelopeSchema.parse(decodeJson(r.data))));
    },
  });
  const messages = (streamId?: string) => seen.filter((x) => (!streamId || x.streamId === streamId) && "message" in x.event).map((x) => (x.event as Extract<StreamEvent, { message: unknown }>).message);
  return { seen, answers, messages, stop: () => sub.unsubscribe() };
}

function toolJson(reply: UpstreamCallReply): any {
  assert.ok("result" in reply, `expected a result, got ${JSON.stringify(reply)}`);
  return JSON.parse((reply.result.content as Array<{ text: string }>)[0]!.text);
}
const tool = (name: string, args: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => ({
  method: "tools/call" as const,
  params: { name, arguments: args },
  requestId: rid(),
  headers: {},
  ...extra,
});

describe("server → client requests", () => {
  it("sampling over streamable HTTP: the request reaches the call's stream with an id naming the actor; the answer reaches the upstream", async () => {
    const gid = await addGateway({ name: "sampler", url: fixture.url("sampler") });
    const sid = await clientSession();
    const answer = { role: "assistant", content: { type: "text", text: "sampled!" }, model: "test-model", stopReason: "endTurn" };
    const client = playClient(sid, () => ({ result: answer }));
    try {
      const reply = await caller.call(sid, gid, tool("sample", { prompt: "hi" }, { stream: "post-a" }));
      assert.deepEqual(toolJson(reply), { result: answer });
      const [req] = client.messages("post-a");
      assert.equal(req!.method, "sampling/createMessage");
      assert.deepEqual(req!.params!.messages, [{ role: "user", content: { type: "text", text: "hi" } }]);
      assert.equal(parseServerRequestId(req!.id)?.gid, gid, "the id routes to this gateway's actor");
      assert.deepEqual(client.answers, [{ ok: true, data: {} }]);
      assert.equal(client.messages(STREAM_GET).length, 0, "nothing on the GET stream");
      const relayed = (await w.ctx.metrics.relayedRequests.get()).values.find((v) => v.labels.gateway === "sampler");
      assert.deepEqual([relayed?.labels.method, relayed?.value], ["sampling/createMessage", 1]);
    } finally {
      client.stop();
    }
  });

  it("an error answer reaches the upstream unchanged (code, message, data)", async () => {
    const gid = await addGateway({ name: "elicitor", url: fixture.url("elicitor") });
    const sid = await clientSession();
    const error = { code: -32042, message: "the user declined to say", data: { why: ["busy"], n: 1 } };
    const client = playClient(sid, (m) => (m.method === "elicitation/create" ? { error } : undefined));
    try {
      assert.deepEqual(toolJson(await caller.call(sid, gid, tool("elicit", {}, { stream: "post-b" }))), { error });
      assert.equal(client.messages("post-b")[0]!.method, "elicitation/create");
    } finally {
      client.stop();
    }
  });

  it("roots/list over stdio goes to the stream of the only call in flight; a second answer to it is refused", async () => {
    const gid = await addGateway({ name: "rooted", transport: "stdio", stdio: { command: process.execPath, args: STDIO_FIXTURE } });
    const sid = await clientSession();
    const roots = { roots: [{ uri: "file:///work", name: "work" }] };
    const client = playClient(sid, () => ({ result: roots }));
    try {
      assert.deepEqual(toolJson(await caller.call(sid, gid, tool("roots", {}, { stream: "post-c" }))), { result: roots });
      const [req] = client.messages("post-c");
      assert.equal(req!.method, "roots/list");
      await waitFor("the client's answer acknowledged", () => client.answers.length === 1);
      const again = AnyEnvelopeSchema.parse(decodeJson((await nc.request(s.upstream.op(sid, gid, "answer"), encodeJson({ id: req!.id, result: roots }), { timeout: REQUEST_MS })).data));
      assert.equal(again.ok, false);
      assert.equal(!again.ok && again.error.code, "not_found");
    } finally {
      client.stop();
    }
  });

  it("attack: another client session answers a request it was never sent; the upstream still waits for its own client", async () => {
    const gid = await addGateway({ name: "targeted", url: fixture.url("targeted") });
    const victim = await clientSession();
    const attacker = await clientSession();
    await caller.call(attacker, gid, { method: "ping", requestId: rid(), headers: {} });
    const forged = { result: { role: "assistant", content: { type: "text", text: "forged" }, model: "evil" } };
    const genuine = { result: { role: "assistant", content: { type: "text", text: "genuine" }, model: "m" } };
    const refusals: unknown[] = [];
    const client = playClient(victim, (m) => {
      // the attacker's edge routes by its own session: the forged answer reaches the attacker's actor, never the victim's
      void nc
        .request(s.upstream.op(attacker, gid, "answer"), encodeJson({ id: m.id, ...forged }), { timeout: REQUEST_MS })
        .then((r) => refusals.push(AnyEnvelopeSchema.parse(decodeJson(r.data))));
      return undefined;
    });
    try {
      const calling = caller.call(victim, gid, tool("sample", { prompt: "who?" }, { stream: "post-g" }));
      await waitFor("the forged answer refused", () => refusals.length === 1);
      assert.equal((refusals[0] as { ok: boolean; error?: { code: string } }).error?.code, "not_found");
      const [req] = client.messages("post-g");
      await nc.request(s.upstream.op(victim, gid, "answer"), encodeJson({ id: req!.id, ...genuine }), { timeout: REQUEST_MS });
      assert.deepEqual(toolJson(await calling), genuine);
    } finally {
      client.stop();
    }
  });

  it("a request the client does not answer in time: the upstream gets an error, the client notifications/cancelled", async () => {
    const ts = subjects("relayto");
    // the wait for the client's answer (the call itself has 20 s); it also bounds the upstream
    // session's connect, which took more than 1 s at load 50
    const tw = await startTestWorker(nats, { MCPGW_SUBJECT_PREFIX: "relayto", MCPGW_WORKER_ID: "to1", MCPGW_CALL_TIMEOUT: "10s" });
    try {
      const gid = await addGateway({ name: "patient", url: fixture.url("patient") }, ts);
      const sid = await clientSession({}, CLIENT_CAPS, tw);
      const client = playClient(sid, undefined, ts);
      const tcaller = createUpstreamCaller(nc, ts, { callTimeoutMs: 20_000, log: memoryLogger().log });
      const reply = await tcaller.call(sid, gid, tool("sample", { prompt: "anyone?" }, { stream: "post-d", timeoutMs: 20_000 }));
      const { error } = toolJson(reply);
      assert.equal(error.code, -32001);
      const [req, cancelled] = client.messages("post-d");
      assert.equal(req!.method, "sampling/createMessage");
      assert.deepEqual([cancelled!.method, cancelled!.params!.requestId], ["notifications/cancelled", req!.id]);
      client.stop();
    } finally {
      await tw.stop();
    }
  });

  it("the upstream declares exactly the client's capabilities: server-everything over stdio lists and runs trigger-sampling-request", async () => {
    const gid = await addGateway({ name: "everything", transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } });
    const bare = await clientSession({}, {});
    const listed = async (sid: string) => {
      const r = await caller.call(sid, gid, { method: "tools/list", requestId: rid(), headers: {} });
      assert.ok("result" in r);
      return (r.result.tools as Array<{ name: string }>).map((t) => t.name);
    };
    assert.ok(!(await listed(bare)).includes("trigger-sampling-request"), "a client without sampling is offered no sampling tool");
    const sid = await clientSession();
    assert.ok((await listed(sid)).includes("trigger-sampling-request"));
    const client = playClient(sid, (m) => (m.method === "sampling/createMessage" ? { result: { role: "assistant", content: { type: "text", text: "from the client" }, model: "m" } } : undefined));
    try {
      const reply = await caller.call(sid, gid, tool("trigger-sampling-request", { prompt: "p", maxTokens: 5 }, { stream: "post-e" }));
      assert.ok("result" in reply);
      assert.match(JSON.stringify(reply.result), /from the client/);
      // server-everything also asks for the roots after its handshake: on a loaded machine that
      // request can still be on its way when the call starts, and reach the same stream before it
      assert.ok(client.messages("post-e").some((m) => m.method === "sampling/createMessage"), "the sampling request reached the call's stream");
    } finally {
      client.stop();
    }
  });

  it("server-everything over streamable HTTP: elicitation reaches the call's stream and the answer the upstream", async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [EVERYTHING, "streamableHttp"], { env: { ...process.env, PORT: String(port) }, stdio: "ignore" });
    keepUntilExit(child);
    try {
      const url = `http://127.0.0.1:${port}/mcp`;
      await waitFor("server-everything to listen", () => fetch(url, { method: "GET" }).then(() => true, () => false));
      const gid = await addGateway({ name: "everything-http", url });
      const sid = await clientSession();
      const client = playClient(sid, (m) => (m.method === "elicitation/create" ? { result: { action: "accept", content: { name: "Ada" } } } : undefined));
      try {
        const reply = await caller.call(sid, gid, tool("trigger-elicitation-request", {}, { stream: "post-f" }));
        assert.ok("result" in reply, JSON.stringify(reply));
        assert.match(JSON.stringify(reply.result), /Ada/);
        assert.equal(client.messages("post-f")[0]!.method, "elicitation/create");
      } finally {
        client.stop();
      }
    } finally {
      child.kill("SIGKILL");
    }
  });
});

describe("tasks", () => {
  it("a tools/call with a task param creates a task at the upstream; tasks/get, tasks/list and tasks/result reach it", async () => {
    const gid = await addGateway({ name: "tasker", transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } });
    const sid = await clientSession({}, {});
    const call = (method: "tasks/get" | "tasks/list" | "tasks/result", params?: Record<string, unknown>) => caller.call(sid, gid, { method, params, requestId: rid(), headers: {} });
    const created = await caller.call(sid, gid, { ...tool("simulate-research-query", { topic: "gateways" }), params: { name: "simulate-research-query", arguments: { topic: "gateways" }, task: { ttl: 60_000 } } });
    assert.ok("result" in created, JSON.stringify(created));
    const task = created.result.task as { taskId: string; status: string };
    assert.equal(typeof task.taskId, "string");
    const got = await call("tasks/get", { taskId: task.taskId });
    assert.ok("result" in got && got.result.taskId === task.taskId);
    const listed = await call("tasks/list");
    assert.ok("result" in listed && (listed.result.tasks as Array<{ taskId: string }>).some((t) => t.taskId === task.taskId));
    const result = await call("tasks/result", { taskId: task.taskId });
    assert.ok("result" in result, JSON.stringify(result));
    assert.match(JSON.stringify(result.result.content), /gateways/);
  });
});

describe("session-wide state and notifications", () => {
  const levelsSeen = (c: ReturnType<typeof playClient>) =>
    c.messages(STREAM_GET).filter((m) => m.method === "notifications/message").map((m) => m.params!.level);

  it("logging/setLevel on the session filters the upstream's log messages; a new actor applies the recorded level", async () => {
    const gid = await addGateway({ name: "logger", url: fixture.url("logger") });
    const sid = await clientSession();
    const client = playClient(sid);
    try {
      await caller.call(sid, gid, tool("log"));
      await waitFor("8 log messages", () => levelsSeen(client).length === 8);
      nc.publish(s.upstream.sessionWide(sid), encodeJson({ method: "logging/setLevel", params: { level: "error" } }));
      await nc.flush();
      // the level travels on its own subject: a call later may overtake it, so look until it applies
      const emergencies = () => levelsSeen(client).filter((l) => l === "emergency").length;
      await waitFor("the level to apply", async () => {
        const before = levelsSeen(client).length;
        const sent = emergencies();
        await caller.call(sid, gid, tool("log"));
        // its messages come on the upstream's GET stream, not with its answer: the emergency, the last and never filtered, says all are in
        await waitFor("the call's last log message", () => emergencies() === sent + 1);
        return levelsSeen(client).length - before === 4;
      });
      assert.deepEqual(levelsSeen(client).slice(-4), ["error", "critical", "alert", "emergency"]);
    } finally {
      client.stop();
    }
    const fresh = await clientSession({ logLevel: "critical" });
    const freshClient = playClient(fresh);
    try {
      await caller.call(fresh, gid, tool("log"));
      await waitFor("3 log messages", () => levelsSeen(freshClient).length === 3);
      assert.deepEqual(levelsSeen(freshClient), ["critical", "alert", "emergency"]);
    } finally {
      freshClient.stop();
    }
  });

  it("notifications/roots/list_changed on the session reaches the upstream", async () => {
    const gid = await addGateway({ name: "rooter", url: fixture.url("rooter") });
    const sid = await clientSession();
    await caller.call(sid, gid, { method: "ping", requestId: rid(), headers: {} });
    nc.publish(s.upstream.sessionWide(sid), encodeJson({ method: "notifications/roots/list_changed" }));
    await waitFor("the upstream to hear of it", () => fixture.gateway("rooter").stats.rootsListChanged === 1);
  });

  it("resources/subscribe passes through and resources/updated reaches the GET stream; a new actor re-subscribes the recorded URIs", async () => {
    const gid = await addGateway({ name: "subscriber", url: fixture.url("subscriber") });
    const sid = await clientSession();
    const client = playClient(sid);
    const updates = () => client.messages(STREAM_GET).filter((m) => m.method === "notifications/resources/updated");
    try {
      const sub = await caller.call(sid, gid, { method: "resources/subscribe", params: { uri: "fixture://info" }, requestId: rid(), headers: {} });
      assert.deepEqual(sub, { result: {} });
      await caller.call(sid, gid, tool("touch", { uri: "fixture://info" }));
      await waitFor("resources/updated", () => updates().length === 1);
      assert.deepEqual(updates()[0]!.params, { uri: "fixture://info" });
    } finally {
      client.stop();
    }
    const again = await clientSession({ subscriptions: { [gid]: ["fixture://info"] } });
    const againClient = playClient(again);
    try {
      const touched = await caller.call(again, gid, tool("touch", { uri: "fixture://info" }));
      assert.ok("result" in touched && JSON.stringify(touched.result).includes("notified"), "subscribed at connect");
      await waitFor("resources/updated", () => againClient.messages(STREAM_GET).some((m) => m.method === "notifications/resources/updated"));
    } finally {
      againClient.stop();
    }
  });

  it("an upstream list_changed reaches its client's GET stream and marks the list as the session's own view", async () => {
    const gid = await addGateway({ name: "changer", url: fixture.url("changer") });
    const sid = await clientSession();
    const client = playClient(sid);
    try {
      await caller.call(sid, gid, { method: "ping", requestId: rid(), headers: {} });
      await waitFor("the upstream's GET stream to open", () => fixture.gateway("changer").stats.openGetStreams > 0);
      fixture.gateway("changer").toolbox.add("newcomer");
      await waitFor("tools/list_changed on the GET stream", () => client.messages(STREAM_GET).some((m) => m.method === "notifications/tools/list_changed"));
      const views = async () => ((await w.stores.sessions.get(KEYS.downstreamSession(sid)))!.json() as DownstreamSession).views;
      await waitFor("the session's own view recorded", async () => JSON.stringify((await views())?.[gid]) === JSON.stringify(["tools"]));
      // until its upstream session closes: then the shared catalog serves the client again
      await nc.request(s.upstream.op(sid, gid, "close"), encodeJson({}), { timeout: REQUEST_MS });
      await waitFor("the view withdrawn", async () => (await views())?.[gid] === undefined);
    } finally {
      client.stop();
    }
  });
});

describe("progress order", () => {
  it("stdio: every progress notice reaches the call's stream in order, before its answer (50 runs)", async () => {
    const gid = await addGateway({ name: "progress-stdio", transport: "stdio", stdio: { command: process.execPath, args: STDIO_FIXTURE } });
    const sid = await clientSession();
    const client = playClient(sid);
    try {
      for (let run = 0; run < 50; run++) {
        const stream = `run-${run}`;
        const req = tool("progress", { steps: 4 }, { stream });
        const reply = await caller.call(sid, gid, { ...req, params: { ...req.params, _meta: { progressToken: run } } });
        assert.ok("result" in reply);
        await waitFor("the answer on the call's stream", () => client.seen.some((x) => x.streamId === stream && "reply" in x.event));
        const events = client.seen.filter((x) => x.streamId === stream).map((x) => ("reply" in x.event ? "reply" : x.event.message.params!.progress));
        assert.deepEqual(events, [1, 2, 3, 4, "reply"], `run ${run}`);
      }
    } finally {
      client.stop();
    }
  });
});

describe("shutdown drains", () => {
  it("a worker that stops lets its calls in flight finish before it closes their sessions", async () => {
    const ds = subjects("drain");
    const dw = await startTestWorker(nats, { MCPGW_SUBJECT_PREFIX: "drain", MCPGW_WORKER_ID: "d1", MCPGW_SHUTDOWN_TIMEOUT: "20s" });
    const gid = await addGateway({ name: "drained", url: fixture.url("drained") }, ds);
    const dcaller = createUpstreamCaller(nc, ds, { callTimeoutMs: 20_000, log: memoryLogger().log });
    const sid = await clientSession({}, {}, dw);
    await dcaller.call(sid, gid, { method: "ping", requestId: rid(), headers: {} });
    const g = fixture.gateway("drained");
    const sleeping = dcaller.call(sid, gid, tool("sleep", { ms: 1_500 }));
    await waitFor("the sleep to run at the upstream", () => g.stats.sleepsInFlight === 1);
    await dw.stop();
    const reply = await sleeping;
    assert.ok("result" in reply, JSON.stringify(reply));
    assert.deepEqual(reply.result.content, [{ type: "text", text: "slept 1500" }]);
    assert.equal(g.stats.cancelled, 0, "not cut off");
    assert.equal(g.sessions.size, 0, "then closed");
  });
});

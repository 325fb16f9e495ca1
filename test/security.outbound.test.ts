// Attacks 3 and 11 of the hardening issue, end to end (the chaos attacks scenario runs it): raw
// admin requests over a real nats-server to real workers, pollers and upstream sessions against
// real HTTP upstreams on loopback.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { getLive } from "../actors/kvStore.ts";
import { AnyEnvelopeSchema, ProtocolError, type Envelope } from "../protocol/envelope.ts";
import { GatewayStatusSchema, UPSTREAM_ERROR_MAX, MASK, type GatewayStatus } from "../protocol/gateway.ts";
import { buckets, eventStream, KEYS, subjects, type AdminGatewayOp } from "../protocol/subjects.ts";
import { decodeJson, encodeJson } from "../runtime/bus.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const POLL_ENV = { MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: "300ms", MCPGW_DISCOVERY_INTERVAL: "1s", MCPGW_POLL_TIMEOUT: "10s" };
/** hang bound: what a working system does in well under a second */
const WAIT_MS = 30_000;

let nats: TestNats;
let fixture: FixtureHttp;
let worker: TestWorker;
let admin: NatsConnection;

before(async () => {
  nats = await startNats();
  fixture = await startFixtureHttp();
  worker = await startTestWorker(nats, POLL_ENV);
  admin = await nats.connect("admin");
});

after(async () => {
  await worker?.stop();
  await fixture?.close();
  await nats?.stop();
});

/** An admin request; a string payload is sent as it is (raw JSON). */
async function request(op: AdminGatewayOp, payload: unknown): Promise<Envelope<any>> {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : encodeJson(payload);
  const msg = await admin.request(s.admin.gateway(op), body, { timeout: WAIT_MS });
  return AnyEnvelopeSchema.parse(decodeJson(msg.data)) as Envelope<any>;
}

/** Every write the gateways bucket and the event stream ever took: unchanged means nothing was stored or published. */
async function writeCounts(): Promise<{ gateways: number; events: number }> {
  const jsm = await jetstreamManager(admin);
  const [gw, ev] = await Promise.all([jsm.streams.info(`KV_${buckets().gateways}`), jsm.streams.info(eventStream().name)]);
  return { gateways: gw.state.last_seq, events: ev.state.last_seq };
}

function assertRefused(r: Envelope<any>, path: string, message: RegExp, what: string): void {
  assert.equal(r.ok, false, `${what} should be refused`);
  if (r.ok) return;
  assert.equal(r.error.code, "invalid_request", `${what}: ${r.error.message}`);
  assert.ok(
    r.error.issues?.some((i) => i.path === path && message.test(i.message)),
    `${what}: expected an issue at ${path} matching ${message}, got ${JSON.stringify(r.error.issues)}`,
  );
}

const status = async (gid: string): Promise<GatewayStatus | null> => {
  const e = await getLive(worker.stores.state, KEYS.gatewayStatus(gid));
  return e ? GatewayStatusSchema.parse(e.json()) : null;
};

describe("registration refuses addresses that are never contacted", () => {
  const DENIED_URLS = [
    "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://169.254.169.254./",
    "https://169.254.169.254:8443/mcp",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://0.0.0.0:8080/",
    "http://0/",
    "http://[::]/",
  ];

  it("refuses every spelling of a link-local or metadata address with invalid_request naming url, storing nothing", async () => {
    const before = await writeCounts();
    for (const url of DENIED_URLS) {
      assertRefused(await request("add", { name: "meta", transport: "streamable-http", url }), "url", /^address \S+ is not allowed/, url);
      assertRefused(await request("add", { name: "meta", transport: "sse", url }), "url", /is not allowed/, `sse ${url}`);
    }
    assert.deepEqual(await writeCounts(), before, "nothing stored, nothing published");
  });

  it("refuses them on update too, leaving the gateway as it was", async () => {
    const added = await request("add", { name: "upd", transport: "streamable-http", url: "https://upd.example.com/mcp", enabled: false });
    assert.ok(added.ok, JSON.stringify(added));
    const before = await writeCounts();
    for (const url of DENIED_URLS) assertRefused(await request("update", { name: "upd", patch: { url } }), "patch.url", /is not allowed/, url);
    assert.deepEqual(await writeCounts(), before, "nothing stored, nothing published");
    const got = await request("get", { name: "upd" });
    assert.ok(got.ok && got.data.url === "https://upd.example.com/mcp" && got.data.revision === added.data.revision);
  });

  it("accepts loopback, private and public addresses and names by default", async () => {
    const allowed = [
      "http://127.0.0.1:8080/mcp",
      "http://[::1]:8080/mcp",
      "http://localhost:8080/mcp",
      "http://10.0.0.5/mcp",
      "http://172.16.1.1/mcp",
      "http://192.168.1.10/mcp",
      "http://100.64.0.1/mcp",
      "http://[fd12:3456::1]/mcp",
      "https://weather.example.com/mcp",
      "http://8.8.8.8/mcp",
      "http://metadata.google.internal/", // a name: judged on what it resolves to, when connecting
    ];
    for (const [i, url] of allowed.entries()) {
      const r = await request("add", { name: `ok-${i}`, transport: "streamable-http", url, enabled: false });
      assert.ok(r.ok, `${url}: ${JSON.stringify(r)}`);
    }
  });
});

describe("reserved keys are refused, never dropped", () => {
  const base = '"name":"proto","transport":"streamable-http","url":"https://proto.example.com/mcp"';
  const cases: Array<[AdminGatewayOp, string, string]> = [
    ["add", `{${base},"headers":{"__proto__":"x","x-a":"b"}}`, "headers.__proto__"],
    ["add", `{${base},"headers":{"constructor":"x"}}`, "headers.constructor"],
    ["add", `{${base},"auth":{"type":"headers","headers":{"__proto__":{"x-api-key":"k"}}}}`, "auth.headers.__proto__"],
    ["add", `{${base},"auth":{"type":"query","params":{"__proto__":"secret-q","other":"v"}}}`, "auth.params.__proto__"],
    ["add", `{${base},"auth":{"type":"query","params":{"prototype":"secret-q"}}}`, "auth.params.prototype"],
    ["add", `{"name":"proto","transport":"stdio","stdio":{"command":"x","env":{"__proto__":"secret-e"}}}`, "stdio.env.__proto__"],
    ["add", `{${base},"tls":{"__proto__":{"key":"k"}}}`, "tls"],
    ["add", `{${base},"__proto__":{"enabled":false}}`, "(root)"],
    ["update", `{"name":"ok-0","patch":{"auth":{"type":"query","params":{"__proto__":"secret-q"}}}}`, "patch.auth.params.__proto__"],
    ["update", `{"name":"ok-0","patch":{"headers":{"__proto__":"x"}}}`, "patch.headers.__proto__"],
    ["update", `{"name":"ok-0","patch":{"__proto__":{"url":"http://169.254.169.254/"}}}`, "patch"],
  ];

  it("answers invalid_request naming the field, and stores nothing", async () => {
    await until("gateway ok-0 registered", async () => (await request("get", { name: "ok-0" })).ok, WAIT_MS);
    const before = await writeCounts();
    for (const [op, raw, path] of cases) {
      const r = await request(op, raw);
      assert.equal(r.ok, false, `${op} ${raw}`);
      if (r.ok) continue;
      assert.equal(r.error.code, "invalid_request", raw);
      assert.ok(r.error.issues?.some((i) => i.path === path), `${raw}: expected an issue at ${path}, got ${JSON.stringify(r.error.issues)}`);
    }
    assert.deepEqual(await writeCounts(), before, "nothing stored, nothing published");
    assert.equal((await request("get", { name: "proto" })).ok, false);
  });
});

describe("connection-time guard", () => {
  it("a worker denying loopback refuses 127.0.0.1 at connect, for polls and for calls, and never contacts it", async () => {
    const strict = await startTestWorker(nats, { ...POLL_ENV, MCPGW_OUTBOUND_DENY: "loopback", MCPGW_WORKER_ID: "strict" });
    try {
      await worker.stop(); // only the strict worker polls and serves now
      const r = await request("add", { name: "loop", transport: "streamable-http", url: fixture.url("loop") });
      assert.ok(r.ok, JSON.stringify(r));
      const st = await until("the refusal in the status", async () => {
        const v = await status(r.data.id);
        return v?.lastError ? v : null;
      }, WAIT_MS);
      assert.equal(st.lastError, "address 127.0.0.1 is not allowed (loopback)");
      assert.equal(st.health === "healthy", false);

      const caller = createUpstreamCaller(strict.nc, s, { callTimeoutMs: 10_000, log: memoryLogger().log });
      await assert.rejects(caller.call("client-1", r.data.id, { method: "ping", requestId: "r1", headers: {} }), (err: unknown) => {
        assert.ok(err instanceof ProtocolError, String(err));
        assert.equal(err.code, "unavailable");
        assert.match(err.message, /address 127\.0\.0\.1 is not allowed \(loopback\)/);
        return true;
      });
      assert.equal(fixture.gateway("loop").stats.headers.length, 0, "the upstream was never contacted");
    } finally {
      await strict.stop();
      worker = await startTestWorker(nats, POLL_ENV);
    }
  });
});

describe("an upstream's error text in the status and the client's error", () => {
  let hostile: Server;
  const TOKEN = "tok-7f3a9c-very-secret";
  const API_KEY = "key-41b2e8-also-secret";
  const QUERY_SECRET = "q-90d1c5-secret";

  before(async () => {
    // fails every request with a long page that echoes what it was sent
    hostile = createServer((req, res) => {
      req.resume();
      const echo = `upstream failed: authorization=${req.headers.authorization} x-api-key=${req.headers["x-api-key"]} url=${req.url}\n`;
      res.writeHead(500, { "content-type": "text/html" }).end(`${echo}<html>\n${echo.repeat(50)}</html>`);
    });
    await new Promise<void>((r) => hostile.listen(0, "127.0.0.1", r));
  });
  after(async () => {
    hostile?.closeAllConnections();
    await new Promise((r) => hostile?.close(r));
  });

  it("is kept short, on one line, with the gateway's secrets masked", async () => {
    const port = (hostile.address() as AddressInfo).port;
    const r = await request("add", {
      name: "hostile",
      transport: "streamable-http",
      url: `http://127.0.0.1:${port}/mcp?api_key=${QUERY_SECRET}`,
      auth: { type: "headers", headers: { authorization: `Bearer ${TOKEN}`, "x-api-key": API_KEY } },
    });
    assert.ok(r.ok, JSON.stringify(r));
    const st = await until("the upstream's error in the status", async () => {
      const v = await status(r.data.id);
      return v?.lastError ? v : null;
    }, WAIT_MS);
    const shown = await request("get", { name: "hostile" });
    assert.ok(shown.ok);
    for (const text of [st.lastError!, shown.data.status.lastError as string]) {
      assert.match(text, /upstream failed: authorization=\*{8} x-api-key=\*{8} url=\/mcp\?api_key=\*{8}/, "the upstream's own words, masked");
      assert.ok(text.length <= UPSTREAM_ERROR_MAX, `${text.length} characters`);
      assert.ok(!/\n/.test(text), "one line");
      for (const secret of [TOKEN, API_KEY, QUERY_SECRET]) assert.ok(!text.includes(secret), `${secret} leaked`);
      assert.ok(text.includes(MASK));
    }

    // and an operator asking for a refresh
    const refreshed = await request("refresh", { name: "hostile" });
    assert.ok(!refreshed.ok && refreshed.error.code === "unavailable", JSON.stringify(refreshed));
    const refreshReason = refreshed.error.message.replace(/^discovery failed: /, "");
    assert.ok(refreshReason.length <= UPSTREAM_ERROR_MAX && refreshReason.includes(MASK), refreshReason);
    for (const secret of [TOKEN, API_KEY, QUERY_SECRET]) assert.ok(!refreshed.error.message.includes(secret), `${secret} leaked`);

    // the same text reaches a client whose upstream session cannot connect
    const caller = createUpstreamCaller(worker.nc, s, { callTimeoutMs: 10_000, log: memoryLogger().log });
    await assert.rejects(caller.call("client-2", r.data.id, { method: "ping", requestId: "r2", headers: {} }), (err: unknown) => {
      assert.ok(err instanceof ProtocolError && err.code === "unavailable", String(err));
      const reason = /cannot connect: (.*)$/.exec(err.message)?.[1] ?? "";
      assert.match(reason, /upstream failed: authorization=\*{8} x-api-key=\*{8}/);
      assert.ok(reason.length <= UPSTREAM_ERROR_MAX && !reason.includes("\n"), `${reason.length} characters`);
      for (const secret of [TOKEN, API_KEY, QUERY_SECRET]) assert.ok(!err.message.includes(secret), `${secret} leaked`);
      return true;
    });
  });
});

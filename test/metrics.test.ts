// Prometheus metrics at GET /metrics: scraped from real workers (real nats-server, real MCP
// fixtures) while calls, polls, evictions and a NATS reconnect happen; the series must move
// with the right labels. Access to /metrics is tested by trying to read it without the right to.
import assert from "node:assert/strict";
import { createServer, connect as tcpConnect, type Socket } from "node:net";
import { networkInterfaces } from "node:os";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { ClassificationSchema } from "../protocol/classification.ts";
import { sessionKey } from "../protocol/edge.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { DrainReplySchema, SessionEvictReplySchema } from "../protocol/upstream.ts";
import { request } from "../runtime/bus.ts";
import { isLoopbackAddress } from "../runtime/edge/security.ts";
import { connectNats } from "../runtime/nats.ts";
import { startWorker, type Worker } from "../runtime/worker.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, putCatalog, until } from "./helpers/edge.ts";
import { parseExposition, scrape, value, type Scrape } from "./helpers/metrics.ts";
import { freePort, startNats, type TestNats } from "./helpers/nats.ts";
import { memoryLogger, startTestWorker, testConfig, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
/** hang bound: what a working system does in well under a second */
const WAIT_MS = 30_000;
const waitFor = <T>(what: string, f: () => Promise<T | undefined | null | false>) => until(what, f, WAIT_MS);

const ENV = {
  MCPGW_WORKER_ID: "m1",
  MCPGW_HEALTH_INTERVAL: "500ms",
  MCPGW_DISCOVERY_INTERVAL: "1s",
  MCPGW_ALLOW_SHORT_INTERVALS: "1",
  MCPGW_USAGE_REPORT_INTERVAL: "300ms",
  MCPGW_EDGE_SESSION_IDLE_TTL: "20s",
  MCPGW_SHUTDOWN_TIMEOUT: "500ms",
  MCPGW_CALL_TIMEOUT: "10s",
};

let nats: TestNats;
let fixture: FixtureHttp;
let w: TestWorker;
let counterGid: string;
let downGid: string;
/** every client session id any test opened: none may appear in a label */
const sessionIds: string[] = [];

const metricsOf = (worker: Worker = w) => scrape(worker.edge.port);
const calls = (m: Scrape, gateway: string, method: string, outcome: string) => value(m, "mcpgw_calls_total", { gateway, method, outcome });

async function client() {
  const c = await connectClient(w.edge.url);
  sessionIds.push(c.transport.sessionId!);
  return c;
}

before(async () => {
  nats = await startNats();
  fixture = await startFixtureHttp();
  w = await startTestWorker(nats, ENV);
  counterGid = (await w.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("counter") })).id;
  fixture.setDown("down", true);
  downGid = (await w.registry.add({ name: "down", transport: "streamable-http", url: fixture.url("down") })).id;
  // a route to the gateway that is down (its discovery never succeeds)
  await putCatalog(w, downGid, { tools: [{ name: "echo", inputSchema: { type: "object" } }] });
  await waitFor("the counter gateway's tools in the catalog", async () => w.edge.cache.view(null).toolRoutes.has("counter__echo"));
});

after(async () => {
  await w?.stop();
  await fixture?.close();
  await nats?.stop();
});

describe("metrics: the exposition", () => {
  it("is the Prometheus text format, with every series the gateway documents", async () => {
    const m = await metricsOf();
    for (const [name, type] of [
      ["mcpgw_calls_total", "counter"],
      ["mcpgw_call_duration_seconds", "histogram"],
      ["mcpgw_upstream_sessions", "gauge"],
      ["mcpgw_upstream_session_creations_total", "counter"],
      ["mcpgw_upstream_session_evictions_total", "counter"],
      ["mcpgw_polls_total", "counter"],
      ["mcpgw_poll_duration_seconds", "histogram"],
      ["mcpgw_gateways", "gauge"],
      ["mcpgw_catalog_items", "gauge"],
      ["mcpgw_classifier_leader", "gauge"],
      ["mcpgw_client_sessions", "gauge"],
      ["mcpgw_nats_reconnects_total", "counter"],
      ["mcpgw_relayed_requests_total", "counter"],
      ["process_cpu_seconds_total", "counter"],
    ]) {
      assert.equal(m.types.get(name!), type, `${name} is a ${type}`);
    }
    // nothing relays server→client requests yet: registered, never moved
    assert.equal(m.samples.filter((x) => x.name === "mcpgw_relayed_requests_total").length, 0);
  });

  it("the parser used here refuses what is not the format (so the test above can fail)", () => {
    assert.throws(() => parseExposition("mcpgw_x 1\n"), /undeclared/);
    assert.throws(() => parseExposition('# TYPE a counter\na{b="1" 2\n'), /not a sample|malformed/);
    assert.throws(() => parseExposition("# TYPE a counter\na one\n"), /not a (sample|number)/);
  });
});

describe("metrics: forwarded calls", () => {
  it("counts success, tool error, upstream error, unknown tool and an unavailable gateway by gateway, method and outcome", async () => {
    const before = await metricsOf();
    const { client: c } = await client();
    await c.callTool({ name: "counter__echo", arguments: { text: "x" } });
    const failed = await c.callTool({ name: "counter__fail", arguments: {} });
    assert.equal(failed.isError, true);
    // the fixture's own JSON-RPC error: a required prompt argument is missing
    await assert.rejects(c.getPrompt({ name: "counter__greet", arguments: {} }), /who|argument/i);
    await assert.rejects(c.callTool({ name: "nosuch__echo", arguments: {} }), /unknown tool/);
    await assert.rejects(c.callTool({ name: "down__echo", arguments: {} }), /down unavailable/);
    const now = await metricsOf();
    const moved = (gateway: string, method: string, outcome: string) => calls(now, gateway, method, outcome) - calls(before, gateway, method, outcome);
    assert.equal(moved("counter", "tools/call", "ok"), 1);
    assert.equal(moved("counter", "tools/call", "tool_error"), 1);
    assert.equal(moved("counter", "prompts/get", "upstream_error"), 1);
    assert.equal(moved("(unknown)", "tools/call", "not_found"), 1, "an unknown tool is counted without its name as a label");
    assert.equal(moved("down", "tools/call", "unavailable"), 1);
    const durations = (m: Scrape, method: string) => value(m, "mcpgw_call_duration_seconds_count", { gateway: "counter", method });
    assert.equal(durations(now, "tools/call") - durations(before, "tools/call"), 2);
    assert.equal(durations(now, "prompts/get") - durations(before, "prompts/get"), 1);
    assert.ok(!now.text.includes("nosuch"), "client text never becomes a label");
    await c.close();
  });
});

describe("metrics: upstream sessions", () => {
  const sessions = (m: Scrape) => value(m, "mcpgw_upstream_sessions", { gateway: "counter" });
  const created = (m: Scrape) => value(m, "mcpgw_upstream_session_creations_total", { gateway: "counter" });
  const evicted = (m: Scrape, reason: string) => value(m, "mcpgw_upstream_session_evictions_total", { gateway: "counter", reason });

  it("counts creations, and evictions by reason: operator, drain, client session ended; the gauge follows", async () => {
    const base = await metricsOf();
    const { client: c, transport } = await client();
    const sid = sessionKey(transport.sessionId!);
    const echo = () => c.callTool({ name: "counter__echo", arguments: { text: "x" } });

    await echo();
    const opened = await metricsOf();
    assert.equal(created(opened) - created(base), 1);
    assert.equal(sessions(opened) - sessions(base), 1);

    await request(w.nc, s.admin.sessionEvict, { sid }, SessionEvictReplySchema, WAIT_MS);
    const afterEvict = await waitFor("the eviction counted", async () => {
      const x = await metricsOf();
      return evicted(x, "evicted") - evicted(opened, "evicted") === 1 && x;
    });
    assert.equal(sessions(afterEvict), sessions(opened) - 1);

    await echo();
    const beforeDrain = await metricsOf();
    await request(w.nc, s.admin.drain, {}, DrainReplySchema, WAIT_MS);
    const drained = await waitFor("every session drained", async () => {
      const x = await metricsOf();
      return sessions(x) === 0 && x;
    });
    assert.equal(evicted(drained, "drain") - evicted(beforeDrain, "drain"), sessions(beforeDrain), "each drained session counted once");

    await echo();
    const beforeEnd = await metricsOf();
    await transport.terminateSession(); // DELETE: the client session ends
    const ended = await waitFor("the client session's end counted", async () => {
      const x = await metricsOf();
      return evicted(x, "client_session_ended") - evicted(beforeEnd, "client_session_ended") === 1 && x;
    });
    assert.equal(sessions(ended), 0);
    assert.equal(created(ended) - created(base), 3);
    await c.close();
  });

  it("counts the removal of a gateway as its own reason", async () => {
    const gw = await w.registry.add({ name: "short-lived", transport: "streamable-http", url: fixture.url("short-lived") });
    await putCatalog(w, gw.id, { tools: [{ name: "echo", inputSchema: { type: "object", properties: { text: { type: "string" } } } }] });
    await waitFor("the new gateway routed", async () => w.edge.cache.view(null).toolRoutes.has("short-lived__echo"));
    const { client: c } = await client();
    await c.callTool({ name: "short-lived__echo", arguments: { text: "x" } });
    assert.equal(value(await metricsOf(), "mcpgw_upstream_sessions", { gateway: "short-lived" }), 1);
    await w.registry.remove({ id: gw.id });
    const m = await waitFor("the removal counted", async () => {
      const x = await metricsOf();
      return value(x, "mcpgw_upstream_session_evictions_total", { gateway: "short-lived", reason: "gateway_removed" }) === 1 && x;
    });
    assert.equal(value(m, "mcpgw_upstream_sessions", { gateway: "short-lived" }), 0);
    await c.close();
  });
});

describe("metrics: polls, gateways, catalog, leader, client sessions", () => {
  it("counts health checks and discoveries by kind, tier and outcome, each with its duration", async () => {
    const m = await waitFor("health checks and discoveries, ok and failed", async () => {
      const x = await metricsOf();
      const ok = value(x, "mcpgw_polls_total", { kind: "health", outcome: "ok" }) > 0;
      const failed = value(x, "mcpgw_polls_total", { kind: "health", outcome: "error" }) > 0; // the gateway that is down
      const discovered = value(x, "mcpgw_polls_total", { kind: "discovery", outcome: "ok" }) > 0;
      return ok && failed && discovered && x;
    });
    for (const kind of ["health", "discovery"]) {
      assert.equal(value(m, "mcpgw_poll_duration_seconds_count", { kind }), value(m, "mcpgw_polls_total", { kind }), `one duration per ${kind} poll`);
    }
    for (const x of m.samples.filter((x) => x.name === "mcpgw_polls_total")) {
      assert.match(x.labels.tier!, /^(hot|cold|unclassified)$/);
      assert.match(x.labels.outcome!, /^(ok|error)$/);
    }
  });

  it("labels a poll with the gateway's tier from the classification", async () => {
    // two gateways with no use: the leader classifies both cold (hot cap floor(20% of 2) = 0)
    const classification = await waitFor("a classification", async () => {
      const e = await w.stores.state.get(KEYS.classification);
      return e?.operation === "PUT" ? ClassificationSchema.parse(e.json()) : null;
    });
    assert.ok(classification.cold.includes(counterGid));
    await waitFor("a health check labelled cold", async () => value(await metricsOf(), "mcpgw_polls_total", { kind: "health", tier: "cold", outcome: "ok" }) > 0);
  });

  it("shows gateways by health and each gateway's catalog size", async () => {
    const m = await waitFor("the gateway that is down seen unhealthy", async () => {
      const x = await metricsOf();
      return value(x, "mcpgw_gateways", { health: "unhealthy" }) >= 1 && value(x, "mcpgw_gateways", { health: "healthy" }) >= 1 && x;
    });
    const records = await w.registry.records();
    assert.equal(value(m, "mcpgw_gateways"), records.length, "every gateway counted once");
    const catalog = z.object({ tools: z.array(z.unknown()), prompts: z.array(z.unknown()) }).parse((await w.stores.catalog.get(KEYS.catalog(counterGid)))!.json());
    assert.equal(value(m, "mcpgw_catalog_items", { gateway: "counter", list: "tools" }), catalog.tools.length);
    assert.equal(value(m, "mcpgw_catalog_items", { gateway: "counter", list: "prompts" }), catalog.prompts.length);
    assert.equal(value(m, "mcpgw_catalog_items", { gateway: "down", list: "tools" }), 1);
  });

  it("shows the classifier leader, and the cluster's client sessions after a sweep", async () => {
    await waitFor("this worker leading", async () => value(await metricsOf(), "mcpgw_classifier_leader") === 1);
    const opened = await Promise.all([client(), client()]);
    const live = async () => {
      let n = 0;
      for await (const _ of await w.stores.sessions.keys(`${KEYS.downstreamSessionPrefix}>`)) n++;
      return n;
    };
    // the edge sweeps every quarter of the session idle TTL (20 s here)
    await waitFor("the gauge at the number of client sessions", async () => value(await metricsOf(), "mcpgw_client_sessions") === (await live()));
    assert.ok((await live()) >= 2);
    await Promise.all(opened.map((o) => o.client.close()));
  });

  it("puts no client session id in any label", async () => {
    const m = await metricsOf();
    assert.ok(sessionIds.length >= 5);
    for (const id of sessionIds) {
      assert.ok(!m.text.includes(id), `client session id ${id} in the metrics`);
      assert.ok(!m.text.includes(sessionKey(id)), `session key of ${id} in the metrics`);
    }
    const labelNames = new Set(m.samples.flatMap((x) => Object.keys(x.labels)));
    assert.ok(!labelNames.has("sid") && !labelNames.has("session"), [...labelNames].join(","));
  });
});

describe("metrics: NATS reconnects", () => {
  it("counts a reconnect after the connection to NATS is cut", async () => {
    // a TCP relay between the worker and nats-server: destroying its sockets cuts the connection
    const sockets = new Set<Socket>();
    const relay = createServer((inbound) => {
      const outbound = tcpConnect(Number(new URL(nats.url).port), "127.0.0.1");
      for (const [a, b] of [
        [inbound, outbound],
        [outbound, inbound],
      ] as const) {
        sockets.add(a);
        a.pipe(b);
        a.on("error", () => b.destroy());
        a.on("close", () => b.destroy());
      }
    });
    await new Promise<void>((r) => relay.listen(0, "127.0.0.1", r));
    const nc = await connectNats({ url: `nats://127.0.0.1:${(relay.address() as { port: number }).port}`, user: "runtime", password: nats.passwords.runtime });
    const worker = await startWorker(testConfig({ MCPGW_WORKER_ID: "m-relay" }), nc, memoryLogger().log);
    try {
      assert.equal(value(await metricsOf(worker), "mcpgw_nats_reconnects_total"), 0);
      for (const sock of sockets) sock.destroy();
      sockets.clear();
      await waitFor("the reconnect counted", async () => value(await metricsOf(worker), "mcpgw_nats_reconnects_total") === 1);
    } finally {
      await worker.stop();
      await nc.close();
      relay.close();
      for (const sock of sockets) sock.destroy();
    }
  });
});

describe("metrics: who may read them", () => {
  const METRICS_TOKEN = "metrics-token-0123456789abcdef";
  const CLIENT_TOKEN = "client-token-0123456789abcdef";

  it("with MCPGW_METRICS_TOKEN: only that bearer token reads them, and it cannot call the MCP endpoint", async () => {
    const guarded = await startTestWorker(nats, {
      MCPGW_WORKER_ID: "m-token",
      MCPGW_METRICS_TOKEN: METRICS_TOKEN,
      MCPGW_EDGE_AUTH: "token",
      MCPGW_EDGE_TOKENS: CLIENT_TOKEN,
    });
    try {
      const get = (authorization?: string) =>
        fetch(`http://127.0.0.1:${guarded.edge.port}/metrics`, { headers: authorization ? { authorization } : {} });
      for (const authorization of [undefined, `Bearer ${CLIENT_TOKEN}`, `Bearer ${METRICS_TOKEN}x`, METRICS_TOKEN, `Basic ${METRICS_TOKEN}`]) {
        const res = await get(authorization);
        assert.equal(res.status, 401, `authorization ${authorization ?? "(none)"}`);
        assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
        assert.ok(!(await res.text()).includes("mcpgw_calls_total"));
      }
      assert.ok((await scrape(guarded.edge.port, METRICS_TOKEN)).types.has("mcpgw_calls_total"));
      const init = { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "scraper", version: "1" } } };
      const mcp = await fetch(guarded.edge.url, {
        method: "POST",
        headers: { authorization: `Bearer ${METRICS_TOKEN}`, "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify(init),
      });
      assert.equal(mcp.status, 401, "the metrics token is not a client token");
    } finally {
      await guarded.stop();
    }
  });

  it("without a token: loopback peers only; a peer on another address is refused", async (t) => {
    const address = Object.values(networkInterfaces())
      .flat()
      .find((i) => i && i.family === "IPv4" && !i.internal)?.address;
    if (!address) return t.skip("no non-loopback IPv4 address on this host to attack from");
    const port = await freePort();
    // bound on every address; the Host check lets the address through, so only the peer check refuses
    const open = await startTestWorker(nats, { MCPGW_WORKER_ID: "m-open", MCPGW_EDGE_HOST: "0.0.0.0", MCPGW_EDGE_PORT: String(port), MCPGW_EDGE_ALLOWED_HOSTS: `${address}:${port}` });
    try {
      const remote = await fetch(`http://${address}:${port}/metrics`);
      assert.equal(remote.status, 403);
      assert.ok(!(await remote.text()).includes("mcpgw_calls_total"));
      assert.ok((await scrape(port)).types.has("mcpgw_calls_total"), "a loopback peer reads them");
    } finally {
      await open.stop();
    }
  });

  it("answers only GET", async () => {
    const res = await fetch(`http://127.0.0.1:${w.edge.port}/metrics`, { method: "POST", body: "x" });
    assert.equal(res.status, 405);
  });

  it("knows a loopback peer in every spelling, and nothing else", () => {
    for (const a of ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"]) assert.equal(isLoopbackAddress(a), true, a);
    for (const a of [undefined, "", "10.0.0.1", "::ffff:10.0.0.1", "::", "0.0.0.0", "128.0.0.1", "127.0.0.1.evil", "fe80::1"]) assert.equal(isLoopbackAddress(a), false, String(a));
  });
});

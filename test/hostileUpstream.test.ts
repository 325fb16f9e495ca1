// The call path against a hostile upstream (issue 9, attacks 5-8), end to end: an MCP client
// → edge → NATS (the project's nats.conf: max_payload 1 MB) → upstream session actor → the
// hostile fixture over streamable HTTP.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { MASK } from "../protocol/gateway.ts";
import { HOSTILE_TOOLS, pattern, sha256, startHostileUpstream, type HostileUpstream } from "./fixtures/hostileUpstream.ts";
import { connectClient, putCatalog, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const SECRETS = {
  token: "tok-7f3c9a1e5b",
  user: "svc-user",
  password: "pw-2b8d4e6f0a",
  apiKey: "key-9e1d7c3b5a",
  queryKey: "qk-4a6c8e0b2d",
  urlSecret: "us-1f3e5d7c9b",
};
/** every form a secret could show in: raw, the basic pair, its base64 */
const LEAKS = [
  ...Object.values(SECRETS),
  `${SECRETS.user}:${SECRETS.password}`,
  Buffer.from(`${SECRETS.user}:${SECRETS.password}`).toString("base64"),
];
const leaksIn = (text: string) => LEAKS.filter((s) => text.includes(s));

const MB = 1024 * 1024;
const text = (r: unknown) => (r as { content: Array<{ text?: string }> }).content[0]?.text ?? "";

describe("the call path against a hostile upstream", () => {
  let nats: TestNats;
  let up: HostileUpstream;
  /** generous call timeout: large messages on a busy machine */
  let w: TestWorker;
  /** short call timeout: timed-out calls */
  let short: TestWorker;
  let client: Client;
  let shortClient: Client;

  const add = async (name: string, spec: Record<string, unknown>) => {
    const g = await w.registry.add({ name, transport: "streamable-http", url: up.url(name), ...spec } as never);
    await putCatalog(w, g.id, { tools: HOSTILE_TOOLS.map((t) => ({ name: t, inputSchema: { type: "object" as const } })) });
    return g;
  };

  before(async () => {
    nats = await startNats();
    up = await startHostileUpstream();
    const quiet = { MCPGW_HEALTH_INTERVAL: "1h", MCPGW_DISCOVERY_INTERVAL: "1h" };
    w = await startTestWorker(nats, { ...quiet, MCPGW_WORKER_ID: "hostile-w", MCPGW_CALL_TIMEOUT: "120s" });
    short = await startTestWorker(nats, { ...quiet, MCPGW_WORKER_ID: "hostile-short", MCPGW_CALL_TIMEOUT: "1500ms" });
    await add("bearer", { auth: { type: "bearer", token: SECRETS.token } });
    await add("basic", { auth: { type: "basic", username: SECRETS.user, password: SECRETS.password } });
    await add("apikey", { auth: { type: "headers", headers: { "x-api-key": SECRETS.apiKey } } });
    const query = await w.registry.add({
      name: "query",
      transport: "streamable-http",
      url: `${up.url("query")}?tenant=${SECRETS.urlSecret}`,
      auth: { type: "query", params: { api_key: SECRETS.queryKey } },
    } as never);
    await putCatalog(w, query.id, { tools: HOSTILE_TOOLS.map((t) => ({ name: t, inputSchema: { type: "object" as const } })) });
    await add("deny", { auth: { type: "bearer", token: SECRETS.token } });
    await add("plain", {});
    await until("both edges see the catalogs", () => [w, short].every((x) => x.edge.cache.view(null).toolRoutes.has("plain__hang")));
    client = (await connectClient(w.edge.url)).client;
    shortClient = (await connectClient(short.edge.url)).client;
  });
  after(async () => {
    await client?.close();
    await shortClient?.close();
    await w?.stop();
    await short?.stop();
    await up?.close();
    await nats?.stop();
  });

  it("runs on a nats-server with the default 1 MB max_payload", () => {
    assert.equal(w.nc.info?.max_payload, MB);
  });

  it("masks the gateway's secrets in an upstream's echo, in the error's message and data, for every kind of auth", async () => {
    for (const name of ["bearer", "basic", "apikey", "query"]) {
      await assert.rejects(client.callTool({ name: `${name}__leak`, arguments: {} }), (err: any) => {
        assert.equal(err.code, -32603, "the upstream's own code");
        const seen = `${err.message} ${JSON.stringify(err.data)}`;
        assert.deepEqual(leaksIn(seen), [], `${name}: ${seen}`);
        assert.ok(seen.includes(MASK), `${name}: the echo is there, masked: ${seen}`);
        assert.ok(Array.isArray(err.data.nested) && typeof err.data.received.headers === "object", "the data keeps its shape");
        return true;
      });
    }
  });

  it("masks them in an HTTP-level failure's error and in the warn line it logs", async () => {
    for (const name of ["bearer", "basic", "apikey", "query"]) {
      await assert.rejects(client.callTool({ name: `${name}__http_error`, arguments: {} }), (err: any) => {
        assert.equal(err.code, -32000, "a transport failure is mcpgw's own: unavailable");
        assert.match(err.message, /Error POSTing to endpoint/);
        assert.deepEqual(leaksIn(err.message), [], `${name}: ${err.message}`);
        return true;
      });
    }
    // the upstream's connect-time refusal (an echo in its 500 body) reaches the client as the spawn's reason
    await assert.rejects(client.callTool({ name: "deny__whoami", arguments: {} }), (err: any) => {
      assert.match(err.message, /cannot connect/);
      assert.deepEqual(leaksIn(err.message), [], err.message);
      return true;
    });
    const logged = [...w.lines, ...short.lines].join("\n");
    assert.ok(logged.includes("upstream transport error"), "the failures were logged");
    assert.deepEqual(leaksIn(logged), []);
  });

  it("passes an upstream's JSON-RPC errors through unchanged, -32000 and -32001 too, on the same upstream session", async () => {
    await client.callTool({ name: "plain__whoami", arguments: {} });
    const initializes = up.initializes("plain");
    const data = { why: ["nested", { deep: true }], n: 7 };
    for (const code of [-32000, -32001, -32603, -32602, 4242, -1]) {
      const message = `upstream says ${code}`;
      await assert.rejects(client.callTool({ name: "plain__rpc_error", arguments: { code, message, data } }), (err: any) => {
        assert.equal(err.code, code);
        assert.equal(err.message, `MCP error ${code}: ${message}`);
        assert.deepEqual(err.data, data);
        return true;
      });
    }
    assert.equal(text(await client.callTool({ name: "plain__whoami", arguments: {} })), "ok");
    const sessions = up.callSessions("plain");
    assert.equal(new Set(sessions).size, 1, `every call on one upstream session: ${sessions.join(", ")}`);
    assert.equal(up.initializes("plain"), initializes, "the upstream session was never recreated");
  });

  it("releases the upstream request of every timed-out call", async (t) => {
    const N = 20;
    // the short timeout bounds the upstream session's connect too: open it first (a connect that
    // missed 1.5 s on a loaded machine is tried again), so the calls below time out, not the connect
    await until("the short worker's upstream session open", () => shortClient.callTool({ name: "plain__whoami", arguments: {} }).then(() => true, () => false), 60_000);
    const before = await up.openConnections();
    const results = await Promise.allSettled(Array.from({ length: N }, () => shortClient.callTool({ name: "plain__hang", arguments: {} }, undefined, { timeout: 60_000 })));
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.equal((r as PromiseRejectedResult).reason.code, -32001, "mcpgw's own timeout");
    }
    await until("no call in flight at the upstream", () => up.callsInFlight() === 0, 20_000);
    // the rest are idle keep-alive sockets (the cancellations sent to the upstream opened them)
    t.diagnostic(`upstream sockets after ${N} timeouts: ${await up.openConnections()} open (${before} before), ${up.busyConnections()} with a response still open`);
  });

  it("releases the upstream request of a cancelled call", async () => {
    const ac = new AbortController();
    const call = client.callTool({ name: "plain__hang", arguments: {} }, undefined, { signal: ac.signal });
    await until("the call reached the upstream", () => up.callsInFlight() === 1, 20_000);
    ac.abort("changed my mind");
    await assert.rejects(call);
    await until("no call in flight at the upstream", () => up.callsInFlight() === 0, 20_000);
  });

  it("passes 1.1 MB and 15 MB results and a 2 MB request intact", async () => {
    for (const bytes of [1.1 * MB, 15 * MB].map(Math.floor)) {
      const r = await client.callTool({ name: "plain__big", arguments: { bytes } }, undefined, { timeout: 120_000 });
      const got = text(r);
      assert.equal(got.length, bytes);
      assert.equal(sha256(got), sha256(pattern(bytes)));
    }
    const sent = pattern(2 * MB);
    const r = await client.callTool({ name: "plain__digest", arguments: { text: sent } }, undefined, { timeout: 120_000 });
    assert.equal(text(r), `${sent.length} ${sha256(sent)}`);
  });

  it("answers a 17 MB result with a clear error naming its size, and keeps the session", async () => {
    await client.callTool({ name: "plain__whoami", arguments: {} });
    const initializes = up.initializes("plain");
    await assert.rejects(client.callTool({ name: "plain__big", arguments: { bytes: 17 * MB } }, undefined, { timeout: 120_000 }), (err: any) => {
      assert.equal(err.code, -32603, err.message);
      // read only up to the limit (and what wraps a result): a larger answer is never read whole
      assert.match(err.message, /answered tools\/call with more than \d+ bytes, over the limit of 16777216 bytes/);
      return true;
    });
    // just over the limit: read whole (within what may wrap a result), refused by its exact size
    await assert.rejects(client.callTool({ name: "plain__big", arguments: { bytes: 16 * MB + 1000 } }, undefined, { timeout: 120_000 }), (err: any) => {
      assert.equal(err.code, -32603, err.message);
      assert.match(err.message, /answered tools\/call with 167782\d\d bytes, over the limit of 16777216 bytes/);
      return true;
    });
    assert.equal(text(await client.callTool({ name: "plain__whoami", arguments: {} })), "ok");
    assert.equal(up.initializes("plain"), initializes, "the session was kept");
  });

  it("starts a session whose initialize is over max_payload, and refuses one over the body limit with 413", async () => {
    const initialize = (padding: number) =>
      fetch(w.edge.url, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "initialize",
          params: { protocolVersion: "2025-06-18", clientInfo: { name: "big", version: "1" }, capabilities: { experimental: { padding: { text: "x".repeat(padding) } } } },
        }),
      });
    const ok = await initialize(2 * MB);
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.ok(ok.headers.get("mcp-session-id"));
    await ok.text();
    const tooLarge = await initialize(16 * MB);
    assert.equal(tooLarge.status, 413);
    await tooLarge.text();
  });
});

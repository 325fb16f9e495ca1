// The pollers' kept MCP connections with a fake connector (reuse, replacement, the stdio bound), and
// on a real upstream what a kept HTTP session holds.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setFlagsFromString, writeHeapSnapshot } from "node:v8";
import { runInNewContext } from "node:vm";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import { holdings } from "../bench/heapSnapshot.ts";
import { sharedUpstreamAgent } from "../runtime/mcpClient.ts";
import { PollConnections } from "../runtime/pollConnections.ts";
import { discoverOn, probeConnector, type CatalogStore, type GatewayConnector, type ProbeConnection } from "../runtime/pollerEffects.ts";
import { CatalogSchema } from "../protocol/catalog.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { startFixtureHttp } from "./fixtures/fixtureHttp.ts";
import { gatewayRecord } from "./helpers/gateways.ts";

type FakeConn = { n: number; gid: string; open: boolean; onClosed: () => void };

function harness(maxStdio = 2) {
  const conns: FakeConn[] = [];
  const connect: GatewayConnector = async (record, _timeout, onClosed) => {
    const c: FakeConn = { n: conns.length, gid: record.id, open: true, onClosed };
    conns.push(c);
    const conn: ProbeConnection & { fake: FakeConn } = {
      era: "session",
      check: async () => {},
      list: async () => ({ fingerprint: "", lists: { tools: [], prompts: [], resources: [], resourceTemplates: [] } }),
      close: async () => {
        c.open = false;
      },
      fake: c,
    };
    return conn;
  };
  const pool = new PollConnections(connect, maxStdio);
  const gw = (id: string, transport: GatewayRecord["transport"] = "streamable-http") => ({ id, transport }) as GatewayRecord;
  const use = (record: GatewayRecord, fn: (c: FakeConn) => Promise<unknown> = async () => {}, keep = true) =>
    pool.use(record, 1000, (conn) => fn((conn as ProbeConnection & { fake: FakeConn }).fake), keep);
  const openOf = (gid: string) => conns.filter((c) => c.gid === gid && c.open);
  return { conns, pool, gw, use, openOf };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("PollConnections", () => {
  it("opens one connection per gateway and reuses it, also for polls at the same time", async () => {
    const h = harness();
    const a = h.gw("a");
    await Promise.all([h.use(a), h.use(a)]);
    await h.use(a);
    await h.use(h.gw("b"));
    assert.equal(h.conns.length, 2);
    assert.equal(h.pool.size.all, 2);
  });

  it("keeps the connection on an upstream's JSON-RPC error, drops it on a timeout without retrying", async () => {
    const h = harness();
    const a = h.gw("a");
    await h.use(a);
    await assert.rejects(h.use(a, async () => Promise.reject(new McpError(ErrorCode.InvalidParams, "tool broke"))), /tool broke/);
    assert.equal(h.openOf("a").length, 1);
    await assert.rejects(h.use(a, async () => Promise.reject(new McpError(ErrorCode.RequestTimeout, "slow"))), /slow/);
    await tick();
    assert.equal(h.openOf("a").length, 0, "the timed-out connection is closed");
    assert.equal(h.conns.length, 1, "a timeout is not retried");
    await h.use(a);
    assert.equal(h.conns.length, 2, "the next poll connects again");
  });

  it("replaces a kept connection that broke once within the poll; a new one that breaks fails the poll", async () => {
    const h = harness();
    const a = h.gw("a");
    await h.use(a);
    // the first (kept) connection fails with a transport error, the fresh one works
    const seen: number[] = [];
    await h.use(a, async (c) => {
      seen.push(c.n);
      if (c.n === 0) throw new Error("Streamable HTTP error: session not found");
    });
    assert.deepEqual(seen, [0, 1]);
    await tick();
    assert.equal(h.conns[0]!.open, false);
    // a transport error on a fresh connection is the upstream's health: no second try
    h.pool.drop("a");
    const tries: number[] = [];
    await assert.rejects(h.use(a, async (c) => (tries.push(c.n), Promise.reject(new Error("ECONNREFUSED")))), /ECONNREFUSED/);
    assert.equal(tries.length, 1);
  });

  it("forgets a connection the upstream closed, and closes it on drop and closeAll", async () => {
    const h = harness();
    const a = h.gw("a");
    await h.use(a);
    h.conns[0]!.onClosed();
    await h.use(a);
    assert.equal(h.conns.length, 2);
    h.pool.drop("a");
    await tick();
    assert.equal(h.openOf("a").length, 0);
    await h.use(h.gw("b"));
    await h.pool.closeAll();
    assert.equal(h.conns.filter((c) => c.open).length, 0);
    assert.equal(h.pool.size.all, 0);
  });

  it("keeps at most maxStdio stdio children, least recently used out; beyond that, per poll", async () => {
    const h = harness(2);
    const [s1, s2, s3] = ["s1", "s2", "s3"].map((id) => h.gw(id, "stdio"));
    await h.use(s1!);
    await h.use(s2!);
    await h.use(s1!); // s2 is now the least recently used
    await h.use(s3!);
    await tick();
    assert.deepEqual(h.openOf("s2"), [], "s2 closed to make room");
    assert.equal(h.openOf("s1").length + h.openOf("s3").length, 2);
    assert.deepEqual(h.pool.size, { all: 2, stdio: 2 });
    // every kept child busy: a third gateway connects for its poll only
    let release!: () => void;
    const busy = new Promise<void>((r) => (release = r));
    const p1 = h.use(s1!, () => busy);
    const p3 = h.use(s3!, () => busy);
    await h.use(s2!);
    await tick();
    assert.equal(h.openOf("s2").length, 0, "closed after its poll");
    assert.deepEqual(h.pool.size, { all: 2, stdio: 2 });
    release();
    await Promise.all([p1, p3]);
    // HTTP gateways do not count against the bound
    await h.use(h.gw("h1"));
    assert.deepEqual(h.pool.size, { all: 3, stdio: 2 });
  });

  it("keep: false uses a kept connection when there is one, else connects for the call only", async () => {
    const h = harness();
    const a = h.gw("a");
    await h.use(a, undefined, false);
    await tick();
    assert.equal(h.pool.size.all, 0);
    assert.equal(h.openOf("a").length, 0);
    await h.use(a);
    await h.use(a, undefined, false);
    assert.equal(h.conns.length, 2);
  });
});

describe("PollConnections on a real streamable-HTTP upstream", () => {
  it("a kept session is data: after GC no SDK transport of the sessions that opened them is alive", async () => {
    const fixture = await startFixtureHttp();
    const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
    const pool = new PollConnections(probeConnector((sealed) => sealed, DEFAULT_OUTBOUND_POLICY, agent), 2);
    const N = 20;
    const records = Array.from({ length: N }, (_, i) =>
      gatewayRecord({ name: `kept${i}`, id: i.toString(16).padStart(16, "0"), transport: "streamable-http", url: fixture.url(`kept${i}`) }),
    );
    try {
      for (const r of records) await pool.use(r, 20_000, (c) => c.check());
      for (const r of records) await pool.use(r, 20_000, (c) => c.check());
      assert.equal(pool.size.all, N);
      assert.equal(records.reduce((n, r) => n + fixture.gateway(r.name).opened.length, 0), N, "one session each, kept");
      setFlagsFromString("--expose-gc");
      (runInNewContext("gc") as () => void)();
      const dir = mkdtempSync(join(tmpdir(), "pollconn-"));
      try {
        const held = holdings(writeHeapSnapshot(join(dir, "kept.heapsnapshot")));
        // the client side's transport class (the fixture's is StreamableHTTPServerTransport)
        assert.equal(held.get("StreamableHttpTransport")?.count ?? 0, 0, "no SDK transport held by a kept session");
        assert.ok((held.get("HttpPollSession")?.count ?? 0) >= N);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    } finally {
      await pool.closeAll();
      await agent.close();
      await fixture.close();
    }
  });

  it("a discovery that finds the lists its connection last reconciled reads and writes no catalog; a change is reconciled", async () => {
    const fixture = await startFixtureHttp();
    const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
    const pool = new PollConnections(probeConnector((sealed) => sealed, DEFAULT_OUTBOUND_POLICY, agent), 2);
    const record = gatewayRecord({ name: "lists", transport: "streamable-http", url: fixture.url("lists") });
    // the catalog bucket as KV holds it, its reads and writes counted (KV itself is poller.test.ts')
    const held = new Map<string, { revision: number; value: string }>();
    const ops = { get: 0, write: 0, events: 0 };
    const store = {
      catalog: {
        get: async (key: string) => {
          ops.get++;
          const v = held.get(key);
          return v ? { operation: "PUT", revision: v.revision, json: () => JSON.parse(v.value) } : null;
        },
        create: async (key: string, value: string) => (ops.write++, held.set(key, { revision: 1, value }), 1),
        update: async (key: string, value: string, revision: number) => (ops.write++, held.set(key, { revision: revision + 1, value }), revision + 1),
      },
      js: { publish: async () => void ops.events++ },
      s: subjects("mcpgw"),
      now: () => new Date(),
    } as unknown as CatalogStore;
    const discover = () => pool.use(record, 20_000, (c) => discoverOn(store, record.id, c));
    try {
      const first = await discover();
      assert.equal(first.changed, true);
      assert.deepEqual(ops, { get: 1, write: 1, events: 1 });
      const again = await discover();
      assert.equal(again.changed, false);
      assert.equal(again.hash, first.hash);
      assert.deepEqual(again.counts, first.counts);
      assert.deepEqual(ops, { get: 1, write: 1, events: 1 }, "unchanged lists: no catalog read, no write, no event");
      fixture.gateway("lists").toolbox.add("added_tool");
      const changed = await discover();
      assert.equal(changed.changed, true);
      assert.deepEqual(changed.diff.added.tools, ["added_tool"]);
      assert.deepEqual(ops, { get: 2, write: 2, events: 2 });
      const parsed = CatalogSchema.parse(JSON.parse(held.get(KEYS.catalog(record.id))!.value));
      assert.ok(parsed.tools.some((t) => t.name === "added_tool"));
      assert.equal((await discover()).changed, false);
      assert.equal(ops.get, 2);
      // a new connection (the kept one dropped) reads the catalog again before it trusts its lists
      pool.drop(record.id);
      assert.equal((await discover()).changed, false);
      assert.deepEqual(ops, { get: 3, write: 2, events: 2 });
    } finally {
      await pool.closeAll();
      await agent.close();
      await fixture.close();
    }
  });
});

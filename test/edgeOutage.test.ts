import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Kvm } from "@nats-io/kv";
import { isCasConflict } from "../actors/kvStore.ts";
import { isNatsUnavailable } from "../runtime/bus.ts";
import { INIT, raw, until, type Raw } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const LIST = JSON.stringify({ jsonrpc: "2.0", id: 2, method: "tools/list" });

/** 503, a Retry-After in seconds, and a JSON-RPC error body. */
function assertUnavailable(r: Raw, what: string): void {
  assert.equal(r.status, 503, `${what}: ${r.status} ${r.body}`);
  assert.match(String(r.headers["retry-after"]), /^[1-9][0-9]*$/, what);
  const body = JSON.parse(r.body) as { jsonrpc: string; error: { code: number; message: string } };
  assert.equal(body.jsonrpc, "2.0");
  assert.equal(typeof body.error.code, "number");
  assert.match(body.error.message, /NATS/);
}

describe("edge: NATS unreachable", () => {
  let nats: TestNats;
  let w: TestWorker;
  let sessionId: string;
  const probe = (path: string) => raw(w.edge.port, { method: "GET", path });
  const list = () => raw(w.edge.port, { headers: { "mcp-session-id": sessionId }, body: LIST });

  before(async () => {
    nats = await startNats();
    w = await startTestWorker(nats, { MCPGW_WORKER_ID: "outage-w1" });
    const init = await raw(w.edge.port, { body: INIT });
    assert.equal(init.status, 200, init.body);
    sessionId = String(init.headers["mcp-session-id"]);
  });
  after(async () => {
    await nats?.freezeServer(false);
    await w?.stop();
    await nats?.stop();
  });

  it("answers 503 with Retry-After while nats-server is down, /readyz 503, and serves the same session again once it is back", async () => {
    assert.equal((await list()).status, 200);
    await nats.stopServer();
    await until("/readyz 503", async () => (await probe("/readyz")).status === 503, 20_000);
    assertUnavailable(await list(), "POST in a session");
    assertUnavailable(await raw(w.edge.port, { body: INIT }), "initialize");
    assertUnavailable(await raw(w.edge.port, { method: "GET", headers: { "mcp-session-id": sessionId } }), "GET stream");
    assertUnavailable(await raw(w.edge.port, { method: "DELETE", headers: { "mcp-session-id": sessionId } }), "DELETE");
    assert.equal((await probe("/healthz")).status, 200, "the process is up");

    await nats.restartServer();
    // while the worker reconnects and JetStream recovers, an answer is 503 or the real one, never 500
    const statuses = new Set<number>();
    await until(
      "the session served again",
      async () => {
        const r = await list();
        statuses.add(r.status);
        if (r.status === 503) assertUnavailable(r, "recovering");
        return r.status === 200;
      },
      60_000,
    );
    assert.deepEqual([...statuses].filter((s) => s !== 200 && s !== 503), []);
    await until("/readyz 200", async () => (await probe("/readyz")).status === 200, 30_000);
    assert.equal((await raw(w.edge.port, { body: INIT })).status, 200, "new sessions too");
  });

  it("answers 503, not 500, when NATS keeps the connection but stops answering (KV requests time out)", async () => {
    await until("ready", async () => (await probe("/readyz")).status === 200, 30_000);
    await nats.freezeServer(true);
    try {
      assertUnavailable(await list(), "POST in a session");
      assert.equal((await probe("/readyz")).status, 503);
    } finally {
      await nats.freezeServer(false);
    }
    await until("the session served again", async () => (await list()).status === 200, 30_000);
  });

  it("counts what NATS throws when it is out of reach as unavailable, and refusals and bugs as not", async () => {
    const nc = await nats.connect("runtime");
    const viewer = await nats.connect("viewer");
    const kv = await new Kvm(nc).create("outage_probe", { history: 1 });
    await kv.put("k", "v");
    const thrown = async (p: Promise<unknown>) => p.then(() => assert.fail("expected an error"), (e: unknown) => e);

    assert.equal(isNatsUnavailable(await thrown(nc.request("outage.nobody.listens", "x", { timeout: 2_000 }))), true, "no responders");
    const conflict = await thrown(kv.update("k", "w", 999));
    assert.ok(isCasConflict(conflict));
    assert.equal(isNatsUnavailable(conflict), false, "a compare-and-swap conflict");
    const denied = await thrown(new Kvm(viewer).open("outage_probe").then((ro) => ro.put("k", "x")));
    assert.equal(isNatsUnavailable(denied), false, `a permission refusal: ${String(denied)}`);
    assert.equal(isNatsUnavailable(new Error("a bug")), false);

    await nats.freezeServer(true);
    try {
      assert.equal(isNatsUnavailable(await thrown(kv.get("k"))), true, "a KV request timing out");
    } finally {
      await nats.freezeServer(false);
    }
  });
});

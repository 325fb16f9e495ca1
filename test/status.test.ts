import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { StatusReplySchema, type StatusReply } from "../protocol/status.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { runCli } from "./helpers/processes.ts";
import { until } from "./helpers/wait.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const ENV = { MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: "300ms", MCPGW_UNHEALTHY_THRESHOLD: "1", MCPGW_USAGE_REPORT_INTERVAL: "200ms" };

describe("cluster status", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  const workers: TestWorker[] = [];

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    workers.push(await startTestWorker(nats, { ...ENV, MCPGW_WORKER_ID: "s1" }), await startTestWorker(nats, { ...ENV, MCPGW_WORKER_ID: "s2" }));
  });
  after(async () => {
    for (const w of workers) await w.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("shows workers, pollers, sessions, gateway health and the classifier, over NATS and in the CLI", async () => {
    const [w1] = workers;
    const up = await w1!.registry.add({ name: "up", transport: "streamable-http", url: fixture.url("up") });
    await w1!.registry.add({ name: "down", transport: "streamable-http", url: "http://127.0.0.1:1/mcp" });
    await w1!.registry.add({ name: "off", transport: "streamable-http", url: fixture.url("off"), enabled: false });
    const admin = await nats.connect("admin");
    const caller = createUpstreamCaller(await nats.connect("runtime"), s, { callTimeoutMs: 10_000, log: memoryLogger().log });
    await caller.call("client-1", up.id, { method: "tools/call", params: { name: "echo", arguments: { text: "x" } }, requestId: "1", headers: {} });

    const status = await until(
      "both gateways polled and a classifier leader",
      async () => {
        const r: StatusReply = await request(admin, s.admin.status, {}, StatusReplySchema, 5000);
        return r.gateways.healthy === 1 && r.gateways.unhealthy === 1 && r.leader && r.workers.reduce((n, w) => n + w.pollers, 0) === 2 ? r : null;
      },
      20_000,
    );
    assert.deepEqual(status.workers.map((w) => w.worker), ["s1", "s2"]);
    assert.equal(status.workers.reduce((n, w) => n + w.upstreamSessions, 0), 1);
    assert.equal(status.workers.filter((w) => w.leader).length, 1);
    assert.deepEqual(status.gateways, { total: 3, enabled: 2, healthy: 1, unhealthy: 1, unknown: 0 });
    assert.equal(status.clientSessions, 0, "no client connected through the edge");

    const bad = await request(admin, s.admin.status, { verbose: true }, StatusReplySchema, 5000).catch((e: Error) => e);
    assert.match(String(bad), /invalid_request|invalid status request/);

    const cli = runCli(nats, ["status"]);
    assert.equal((await cli.exited).code, 0, cli.output());
    assert.match(cli.output(), /^s1\s+\d+\s+\d+/m);
    assert.match(cli.output(), /gateways\s+3 \(2 enabled: 1 healthy, 1 unhealthy, 0 not yet polled\)/);
    assert.match(cli.output(), new RegExp(`classifier\\s+${status.leader!.holder} \\(lease revision \\d+\\)`));
  });
});

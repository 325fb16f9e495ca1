// Streams survive their edge (issue 10, "done when"): two worker processes, an SDK client behind
// a loopback failover proxy, a 3 s tool call whose upstream session lives on worker B while the
// client's POST stream is held by worker A. A is SIGKILLed mid-call; the client, reconnecting
// through the proxy (to B), receives the call's result. Written against public behaviour only:
// the MCP endpoint, the admin session listing, the client's own reconnection.
import assert from "node:assert/strict";
import { after, before, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { startSystem, s, waitForTools, type System } from "../chaos/harness.ts";
import { sessionKey } from "../protocol/edge.ts";
import { SessionListReplySchema } from "../protocol/upstream.ts";
import { request } from "../runtime/bus.ts";
import { startFailoverProxy, type FailoverProxy } from "./helpers/failoverProxy.ts";
import { EVERYTHING, textOf } from "./helpers/fidelity.ts";
import { until } from "./helpers/wait.ts";

let sys: System;
let proxy: FailoverProxy;

before(async () => {
  sys = await startSystem({ workers: 2, env: { MCPGW_LOG_LEVEL: "warn" } });
  await sys.addGateway({ name: "everything", transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } });
  proxy = await startFailoverProxy(sys.workers.map((w) => w.edgeUrl));
});
after(async () => {
  await proxy?.close();
  await sys?.stop();
});

it("a client whose edge is killed mid-call receives the call's result from another worker", { timeout: 180_000 }, async () => {
  const transport = new StreamableHTTPClientTransport(new URL(proxy.url), {
    reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1_000, reconnectionDelayGrowFactor: 1.5, maxRetries: 10 },
  });
  const client = new Client({ name: "kill-test", version: "1.0.0" });
  const transportErrors: string[] = [];
  client.onerror = (err) => void transportErrors.push(err.message);
  await client.connect(transport);
  try {
    await waitForTools(client, ["everything__trigger-long-running-operation", "everything__echo"]);
    // open the upstream session (on whichever worker), then find which worker hosts it
    await client.callTool({ name: "everything__echo", arguments: { message: "open" } });
    const sid = sessionKey(transport.sessionId!);
    const listing = await request(sys.nc, s.admin.sessionList, { sid }, SessionListReplySchema, 20_000);
    assert.equal(listing.sessions.length, 1, JSON.stringify(listing));
    const hostId = listing.sessions[0]!.worker;
    const b = sys.workers.find((w) => w.id === hostId)!;
    const a = sys.workers.find((w) => w.id !== hostId)!;
    assert.ok(a && b, `workers ${sys.workers.map((w) => w.id)}; host ${hostId}`);
    proxy.prefer(a.edgeUrl); // the call's POST stream on A, its upstream session on B

    const progress: number[] = [];
    const call = client.callTool({ name: "everything__trigger-long-running-operation", arguments: { duration: 3, steps: 3 } }, undefined, {
      onprogress: (p) => void progress.push(p.progress),
      timeout: 30_000,
    });
    const settled = call.then(
      (r) => ({ r }),
      (err: Error) => ({ err }),
    );
    await until("the call's first progress notification (its stream is open on A)", () => progress.length > 0, 20_000);
    const routedBefore = proxy.routed.length;
    await sys.killWorker(a, "SIGKILL");
    proxy.prefer(b.edgeUrl);

    const outcome = await settled;
    const seen = `progress ${JSON.stringify(progress)}; requests after the kill ${JSON.stringify(proxy.routed.slice(routedBefore))}; client transport errors ${JSON.stringify(transportErrors)}`;
    assert.ok("r" in outcome, `the call failed: ${"err" in outcome ? outcome.err.message : ""}; ${seen}`);
    assert.match(textOf(outcome.r), /Long running operation completed/);
    assert.ok(proxy.routed.slice(routedBefore).some((r) => r.startsWith(`GET ${new URL(b.edgeUrl).host} 200 last-event-id`)), `the client resumed on B: ${seen}`);
  } finally {
    await client.close().catch(() => {});
  }
});

// The Python MCP SDK 2.3.0 client in each of its modes (a 2025-11-25 session, 2026-07-28
// stateless, `auto`), against server-everything directly, against mcpgw's two endpoints, and
// against the SDK's own stateless server. mcpgw serves both eras on the same endpoints.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { putCatalog } from "./helpers/edge.ts";
import { freePort, keepUntilExit, startNats, type TestNats } from "./helpers/nats.ts";
import { run, START_MS, type Proc } from "./helpers/processes.ts";
import { callText, pythonSkip, runPythonClients, startPythonStatelessServer, type PythonClientReport, type PythonClientRun } from "./helpers/python.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const EVERYTHING = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js");
const TOKEN = "python-client-token-a-0123456789";
const MODES = ["legacy", "2026-07-28", "auto"] as const;

/** server-everything over Streamable HTTP on a free loopback port (it reports no port of its own). */
async function startEverythingHttp(): Promise<{ url: string; proc: Proc }> {
  const port = await freePort();
  const proc = run(process.execPath, [EVERYTHING, "streamableHttp"], { PORT: String(port) });
  keepUntilExit(proc.child);
  await proc.waitFor(/listening on port/, START_MS);
  return { url: `http://127.0.0.1:${port}/mcp`, proc };
}

describe("the Python MCP SDK 2.3.0 client, each mode, direct and through mcpgw", { skip: pythonSkip() }, () => {
  let nats: TestNats;
  let everything: { url: string; proc: Proc };
  let stateless: { url: string; stop(): Promise<void> };
  let w: TestWorker;
  /** every run's report, by name: made at once in one Python process */
  const report: Record<string, PythonClientReport> = {};

  before(async () => {
    nats = await startNats();
    [everything, stateless] = await Promise.all([startEverythingHttp(), startPythonStatelessServer()]);
    w = await startTestWorker(nats, { MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: TOKEN, MCPGW_CALL_TIMEOUT: "30s" });
    const gw = await w.registry.add({ name: "everything", transport: "streamable-http", url: everything.url });
    const client = new Client({ name: "discovery", version: "1" });
    await client.connect(new StreamableHTTPClientTransport(new URL(everything.url)));
    await putCatalog(w, gw.id, await listCatalog(client, 30_000));
    await client.close();

    const virtual = w.edge.url.replace(/\/mcp$/, "/gateways/everything/mcp");
    const runs: Record<string, PythonClientRun> = {};
    for (const mode of MODES) {
      runs[`everything ${mode}`] = { url: everything.url, mode, calls: [["echo", { message: "direct" }]] };
      runs[`stateless ${mode}`] = { url: stateless.url, mode, calls: [["echo", { text: "stateless" }]] };
      runs[`/mcp ${mode}`] = { url: w.edge.url, mode, token: TOKEN, calls: [["everything__echo", { message: "through mcpgw" }]] };
      runs[`virtual ${mode}`] = { url: virtual, mode, token: TOKEN, calls: [["echo", { message: "virtual" }]] };
    }
    const names = Object.keys(runs);
    const reports = await runPythonClients(names.map((n) => runs[n]!));
    names.forEach((n, i) => (report[n] = reports[i]!));
  });
  after(async () => {
    await w?.stop();
    everything?.proc.child.kill("SIGKILL");
    await stateless?.stop();
    await nats?.stop();
  });

  it("server-everything directly: the session client and `auto` (falling back) call it; a 2026-07-28 client is refused", () => {
    for (const r of [report["everything legacy"]!, report["everything auto"]!]) {
      assert.equal(r.protocolVersion, "2025-11-25", JSON.stringify(r));
      assert.ok(r.tools?.includes("echo"));
      assert.equal(callText(r.calls?.[0]), "Echo: direct");
    }
    // the TypeScript SDK's server knows no 2026-07-28: the first request of a client that adopted it is refused
    const modern = report["everything 2026-07-28"]!;
    assert.ok(modern.error, JSON.stringify(modern));
    assert.equal(modern.tools, undefined);
  });

  it("the SDK's stateless server directly: 2026-07-28 and `auto` (which negotiates it) call it; the session client is refused", () => {
    for (const r of [report["stateless auto"]!, report["stateless 2026-07-28"]!]) {
      assert.equal(r.protocolVersion, "2026-07-28", JSON.stringify(r));
      assert.deepEqual(r.tools?.sort(), ["counter_add", "counter_new", "echo", "fail", "greet", "progress"]);
      assert.equal(r.listTtlMs, 60_000, "the list carries the revision's TTL hint");
      assert.equal(callText(r.calls?.[0]), "stateless");
    }
    assert.equal(report["stateless legacy"]!.error?.code, -32022, JSON.stringify(report["stateless legacy"]));
  });

  it("a 2025-11-25 session client lists and calls through /mcp and /gateways/everything/mcp", () => {
    const fed = report["/mcp legacy"]!;
    assert.equal(fed.protocolVersion, "2025-11-25", JSON.stringify(fed));
    assert.ok(fed.tools?.includes("everything__echo"));
    assert.equal(callText(fed.calls?.[0]), "Echo: through mcpgw");
    const virt = report["virtual legacy"]!;
    assert.equal(virt.protocolVersion, "2025-11-25", JSON.stringify(virt));
    assert.equal(callText(virt.calls?.[0]), "Echo: virtual");
  });

  it("`auto` negotiates 2026-07-28 with mcpgw and calls through both endpoints", () => {
    for (const r of [report["/mcp auto"]!, report["virtual auto"]!]) {
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.protocolVersion, "2026-07-28", JSON.stringify(r));
      assert.equal(r.listTtlMs, 60_000, "the list carries MCPGW_LIST_TTL's default as the revision's TTL hint");
    }
    assert.equal(callText(report["/mcp auto"]!.calls?.[0]), "Echo: through mcpgw");
    assert.equal(callText(report["virtual auto"]!.calls?.[0]), "Echo: virtual");
  });

  it("a 2026-07-28 client lists and calls through /mcp and /gateways/everything/mcp", () => {
    const fed = report["/mcp 2026-07-28"]!;
    assert.equal(fed.error, undefined, JSON.stringify(fed));
    assert.ok(fed.tools?.includes("everything__echo"));
    assert.equal(callText(fed.calls?.[0]), "Echo: through mcpgw");
    const virt = report["virtual 2026-07-28"]!;
    assert.equal(virt.error, undefined, JSON.stringify(virt));
    assert.equal(callText(virt.calls?.[0]), "Echo: virtual");
  });
});

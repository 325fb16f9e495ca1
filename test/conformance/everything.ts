// Runs the MCP conformance suite's server scenarios against server-everything directly and
// through the edge's per-gateway endpoint (`/gateways/everything/mcp`), and fails when a
// scenario that passes directly fails through the gateway (a gateway loses nothing).
// Usage: node --import tsx test/conformance/everything.ts [--scenario <name>]
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { GATEWAY, startEverythingHttp } from "../helpers/fidelity.ts";
import { startNats } from "../helpers/nats.ts";
import { START_MS } from "../helpers/processes.ts";
import { until } from "../helpers/wait.ts";
import { startTestWorker } from "../helpers/worker.ts";

const bin = fileURLToPath(new URL("../../node_modules/@modelcontextprotocol/conformance/dist/index.js", import.meta.url));

/** Each scenario of one run of the suite against `url`, and whether every check of it passed. */
async function runSuite(label: string, url: string): Promise<Map<string, boolean>> {
  const child = spawn(process.execPath, [bin, "server", "--url", url, ...process.argv.slice(2)], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (out += c));
  await new Promise((resolve) => child.on("exit", resolve));
  const summary = out.slice(out.lastIndexOf("=== SUMMARY ==="));
  const results = new Map<string, boolean>();
  for (const m of summary.matchAll(/^([✓✗]) (\S+): (\d+) passed, (\d+) failed/gmu)) results.set(m[2]!, m[1] === "✓" && m[4] === "0");
  if (results.size === 0) throw new Error(`no summary from the suite run ${label}: ${out.slice(-3000)}`);
  console.log(`--- ${label}: ${url}\n${summary.trim()}`);
  return results;
}

const upstream = await startEverythingHttp();
const nats = await startNats();
const worker = await startTestWorker(nats, { MCPGW_WORKER_ID: "conformance-everything" });
let code = 1;
try {
  await worker.registry.add({ name: GATEWAY, transport: "streamable-http", url: upstream.url });
  const url = worker.edge.url.replace("/mcp", `/gateways/${GATEWAY}/mcp`);
  // the poller's first discovery
  const probe = new Client({ name: "probe", version: "1" });
  await probe.connect(new StreamableHTTPClientTransport(new URL(url)));
  await until("the discovery of server-everything", async () => (await probe.listTools()).tools.some((t) => t.name === "echo"), START_MS);
  await probe.close();

  const direct = await runSuite("directly", upstream.url);
  const through = await runSuite("through mcpgw", url);
  const passing = [...direct].filter(([, ok]) => ok).map(([name]) => name);
  const lost = passing.filter((name) => through.get(name) !== true);
  console.log(`passing directly: ${passing.length} (${passing.join(", ")})`);
  console.log(`lost through the gateway: ${lost.length}${lost.length ? ` (${lost.join(", ")})` : ""}`);
  code = lost.length === 0 ? 0 : 1;
} finally {
  await worker.stop();
  await nats.stop();
  await upstream.stop();
}
process.exit(code);

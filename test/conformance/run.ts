// Runs the MCP conformance suite's server scenarios through the edge's per-gateway endpoint
// (`/gateways/conformance/mcp`) in front of test/fixtures/conformanceFixture.ts.
// Usage: npm run test:conformance [-- --scenario <name>]
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { createConformanceServer } from "../fixtures/conformanceFixture.ts";
import { putCatalog } from "../helpers/edge.ts";
import { startNats } from "../helpers/nats.ts";
import { until } from "../helpers/wait.ts";
import { startTestWorker } from "../helpers/worker.ts";

async function body(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : undefined;
}

/** The fixture over streamable HTTP, one server per upstream session. */
async function startUpstream(): Promise<{ url: string; close(): Promise<void> }> {
  const sessions = new Map<string, StreamableHTTPServerTransport>();
  const http = createServer((req, res) => {
    void (async () => {
      const sid = req.headers["mcp-session-id"];
      let t = typeof sid === "string" ? sessions.get(sid) : undefined;
      if (!t) {
        const created: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(), onsessioninitialized: (id) => void sessions.set(id, created) });
        await createConformanceServer().connect(created);
        t = created;
      }
      await t.handleRequest(req, res, req.method === "POST" ? await body(req) : undefined);
    })().catch(() => res.headersSent || res.writeHead(500).end());
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`,
    async close() {
      await Promise.allSettled([...sessions.values()].map((t) => t.close()));
      http.closeAllConnections();
      await new Promise((r) => http.close(r));
    },
  };
}

const nats = await startNats();
const upstream = await startUpstream();
const worker = await startTestWorker(nats, { MCPGW_WORKER_ID: "conformance" });
let code = 1;
try {
  const gw = await worker.registry.add({ name: "conformance", transport: "streamable-http", url: upstream.url });
  // one-shot discovery into the catalog bucket
  const client = new Client({ name: "discovery", version: "1" });
  await client.connect(new StreamableHTTPClientTransport(new URL(upstream.url)));
  const tools = (await client.listTools()).tools;
  await putCatalog(worker, gw.id, {
    tools,
    prompts: (await client.listPrompts()).prompts,
    resources: (await client.listResources()).resources,
    resourceTemplates: (await client.listResourceTemplates()).resourceTemplates,
  } as never);
  await client.close();
  // the edge learns the catalog from its KV watch: the suite starts once the edge lists it
  await until("the catalog at the edge", () => worker.edge.cache.gatewayByName("conformance") === gw.id && worker.edge.cache.view(gw.id).tools.length === tools.length, 30_000);

  const url = worker.edge.url.replace("/mcp", "/gateways/conformance/mcp");
  const expected = fileURLToPath(new URL("./expected-failures.yaml", import.meta.url));
  const bin = fileURLToPath(new URL("../../node_modules/@modelcontextprotocol/conformance/dist/index.js", import.meta.url));
  const child = spawn(process.execPath, [bin, "server", "--url", url, "--expected-failures", expected, ...process.argv.slice(2)], { stdio: "inherit" });
  code = await new Promise<number>((resolve) => child.on("exit", (c) => resolve(c ?? 1)));
} finally {
  await worker.stop();
  await upstream.close();
  await nats.stop();
}
process.exit(code);

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { freePort } from "./helpers/nats.ts";
import { ROOT, runTs, START_MS, type Proc } from "./helpers/processes.ts";

type ServerConfig = { type: string; url: string; headers?: Record<string, string> };

/** The client configuration the demo printed, with the token placeholder filled from the file it names. */
function printedConfig(output: string): ServerConfig {
  const text = output.split("Client configuration:\n")[1]!.split("\n\n")[0]!;
  const server = (JSON.parse(text) as { mcpServers: { mcpgw: ServerConfig } }).mcpServers.mcpgw;
  const headers = Object.fromEntries(
    Object.entries(server.headers ?? {}).map(([k, v]) => [k, v.replace(/<the token in (.+)>/, (_, file: string) => readFileSync(resolve(ROOT, file), "utf8").trim())]),
  );
  return { ...server, headers };
}

describe("npm run demo", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "mcpgw-demo-"));
  let demo: Proc | undefined;
  after(() => {
    demo?.child.kill("SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("serves the official SDK client, configured from the configuration it prints, with server-everything's tools", async () => {
    const env = { MCPGW_DATA_DIR: dataDir, MCPGW_NATS_PORT: String(await freePort()), MCPGW_EDGE_PORT: String(await freePort()), MCPGW_LOG_LEVEL: "warn" };
    demo = runTs("runtime/demo.ts", [], env);
    await demo.waitFor(/^mcpgw demo: gateway everything is registered and discovered/, START_MS);
    await demo.waitFor(/^Client configuration:/, START_MS);
    await demo.waitFor(/^\}$/, START_MS); // the printed block's last line
    const config = printedConfig(demo.output());
    assert.equal(config.type, "http");
    assert.match(config.headers!.Authorization!, /^Bearer \S{16,}$/, "the placeholder names the file with the token");

    const client = new Client({ name: "demo-test", version: "1.0.0" });
    await client.connect(new StreamableHTTPClientTransport(new URL(config.url), { requestInit: { headers: config.headers } }));
    const { tools } = await client.listTools();
    assert.ok(tools.some((t) => t.name === "everything__echo"), tools.map((t) => t.name).join(", "));
    const result = await client.callTool({ name: "everything__echo", arguments: { message: "hello from the demo" } });
    assert.deepEqual(result.content, [{ type: "text", text: "Echo: hello from the demo" }]);
    await client.close();

    demo.child.kill("SIGTERM");
    assert.deepEqual(await demo.exited, { code: 0, signal: null });
  });
});

import { request as httpRequest } from "node:http";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { catalogHash } from "../../actors/discovery.ts";
import type { Catalog, UpstreamEra } from "../../protocol/catalog.ts";
import type { GatewayStatus } from "../../protocol/gateway.ts";
import { KEYS } from "../../protocol/subjects.ts";
import type { Worker } from "../../runtime/worker.ts";

type Lists = Partial<Pick<Catalog, "tools" | "prompts" | "resources" | "resourceTemplates">>;

/**
 * Writes a gateway's catalog into the catalog bucket the way discovery does (used where a
 * test needs a catalog the upstream does not have, e.g. 10,000 tools), with the era discovery
 * would have found (a session upstream's, unless told).
 */
export async function putCatalog(w: Worker, gid: string, lists: Lists, era: UpstreamEra = "session"): Promise<void> {
  const body = { tools: [], prompts: [], resources: [], resourceTemplates: [], ...lists };
  const catalog: Catalog = { gid, hash: catalogHash(body), discoveredAt: new Date().toISOString(), era, ...body };
  await w.stores.catalog.put(KEYS.catalog(gid), JSON.stringify(catalog));
}

export async function putHealth(w: Worker, gid: string, health: GatewayStatus["health"]): Promise<void> {
  const status: GatewayStatus = {
    health,
    lastSuccessAt: null,
    lastError: health === "unhealthy" ? "connection refused" : null,
    consecutiveFailures: health === "unhealthy" ? 3 : 0,
    tools: 0,
    prompts: 0,
    resources: 0,
    tier: "unclassified",
    nextPollAt: null,
  };
  await w.stores.state.put(KEYS.gatewayStatus(gid), JSON.stringify(status));
}

/** An SDK client connected to `url`; `fetch` lets a test choose where each request goes. */
export async function connectClient(
  url: string,
  opts: { name?: string; token?: string; fetch?: typeof fetch } = {},
): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: opts.token ? { headers: { authorization: `Bearer ${opts.token}` } } : undefined,
    fetch: opts.fetch,
  });
  const client = new Client({ name: opts.name ?? "edge-test", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
}

export type Raw = { status: number; headers: Record<string, string | string[] | undefined>; body: string };

/**
 * One raw HTTP request to the edge (the SDK client would refuse to send most of these).
 * A response that has not ended within `timeoutMs` (an event stream that was opened) fails.
 */
export function raw(port: number, opts: { method?: string; path?: string; headers?: Record<string, string>; body?: string | Buffer; timeoutMs?: number }): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: "127.0.0.1", port, method: opts.method ?? "POST", path: opts.path ?? "/mcp", headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...opts.headers } },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.setTimeout(opts.timeoutMs ?? 30_000, () => req.destroy(new Error(`no complete answer to ${opts.method ?? "POST"} ${opts.path ?? "/mcp"} in time`)));
    req.on("error", reject);
    req.end(opts.body);
  });
}

export const INIT = JSON.stringify({
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } },
});

export { until } from "./wait.ts";

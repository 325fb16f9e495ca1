import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { catalogHash } from "../../actors/discovery.ts";
import type { Catalog } from "../../protocol/catalog.ts";
import type { GatewayStatus } from "../../protocol/gateway.ts";
import { KEYS } from "../../protocol/subjects.ts";
import type { Worker } from "../../runtime/worker.ts";

type Lists = Partial<Pick<Catalog, "tools" | "prompts" | "resources" | "resourceTemplates">>;

/**
 * Writes a gateway's catalog into the catalog bucket the way discovery does (used where a
 * test needs a catalog the upstream does not have, e.g. 10,000 tools).
 */
export async function putCatalog(w: Worker, gid: string, lists: Lists): Promise<void> {
  const body = { tools: [], prompts: [], resources: [], resourceTemplates: [], ...lists };
  const catalog: Catalog = { gid, hash: catalogHash(body), discoveredAt: new Date().toISOString(), ...body };
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

export { until } from "./wait.ts";

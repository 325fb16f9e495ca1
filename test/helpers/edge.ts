import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { catalogHash } from "../../actors/discovery.ts";
import type { Catalog, UpstreamEra } from "../../protocol/catalog.ts";
import type { GatewayStatus } from "../../protocol/gateway.ts";
import { KEYS } from "../../protocol/subjects.ts";
import { PRIMING_DELAY_MS } from "../../runtime/edge/edgeServer.ts";
import type { Worker } from "../../runtime/worker.ts";
import { until } from "./wait.ts";

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
  // the worker acts on its own copy (routes, the era of an upstream connect): held before this returns
  await until("the worker holds the catalog", () => { const held = w.ctx.catalogs.catalog(gid); return held?.discoveredAt === catalog.discoveredAt && held.hash === catalog.hash && held.era === catalog.era; }, 30_000);
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

export type SseEvent = { id?: string; data: string };

/** The events of an SSE body, in order. */
export function sseEvents(body: string): SseEvent[] {
  return body
    .split("\n\n")
    .filter((block) => block.trim() !== "")
    .map((block) => {
      const e: SseEvent = { data: "" };
      for (const line of block.split("\n")) {
        if (line.startsWith("id: ")) e.id = line.slice(4);
        if (line.startsWith("data: ")) e.data += line.slice(6);
      }
      return e;
    });
}

/**
 * A POST of one request that needs an upstream and whose answer is the first thing to say,
 * checked against the edge's rule (runtime/edge/streamableHttp.ts): one JSON response, its
 * length given, when the answer comes before the priming clock streams it; an SSE stream of
 * the priming event and then the answer alone only when the answer took longer than the
 * priming delay, which a loaded machine can make of a quick call. Resolves with the answer
 * and the response's headers.
 */
export async function soleAnswer(port: number, opts: Parameters<typeof raw>[1]): Promise<{ message: unknown; as: "json" | "sse"; headers: Raw["headers"] }> {
  const start = performance.now();
  const r = await raw(port, opts);
  const held = performance.now() - start; // at least as long as the edge held it
  assert.equal(r.status, 200, r.body);
  if (/^application\/json/.test(String(r.headers["content-type"]))) {
    assert.equal(Number(r.headers["content-length"]), Buffer.byteLength(r.body));
    return { message: JSON.parse(r.body), as: "json", headers: r.headers };
  }
  assert.match(String(r.headers["content-type"]), /^text\/event-stream/);
  // the clock streams a response a full delay after it began at the earliest (less a timer's millisecond rounding)
  assert.ok(held >= PRIMING_DELAY_MS - 5, `streamed after ${Math.round(held)} ms, before the priming delay, with nothing to say before its answer`);
  const [priming, answer, ...more] = sseEvents(r.body);
  assert.match(priming!.id!, /^[A-Za-z0-9_-]+\.0$/);
  assert.equal(priming!.data.trim(), "");
  assert.equal(answer!.id!.split(".")[0], priming!.id!.split(".")[0], "the answer on the priming event's stream");
  assert.deepEqual(more, [], "nothing after the answer");
  return { message: JSON.parse(answer!.data), as: "sse", headers: r.headers };
}

export const INIT = JSON.stringify({
  jsonrpc: "2.0",
  id: 1,
  method: "initialize",
  params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "1" } },
});

export { until } from "./wait.ts";

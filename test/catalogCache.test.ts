import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { CatalogCache } from "../runtime/edge/catalogCache.ts";
import { followGatewayRecords } from "../runtime/gatewayRecords.ts";
import { openStores, type Stores } from "../runtime/nats.ts";
import { putCatalog } from "./helpers/edge.ts";
import { startNats, watched, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { directRegistry, memoryLogger } from "./helpers/worker.ts";

describe("edge catalog cache", () => {
  let nats: TestNats;
  let stores: Stores;
  before(async () => {
    nats = await startNats();
    stores = await openStores(await nats.connect(), "cc");
  });
  after(async () => nats?.stop());

  it("watches again when a KV watch ends, and goes on seeing catalog changes", async () => {
    const registry = directRegistry(stores, "cc");
    const gw = await registry.add({ name: "alpha", transport: "streamable-http", url: "http://127.0.0.1:1/mcp" });
    const catalogWatches: Array<{ stop(): void }> = [];
    const { log, lines } = memoryLogger();
    const records = await followGatewayRecords(stores.gateways, log);
    const cache = new CatalogCache({ records: records.records, catalog: watched(stores.catalog, catalogWatches), state: stores.state }, "__", log);
    await cache.start();
    try {
      const w = { stores, ctx: { catalogs: cache } } as never;
      const tools = () => cache.view(null).tools.map((t) => t.name);
      await putCatalog(w, gw.id, { tools: [{ name: "one", inputSchema: { type: "object" } }] });
      await until("the first tool", () => tools().includes("alpha__one"));

      assert.equal(catalogWatches.length, 1);
      catalogWatches[0]!.stop(); // the watch ends (as after a stream or consumer failure)
      await putCatalog(w, gw.id, { tools: [{ name: "two", inputSchema: { type: "object" } }] });
      await until("the tool written after the watch ended", () => tools().includes("alpha__two"), 10_000);
      assert.deepEqual(tools(), ["alpha__two"]);
      assert.equal(catalogWatches.length, 2, "a new watch");
      assert.ok(lines.some((l) => l.includes("catalog watch ended; watching again")));
    } finally {
      cache.stop();
      records.stop();
    }
  });
});

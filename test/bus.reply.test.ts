// A reply past NATS's max_payload: nats.js throws from msg.respond; the caller must hear why
// (too_large) at once instead of waiting out its timeout, and the worker must not see an
// unhandled rejection.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { ProtocolError } from "../protocol/envelope.ts";
import { Refusals, request, serve } from "../runtime/bus.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { memoryLogger } from "./helpers/worker.ts";

describe("bus: a reply too large for one NATS message", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });

  it("answers too_large instead of leaving the caller to time out", async () => {
    const server = await nats.connect("runtime");
    const client = await nats.connect("runtime");
    const { log } = memoryLogger("silent");
    const rejections: unknown[] = [];
    const onRejection = (r: unknown) => void rejections.push(r);
    process.on("unhandledRejection", onRejection);
    try {
      const limit = server.info!.max_payload;
      serve(server, "mcpgw.test.big", () => "x".repeat(limit + 1), { log, refusals: new Refusals() });
      serve(server, "mcpgw.test.small", () => "fine", { log, refusals: new Refusals() });
      await server.flush();
      await assert.rejects(request(client, "mcpgw.test.big", {}, z.string(), 20_000), (err) => err instanceof ProtocolError && err.code === "too_large");
      assert.equal(await request(client, "mcpgw.test.small", {}, z.string(), 20_000), "fine", "the service still answers");
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(rejections, []);
    } finally {
      process.off("unhandledRejection", onRejection);
      await server.close();
      await client.close();
    }
  });
});

// A new upstream session's handshake has its own bound (MCPGW_CONNECT_TIMEOUT), apart from the
// call timeout: an upstream that accepts TCP but never answers `initialize` fails the session's
// first call once the handshake bound has passed, with -32000 naming the handshake, never the
// call timeout's -32001. Nor does a proxy that buffers responses, holding the headers of the
// session's standalone stream, hold its first call. A real worker on a real nats-server, an MCP
// client on its edge.
import assert from "node:assert/strict";
import { createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from "node:http";
import { createServer, type Server, type Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, putCatalog, until } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

describe("upstream connect timeout", () => {
  let nats: TestNats;
  let w: TestWorker;
  let silent: Server;
  const accepted = new Set<Socket>();
  let connections = 0;

  before(async () => {
    nats = await startNats();
    // a call budget far past the test's hang bound: a call that ends at all did not wait for it
    w = await startTestWorker(nats, { MCPGW_CONNECT_TIMEOUT: "1s", MCPGW_CALL_TIMEOUT: "10m" });
    silent = createServer((socket) => {
      connections++;
      accepted.add(socket);
      socket.on("close", () => accepted.delete(socket));
    });
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  });
  after(async () => {
    await w?.stop();
    await nats?.stop();
    for (const socket of accepted) socket.destroy();
    silent?.close();
  });

  it("fails a new session's first call at the handshake bound, with an error distinct from a call timeout", async () => {
    const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/mcp`;
    const gid = (await w.registry.add({ name: "silent", transport: "streamable-http", url })).id;
    // a catalog as discovery would have left it (the session era: the handshake is initialize)
    await putCatalog(w, gid, { tools: [{ name: "work", inputSchema: { type: "object" } }] });
    const { client } = await connectClient(w.edge.url);
    try {
      const err = await client.callTool({ name: "silent__work", arguments: {} }, undefined, { timeout: 30_000 }).then(
        () => assert.fail("the call was answered"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof McpError, String(err));
      assert.equal(err.code, -32000, err.message);
      assert.match(err.message, /gateway silent unavailable: .*MCP handshake not done within 1000 ms/);
      assert.ok(connections > 0, "the upstream accepted the connection");
    } finally {
      await client.close();
    }
  });
});

describe("upstream behind a proxy that buffers responses", () => {
  let nats: TestNats;
  let w: TestWorker;
  let fixture: FixtureHttp;
  let proxy: HttpServer;
  let streamsAsked = 0;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    // A proxy that sends a response's headers with its first byte of body, as a buffering proxy
    // does: an SSE stream's headers wait for its first event, and a quiet standalone stream has none.
    proxy = createHttpServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      if (req.method === "GET") streamsAsked++;
      const target = new URL(fixture.url("counter"));
      const out = httpRequest({ host: target.hostname, port: target.port, path: target.pathname, method: req.method, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      });
      out.on("error", () => res.destroy());
      out.end(Buffer.concat(chunks));
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    // a handshake bound well past the stream's wait (STANDALONE_WAIT_MS), well short of the test's hang bound
    w = await startTestWorker(nats, { MCPGW_CONNECT_TIMEOUT: "10s" });
  });
  after(async () => {
    await w?.stop();
    proxy?.closeAllConnections();
    proxy?.close();
    await fixture?.close();
    await nats?.stop();
  });

  it("a new session takes its first call though its standalone stream's headers never come", async () => {
    const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}/mcp`;
    const gid = (await w.registry.add({ name: "buffered", transport: "streamable-http", url })).id;
    await until("the gateway discovered", () => w.edge.cache.view(gid).toolRoutes.has("increment"), 30_000);
    const { client } = await connectClient(w.edge.url);
    try {
      const result = await client.callTool({ name: "buffered__increment", arguments: {} }, undefined, { timeout: 30_000 });
      assert.equal((result as { content: Array<{ text?: string }> }).content[0]?.text, "1");
      assert.ok(streamsAsked > 0, "the session asked for its standalone stream");
      assert.equal(w.upstream.sessions().filter((x) => x.gid === gid).length, 1);
    } finally {
      await client.close();
    }
  });
});

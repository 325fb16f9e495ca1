// The stateless path (answerStateless) behind a bare HTTP server, with a dispatch table that
// does only what this test needs (the fixture gateway's tools from its catalog, calls through
// the real upstream session actors), driven by the Python SDK 2.3.0 client in `2026-07-28` and
// `auto` mode: proof that the answers are the revision's as a real client reads them, and that
// two credentials keep their upstream state apart, before the edge itself is wired.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StatelessIdentity } from "../actors/statelessIdentity.ts";
import { subjects } from "../protocol/subjects.ts";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { answerStateless, type StatelessDeps } from "../runtime/statelessRequests.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { callText, pythonSkip, runPythonClients } from "./helpers/python.ts";
import { startTestWorker, TEST_SECRET_KEY, type TestWorker } from "./helpers/worker.ts";

describe("the stateless path, driven by the Python SDK 2.3.0 client", { skip: pythonSkip() }, () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w: TestWorker;
  let http: Server;
  let url: string;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    w = await startTestWorker(nats, { MCPGW_CALL_TIMEOUT: "30s" });
    const gid = (await w.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("py-path") })).id;
    const sdk = new Client({ name: "discovery", version: "1" });
    await sdk.connect(new StreamableHTTPClientTransport(new URL(fixture.url("py-path"))));
    const { tools } = await listCatalog(sdk, 30_000);
    await sdk.close();
    const caller = createUpstreamCaller(w.nc, subjects(), { callTimeoutMs: 30_000, log: w.log });
    const deps: StatelessDeps = {
      identity: new StatelessIdentity(TEST_SECRET_KEY),
      dispatch: async (request, ctx) => {
        if (request.method === "tools/list") return { tools };
        if (request.method !== "tools/call") throw Object.assign(new Error(`Method not found: ${request.method}`), { code: -32601 });
        const reply = await caller.call(ctx.sid, gid, { method: "tools/call", params: request.params, requestId: ctx.requestId, headers: {} }, ctx.signal);
        if ("rpcError" in reply) throw Object.assign(new Error(reply.rpcError.message), reply.rpcError);
        return reply.result;
      },
      capabilities: () => ({ tools: { listChanged: true } }),
      serverInfo: () => ({ name: "mcpgw", version: "0.1.0" }),
      listTtlMs: 30_000,
      now: () => new Date(),
    };
    http = createServer((req, res) => {
      if (req.method !== "POST") return void res.writeHead(405, { allow: "POST" }).end();
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          body = null;
        }
        const credential = (req.headers.authorization ?? "").replace(/^Bearer /, "");
        const headers = Object.fromEntries(Object.entries(req.headers).filter((e): e is [string, string] => typeof e[1] === "string"));
        void answerStateless(deps, { body, headers, credential, owner: "0".repeat(64), scope: null, signal: AbortSignal.timeout(30_000) }).then((a) =>
          a.body === null ? res.writeHead(a.status).end() : res.writeHead(a.status, { "content-type": "application/json" }).end(JSON.stringify(a.body)),
        );
      });
    });
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(http.address() as { port: number }).port}/mcp`;
  });
  after(async () => {
    http?.close();
    await w?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("`2026-07-28` and `auto` clients list and call; two credentials keep separate upstream state; one reuses its session", async () => {
    const inc = (n: number) => Array.from({ length: n }, () => ["increment", {}] as [string, Record<string, unknown>]);
    const opened = fixture.gateway("py-path").opened.length;
    const [a, b, auto] = await runPythonClients([
      { url, mode: "2026-07-28", token: "token-a-0123456789", calls: [...inc(5), ["get_count", {}]] },
      { url, mode: "2026-07-28", token: "token-b-0123456789", calls: [...inc(3), ["get_count", {}]] },
      { url, mode: "auto", token: "token-c-0123456789", calls: [["echo", { text: "auto" }]] },
    ]);
    for (const r of [a!, b!, auto!]) {
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.protocolVersion, "2026-07-28", "auto negotiates the revision when discover answers");
      assert.ok(r.tools?.includes("increment"));
      assert.equal(r.listTtlMs, 30_000);
    }
    assert.equal(callText(a!.calls?.at(-1)), "5");
    assert.equal(callText(b!.calls?.at(-1)), "3");
    assert.equal(callText(auto!.calls?.[0]), "auto");
    assert.equal(fixture.gateway("py-path").opened.length - opened, 3, "one upstream session per credential for 15 calls");
  });
});

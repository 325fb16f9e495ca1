// An upstream that speaks only MCP 2026-07-28 (the Python SDK's stateless server), registered
// through `mcpgw.admin.gateway.add` next to server-everything (a 2025-11-25 session server) on
// the same worker: discovery finds each one's era, lists and health-checks it; session clients
// (the TypeScript SDK) and stateless clients (the Python SDK in `2026-07-28` mode) call it
// through `/mcp` and `/gateways/<name>/mcp`, with progress, cancellation and its own errors.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema, McpError } from "@modelcontextprotocol/sdk/types.js";
import type { NatsConnection } from "@nats-io/transport-node";
import { CatalogSchema } from "../protocol/catalog.ts";
import { GatewayViewSchema, type GatewayView } from "../protocol/gateway.ts";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { encodeJson, unwrapReply } from "../runtime/bus.ts";
import { connectStatelessUpstream } from "../runtime/revision2026Upstream.ts";
import { connectClient, until } from "./helpers/edge.ts";
import { startEverythingHttp } from "./helpers/fidelity.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { START_MS } from "./helpers/processes.ts";
import { callText, pythonSkip, runPythonClients, startPythonStatelessServer } from "./helpers/python.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const TOKENS = ["token-a-0123456789", "token-b-0123456789"];
const s = subjects();
const text = (r: object) => ((r as { content?: Array<{ text?: string }> }).content ?? [])[0]?.text ?? "";

describe("an upstream that speaks only 2026-07-28, beside a session-era one", { skip: pythonSkip() }, () => {
  let nats: TestNats;
  let admin: NatsConnection;
  let py: { url: string; stop(): Promise<void> };
  let everything: { url: string; stop(): Promise<void> };
  let w: TestWorker;
  const gids: Record<string, string> = {};
  const clients: Client[] = [];

  const adminRequest = async (op: "add" | "get", body: unknown): Promise<GatewayView> =>
    unwrapReply((await admin.request(s.admin.gateway(op), encodeJson(body), { timeout: 20_000 })).data, GatewayViewSchema);
  const session = async (path = "/mcp", token = TOKENS[0]!) => {
    const { client } = await connectClient(w.edge.url.replace(/\/mcp$/, path), { token });
    clients.push(client);
    return client;
  };

  before(async () => {
    nats = await startNats();
    [py, everything] = await Promise.all([startPythonStatelessServer(), startEverythingHttp()]);
    // health checks every 2 s, so the first one comes soon after the discovery a new gateway gets at once
    w = await startTestWorker(nats, { MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: TOKENS.join(","), MCPGW_CALL_TIMEOUT: "30s", MCPGW_HEALTH_INTERVAL: "2s" });
    admin = await nats.connect("admin");
    for (const [name, url] of [["pystateless", py.url], ["everything", everything.url]] as const) {
      gids[name] = (await adminRequest("add", { name, transport: "streamable-http", url })).id;
    }
  });
  after(async () => {
    await Promise.allSettled(clients.map((c) => c.close()));
    await admin?.close();
    await w?.stop();
    await Promise.allSettled([py?.stop(), everything?.stop()]);
    await nats?.stop();
  });

  it("discovery finds each gateway's era, lists its tools and checks its health", async () => {
    const catalogOf = async (gid: string) => {
      const e = await w.stores.catalog.get(KEYS.catalog(gid));
      return e?.operation === "PUT" ? CatalogSchema.parse(e.json()) : null;
    };
    const stateless = await until("the stateless gateway's discovery", () => catalogOf(gids.pystateless!), START_MS);
    assert.equal(stateless.era, "stateless");
    assert.deepEqual(stateless.tools.map((t) => t.name).sort(), ["counter_add", "counter_new", "echo", "fail", "greet", "progress"]);
    const sessionEra = await until("server-everything's discovery", () => catalogOf(gids.everything!), START_MS);
    assert.equal(sessionEra.era, "session");
    assert.ok(sessionEra.tools.some((t) => t.name === "echo"));
    for (const name of ["pystateless", "everything"]) {
      const view = await until(`${name} healthy`, async () => {
        const v = await adminRequest("get", { name });
        return v.status?.health === "healthy" && v.status.lastSuccessAt !== null ? v : null;
      }, 60_000);
      assert.equal(view.status!.lastError, null);
    }
  });

  it("a session client calls it through /mcp and its own endpoint: results, explicit state, progress, tool errors", async () => {
    const client = await session();
    const names = (await client.listTools()).tools.map((t) => t.name);
    assert.ok(names.includes("pystateless__echo") && names.includes("everything__echo"), names.join(", "));
    assert.equal(text(await client.callTool({ name: "pystateless__echo", arguments: { text: "über" } })), "über");
    assert.equal(text(await client.callTool({ name: "everything__echo", arguments: { message: "beside" } })), "Echo: beside");
    const handle = text(await client.callTool({ name: "pystateless__counter_new", arguments: {} }));
    await client.callTool({ name: "pystateless__counter_add", arguments: { handle, by: 2 } });
    assert.equal(text(await client.callTool({ name: "pystateless__counter_add", arguments: { handle, by: 3 } })), "5");

    const progress: number[] = [];
    const done = await client.callTool({ name: "pystateless__progress", arguments: { steps: 3 } }, undefined, { onprogress: (p) => void progress.push(p.progress) });
    assert.equal(text(done), "done 3");
    assert.deepEqual(progress, [1, 2, 3]);

    const own = await session("/gateways/pystateless/mcp");
    assert.ok((await own.listTools()).tools.some((t) => t.name === "counter_add"));
    assert.equal(text(await own.callTool({ name: "counter_add", arguments: { handle, by: 1 } })), "6", "the handle is the upstream's state, whichever client session carries it");
  });

  /** What the upstream answers when asked directly, without mcpgw. */
  const directly = async (method: string, params: Record<string, unknown>) => {
    const direct = await connectStatelessUpstream({
      record: { ...(await adminRequest("get", { name: "pystateless" })), auth: { type: "none" } } as never,
      open: () => assert.fail("no secrets"),
      capabilities: {},
      initialHeaders: {},
      timeoutMs: 30_000,
      outbound: { deny: [] },
      onNotification: () => {},
    });
    try {
      return await direct.request({ method, params }, { headers: {}, signal: AbortSignal.timeout(30_000) });
    } finally {
      await direct.close();
    }
  };

  it("its errors reach the client as the upstream sent them", async () => {
    const wantTool = await directly("tools/call", { name: "fail", arguments: { message: "boom" } });
    const wantRpc = await directly("prompts/get", { name: "no-such-prompt" });
    assert.ok("result" in wantTool && "rpcError" in wantRpc);

    const own = await session("/gateways/pystateless/mcp");
    const tool = await own.callTool({ name: "fail", arguments: { message: "boom" } });
    assert.equal(tool.isError, true);
    assert.deepEqual(tool.content, wantTool.result.content);
    // a prompt its catalog does not list goes to the upstream on the gateway's own endpoint
    const err = await own.getPrompt({ name: "no-such-prompt" }).then(
      () => assert.fail("the upstream refuses an unknown prompt"),
      (e: unknown) => e as McpError,
    );
    assert.ok(err instanceof McpError);
    assert.equal(err.code, wantRpc.rpcError.code);
    assert.equal(err.message, `MCP error ${wantRpc.rpcError.code}: ${wantRpc.rpcError.message}`);
  });

  it("a cancelled call ends, and the upstream session goes on serving", async () => {
    const client = await session();
    const abort = new AbortController();
    const seen: number[] = [];
    const pending = client.callTool({ name: "pystateless__progress", arguments: { steps: 100, pause: 0.2 } }, undefined, {
      signal: abort.signal,
      onprogress: (p) => {
        seen.push(p.progress);
        if (p.progress === 2) abort.abort(new Error("cancelled by the test"));
      },
    });
    await assert.rejects(pending, /cancelled by the test/);
    assert.ok(seen.length < 100);
    assert.equal(text(await client.callTool({ name: "pystateless__echo", arguments: { text: "after" } })), "after");
  });

  it("its input_required reaches a session client as an elicitation, whose answer goes back in the repeated request", async () => {
    const client = new Client({ name: "eliciting", version: "1" }, { capabilities: { elicitation: { form: {} } } });
    const asked: string[] = [];
    client.setRequestHandler(ElicitRequestSchema, async (req) => {
      asked.push(req.params.message);
      return { action: "accept", content: { name: "Ada" } };
    });
    await client.connect(new StreamableHTTPClientTransport(new URL(w.edge.url), { requestInit: { headers: { authorization: `Bearer ${TOKENS[0]}` } } }));
    clients.push(client);
    assert.equal(text(await client.callTool({ name: "pystateless__greet", arguments: {} })), "Hello, Ada!");
    assert.deepEqual(asked, ["What is your name?"]);
    // a client that cannot be asked gets what the upstream answers such a client
    const want = await directly("tools/call", { name: "greet", arguments: {} });
    const plain = await session();
    const got = await plain.callTool({ name: "pystateless__greet", arguments: {} }).then(
      (r) => ({ result: r }),
      (e: unknown) => ({ rpcError: { code: (e as McpError).code, message: (e as McpError).message } }),
    );
    if ("rpcError" in want) assert.deepEqual(got, { rpcError: { code: want.rpcError.code, message: `MCP error ${want.rpcError.code}: ${want.rpcError.message}` } });
    else assert.deepEqual("result" in got && got.result.content, want.result.content);
  });

  it("a Python client in 2026-07-28 mode lists and calls it through /mcp and /gateways/pystateless/mcp", async () => {
    const virtual = w.edge.url.replace(/\/mcp$/, "/gateways/pystateless/mcp");
    const [fed, own] = await runPythonClients([
      { url: w.edge.url, mode: "2026-07-28", token: TOKENS[0], calls: [["pystateless__echo", { text: "fed" }], ["everything__echo", { message: "fed" }], ["pystateless__fail", { message: "bad" }]] },
      { url: virtual, mode: "2026-07-28", token: TOKENS[1], calls: [["progress", { steps: 2 }], ["counter_new", {}]] },
    ]);
    for (const r of [fed!, own!]) {
      assert.equal(r.error, undefined, JSON.stringify(r));
      assert.equal(r.protocolVersion, "2026-07-28");
    }
    assert.ok(fed!.tools?.includes("pystateless__counter_add") && fed!.tools.includes("everything__echo"), JSON.stringify(fed!.tools));
    assert.equal(callText(fed!.calls?.[0]), "fed");
    assert.equal(callText(fed!.calls?.[1]), "Echo: fed");
    assert.equal(fed!.calls?.[2]?.result?.isError, true, JSON.stringify(fed!.calls?.[2]));
    const wantTool = await directly("tools/call", { name: "fail", arguments: { message: "bad" } });
    assert.ok("result" in wantTool);
    assert.equal(callText(fed!.calls?.[2]), text(wantTool.result), "the upstream's own tool error");
    assert.ok(own!.tools?.includes("counter_add"), JSON.stringify(own!.tools));
    assert.equal(callText(own!.calls?.[0]), "done 2");
    assert.match(callText(own!.calls?.[1]), /^[0-9a-f]{16}$/);
  });
});

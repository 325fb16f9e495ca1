// The stateless (2026-07-28) path beyond one JSON answer, through a real worker: progress before
// the answer (SSE), an upstream's requests answered as `input_required` rounds that reach the
// call still waiting upstream, the client's capabilities declared upstream (server-everything
// offers its elicitation and sampling tools only to a client that declared them), attacks on
// `requestState`, and `subscriptions/listen` fed by the catalog's changes. Driven by the Python
// SDK 2.3.0 client in `2026-07-28` mode, on `/mcp` and `/gateways/<name>/mcp`.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { META } from "../protocol/revision2026.ts";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { putCatalog } from "./helpers/edge.ts";
import { EVERYTHING } from "./helpers/fidelity.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { callText, pythonSkip, runPythonClients, startPythonListener } from "./helpers/python.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const TOKENS = ["token-a-0123456789", "token-b-0123456789", "token-c-0123456789"] as const;

type Rpc = { jsonrpc: "2.0"; id?: unknown; result?: Record<string, unknown>; error?: { code: number; message: string } };

/** One 2026-07-28 POST as a client sends it; the answer's JSON-RPC message (an SSE answer's last event) and what came before it. */
async function post(url: string, token: string, method: string, params: Record<string, unknown>, capabilities: Record<string, unknown> = {}): Promise<{ status: number; answer: Rpc; before: Rpc[] }> {
  const res = await fetch(url, {
    method: "POST",
    headers: {
      authorization: `Bearer ${token}`,
      accept: "application/json, text/event-stream",
      "content-type": "application/json",
      "mcp-protocol-version": "2026-07-28",
      "mcp-method": method,
      ...(typeof params.name === "string" ? { "mcp-name": params.name } : {}),
    },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params: { ...params, _meta: { [META.protocolVersion]: "2026-07-28", [META.clientCapabilities]: capabilities } } }),
  });
  const text = await res.text();
  if (!(res.headers.get("content-type") ?? "").startsWith("text/event-stream")) return { status: res.status, answer: JSON.parse(text) as Rpc, before: [] };
  assert.doesNotMatch(text, /^id:/m, "the revision's streams carry no event ids");
  const events = text.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)) as Rpc);
  return { status: res.status, answer: events.at(-1)!, before: events.slice(0, -1) };
}

describe("the stateless path's streams, server requests and listen, driven by the Python SDK 2.3.0 client", { skip: pythonSkip() }, () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w: TestWorker;
  let counterGid: string;
  let virtual: (name: string) => string;

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    w = await startTestWorker(nats, { MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: TOKENS.join(","), MCPGW_CALL_TIMEOUT: "30s", MCPGW_LIST_TTL: "30s" });
    virtual = (name) => w.edge.url.replace(/\/mcp$/, `/gateways/${name}/mcp`);
    counterGid = (await w.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("py-stream") })).id;
    const sdk = new Client({ name: "discovery", version: "1" });
    await sdk.connect(new StreamableHTTPClientTransport(new URL(fixture.url("py-stream"))));
    await putCatalog(w, counterGid, await listCatalog(sdk, 30_000));
    await sdk.close();
    const everything = await w.registry.add({ name: "everything", transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } });
    const direct = new Client({ name: "discovery", version: "1" });
    await direct.connect(new StdioClientTransport({ command: process.execPath, args: [EVERYTHING, "stdio"], stderr: "ignore" }));
    await putCatalog(w, everything.id, await listCatalog(direct, 30_000));
    await direct.close();
  });
  after(async () => {
    await w?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("progress comes before the answer, on both endpoints; an upstream's elicitation and sampling are input_required rounds the client answers", async () => {
    const [progress, elicited, sampled, refused] = await runPythonClients([
      { url: w.edge.url, mode: "2026-07-28", token: TOKENS[0], progress: true, calls: [["counter__progress", { steps: 3 }]] },
      { url: virtual("everything"), mode: "2026-07-28", token: TOKENS[0], elicit: { name: "Ada Lovelace" }, calls: [["trigger-elicitation-request", {}]] },
      { url: w.edge.url, mode: "2026-07-28", token: TOKENS[1], sample: "sampled by python", calls: [["everything__trigger-sampling-request", { prompt: "hi", maxTokens: 5 }], ["counter__sample", { prompt: "again" }]] },
      // no elicitation declared: server-everything offers no such tool to its upstream session, and the fixture's request is refused by mcpgw
      { url: virtual("counter"), mode: "2026-07-28", token: TOKENS[0], calls: [["elicit", {}]] },
    ]);
    for (const r of [progress, elicited, sampled, refused]) assert.equal(r!.error, undefined, JSON.stringify(r));
    assert.equal(callText(progress!.calls![0]), "done 3");
    assert.deepEqual(progress!.calls![0]!.progress, [1, 2, 3], "every progress notice, before the answer");
    assert.equal(elicited!.asked?.elicitation, 1, JSON.stringify(elicited));
    assert.match(JSON.stringify(elicited!.calls![0]!.result), /Ada Lovelace/, "the client's answer reached the call waiting upstream");
    assert.equal(sampled!.asked?.sampling, 2, JSON.stringify(sampled));
    assert.match(JSON.stringify(sampled!.calls![0]!.result), /sampled by python/);
    assert.match(callText(sampled!.calls![1]), /sampled by python/);
    assert.match(callText(refused!.calls![0]), /-32601/, "an upstream's request the client declared no capability for is refused, as by such a client");
    assert.equal(refused!.asked?.elicitation, 0);
  });

  it("a requestState from another credential, altered, or replayed after its call ended is refused with -32602 and changes nothing", async () => {
    const caps = { elicitation: {} };
    const calls = fixture.gateway("py-stream").stats.calls.elicit ?? 0;
    const first = await post(w.edge.url, TOKENS[0], "tools/call", { name: "counter__elicit", arguments: {} }, caps);
    assert.equal(first.answer.result?.resultType, "input_required", JSON.stringify(first.answer));
    const state = first.answer.result!.requestState as string;
    const [key] = Object.keys(first.answer.result!.inputRequests as Record<string, unknown>);
    const answer = (content: Record<string, unknown>) => ({ [key!]: { action: "accept", content } });
    const repeat = (token: string, requestState: string, content: Record<string, unknown>) =>
      post(w.edge.url, token, "tools/call", { name: "counter__elicit", arguments: {}, requestState, inputResponses: answer(content) }, caps);

    const foreign = await repeat(TOKENS[1], state, { name: "mallory" });
    const altered = await repeat(TOKENS[0], `${state.slice(0, 8)}${state[8] === "A" ? "B" : "A"}${state.slice(9)}`, { name: "mallory" });
    const unasked = await post(w.edge.url, TOKENS[0], "tools/call", { name: "counter__elicit", arguments: {}, requestState: state, inputResponses: { "mcpgw.0000000000000000.x.1": {} } }, caps);
    for (const r of [foreign, altered, unasked]) assert.deepEqual([r.status, r.answer.error?.code], [400, -32602], JSON.stringify(r.answer));

    // the call still waits for its own client's answer: the refused ones changed nothing
    const own = await repeat(TOKENS[0], state, { name: "ada" });
    assert.equal(own.answer.result?.resultType, "complete", JSON.stringify(own.answer));
    assert.match(JSON.stringify(own.answer.result), /ada/);
    assert.doesNotMatch(JSON.stringify(own.answer.result), /mallory/);
    const replayed = await repeat(TOKENS[0], state, { name: "mallory" });
    assert.deepEqual([replayed.status, replayed.answer.error?.code], [400, -32602], JSON.stringify(replayed.answer));
    assert.equal((fixture.gateway("py-stream").stats.calls.elicit ?? 0) - calls, 1, "one upstream call for the whole exchange");
  });

  it("subscriptions/listen acknowledges what mcpgw honours and delivers the catalog's list changes and the upstream's resource updates", async () => {
    const listener = startPythonListener({ url: w.edge.url, mode: "2026-07-28", token: TOKENS[2], listen: { tools: true, uris: ["fixture://info", "nowhere://x"], events: 2 } });
    const honored = await listener.honored;
    assert.deepEqual(honored, { toolsListChanged: true, resourceSubscriptions: ["fixture://info"] }, "a URI no gateway serves is left out of the acknowledgment");
    // the same credential's call: its upstream session subscribed for the listen stream
    const [touched] = await runPythonClients([{ url: w.edge.url, mode: "2026-07-28", token: TOKENS[2], calls: [["counter__touch", { uri: "fixture://info" }]] }]);
    assert.equal(callText(touched!.calls![0]), "notified", JSON.stringify(touched));
    const sdk = new Client({ name: "discovery", version: "1" });
    await sdk.connect(new StreamableHTTPClientTransport(new URL(fixture.url("py-stream"))));
    const lists = await listCatalog(sdk, 30_000);
    await sdk.close();
    await putCatalog(w, counterGid, { ...lists, tools: [...lists.tools, { name: "added_later", inputSchema: { type: "object" } }] });
    const report = await listener.report;
    assert.equal(report.error, undefined, JSON.stringify(report));
    assert.deepEqual(report.events?.slice().sort(), ["ResourceUpdated", "ToolsListChanged"]);
  });
});

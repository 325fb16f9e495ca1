// A result the worker does not change reaches the client as the bytes the upstream wrote (issue 11:
// the answer is not encoded again in process), through a real worker on a real nats-server, from
// the raw upstream over HTTP. A result the worker changes, or text it does not hand through
// (line breaks), is encoded as before: the client's answer is the same JSON.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { startRawUpstream, VERBATIM_RESULT, type RawUpstream } from "./fixtures/rawUpstream.ts";
import { INIT, raw } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
/** hang bound of one step */
const BOUND_MS = 30_000;

describe("a relayed result as the upstream wrote it", () => {
  let nats: TestNats;
  let upstream: RawUpstream;
  let worker: TestWorker;

  before(async () => {
    nats = await startNats();
    upstream = await startRawUpstream();
    worker = await startTestWorker(nats);
    const admin = await nats.connect("admin");
    await request(admin, s.admin.gateway("add"), { name: "raw", transport: "streamable-http", url: upstream.url }, GatewayViewSchema, BOUND_MS);
    await admin.close();
  });
  after(async () => {
    await worker?.stop();
    await upstream?.close();
    await nats?.stop();
  });

  /** An initialized session on the gateway's own endpoint, and a tools/call of it answered (its raw body). */
  async function call(args: Record<string, unknown>): Promise<string> {
    const path = "/gateways/raw/mcp";
    const init = await raw(worker.edge.port, { path, body: INIT, timeoutMs: BOUND_MS });
    assert.equal(init.status, 200);
    const headers = { "mcp-session-id": String(init.headers["mcp-session-id"]), "mcp-protocol-version": "2025-06-18" };
    await raw(worker.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }) });
    const answer = await raw(worker.edge.port, { path, headers, body: JSON.stringify({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "verbatim", arguments: args } }), timeoutMs: BOUND_MS });
    assert.equal(answer.status, 200);
    return answer.headers["content-type"] === "application/json" ? answer.body : /data: (.*)\n/.exec(answer.body.split("event: message")[1] ?? "")![1]!;
  }

  it("an unchanged result: the client's answer carries the upstream's text byte for byte", async () => {
    const body = await call({});
    assert.equal(body, `{"jsonrpc":"2.0","id":7,"result":${VERBATIM_RESULT}}`);
    assert.equal((JSON.parse(body) as { result: { content: Array<{ text: string }> } }).result.content[0]!.text, "café / ok");
  });

  it("a result with line breaks: encoded as before, the same JSON", async () => {
    const body = await call({ pretty: true });
    assert.deepEqual(JSON.parse(body), { jsonrpc: "2.0", id: 7, result: JSON.parse(VERBATIM_RESULT) });
    assert.equal(body, JSON.stringify({ jsonrpc: "2.0", id: 7, result: JSON.parse(VERBATIM_RESULT) }));
  });
});

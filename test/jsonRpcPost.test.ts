// The one way the gateway POSTs JSON-RPC to an upstream (runtime/upstream/jsonRpcPost.ts), against
// real HTTP servers on loopback, over the guarded keep-alive agent the worker uses: JSON and SSE
// answers (other messages handed on, the rest of the stream read so the socket is reused), the
// bound, the deadline, an error at a 4xx, and attacks (a denied address, a redirect to another
// origin). Then the 2026-07-28 connection over it against a lean stateless upstream (the Python
// server's tests need a venv; this one runs everywhere).
import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import { DEFAULT_OUTBOUND_POLICY } from "../actors/outboundPolicy.ts";
import { AnswerTooLargeError, sharedUpstreamAgent } from "../runtime/mcpClient.ts";
import { OutboundRefusedError } from "../runtime/outboundConnector.ts";
import { checkStatelessUpstream, connectStatelessUpstream } from "../runtime/revision2026Upstream.ts";
import { DeadlineError, postJsonRpc } from "../runtime/upstream/jsonRpcPost.ts";
import { gatewayRecord } from "./helpers/gateways.ts";

type Rpc = { id?: number | string; method?: string; params?: Record<string, unknown> };
type Served = { server: Server; url: string; sockets: Set<Socket>; requests: number; closed: number };

/** A loopback server that answers each POST with `answer(message, res)`, counting its sockets. */
async function serve(answer: (m: Rpc, res: ServerResponse, req: IncomingMessage) => void): Promise<Served> {
  const s: Served = { server: undefined as unknown as Server, url: "", sockets: new Set(), requests: 0, closed: 0 };
  s.server = createServer((req, res) => {
    s.requests++;
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c)).on("end", () => answer(chunks.length ? (JSON.parse(Buffer.concat(chunks).toString("utf8")) as Rpc) : {}, res, req));
  });
  s.server.on("connection", (socket: Socket) => {
    s.sockets.add(socket);
    socket.on("close", () => s.closed++);
  });
  await new Promise<void>((r) => s.server.listen(0, "127.0.0.1", r));
  s.url = `http://127.0.0.1:${(s.server.address() as AddressInfo).port}/mcp`;
  return s;
}
const stop = async (s: Served | undefined) => {
  s?.server.closeAllConnections();
  await new Promise((r) => s?.server.close(r));
};
const json = (res: ServerResponse, value: unknown, status = 200) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(value));
const sse = (res: ServerResponse) => res.writeHead(200, { "content-type": "text/event-stream" });
const event = (res: ServerResponse, value: unknown) => res.write(`event: message\ndata: ${JSON.stringify(value)}\n\n`);

const agent = sharedUpstreamAgent(DEFAULT_OUTBOUND_POLICY);
after(() => agent.close());
const body = (id: number, method = "ping") => JSON.stringify({ jsonrpc: "2.0", id, method });
const post = (url: string, id: number, extra: Partial<Parameters<typeof postJsonRpc>[0]> = {}) => postJsonRpc({ dispatcher: agent, url: new URL(url), headers: {}, body: body(id), id, ...extra });

describe("a JSON-RPC POST to an upstream", () => {
  let up: Served;
  /** ids of the SSE answers whose stream sent its last event (50 ms after the answer) */
  const trailed = new Set<unknown>();
  before(async () => {
    up = await serve((m, res) => {
      switch (m.method) {
        case "json":
          return json(res, { jsonrpc: "2.0", id: m.id, result: { via: "json" } });
        case "sse":
          // a notification and a request before the answer, an event after it, then the end
          sse(res);
          event(res, { jsonrpc: "2.0", method: "notifications/progress", params: { progress: 1 } });
          event(res, { jsonrpc: "2.0", id: "s1", method: "elicitation/create", params: {} });
          event(res, { jsonrpc: "2.0", id: m.id, result: { via: "sse" } });
          return setTimeout(() => {
            trailed.add(m.id);
            event(res, { jsonrpc: "2.0", method: "notifications/message", params: {} });
            res.end();
          }, 50);
        case "error400":
          return json(res, { jsonrpc: "2.0", id: m.id, error: { code: -32602, message: "bad params", data: { field: "x" } } }, 400);
        case "page":
          return void res.writeHead(502, { "content-type": "text/html" }).end("<h1>bad gateway</h1>");
        case "big":
          return json(res, { jsonrpc: "2.0", id: m.id, result: { text: "x".repeat(100_000) } });
        case "hang":
          return; // never answers
        case "answerThenHang":
          sse(res);
          return event(res, { jsonrpc: "2.0", id: m.id, result: {} }); // and keeps the stream open
        default:
          return json(res, { jsonrpc: "2.0", id: m.id, error: { code: -32601, message: "no" } });
      }
    });
  });
  after(() => stop(up));
  const call = (method: string, id: number, extra: Partial<Parameters<typeof postJsonRpc>[0]> = {}) => post(up.url, id, { body: body(id, method), ...extra });

  it("reads a JSON answer, and an SSE stream's answer with what came before it handed on", async () => {
    const j = await call("json", 1);
    assert.deepEqual([j.status, j.type, j.answer], [200, "application/json", { jsonrpc: "2.0", id: 1, result: { via: "json" } }]);
    const others: Array<Record<string, unknown>> = [];
    const s = await call("sse", 2, { onMessage: (m) => others.push(m) });
    assert.deepEqual(s.answer, { jsonrpc: "2.0", id: 2, result: { via: "sse" } });
    assert.deepEqual(
      others.map((m) => m.method),
      ["notifications/progress", "elicitation/create"],
    );
  });

  it("reads a stream to its end after the answer, so its socket is kept and reused", async () => {
    const closed = up.closed;
    // the answer is handed on at once; each stream's last event comes 50 ms after it (later on a loaded machine)
    for (let id = 10; id < 15; id++) await call("sse", id);
    const ids = [10, 11, 12, 13, 14];
    const bound = Date.now() + 20_000;
    while (!ids.every((id) => trailed.has(id)) && Date.now() < bound) await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(ids.filter((id) => trailed.has(id)), ids);
    // the client reads each stream's tail on its own time (late on a loaded machine): wait until
    // the agent has no request running on that origin, i.e. every socket went back to the pool
    const origin = new URL(up.url).origin;
    while ((agent.stats[origin]?.running ?? 0) > 0 && Date.now() < bound) await new Promise((res) => setTimeout(res, 20));
    assert.equal(agent.stats[origin]?.running, 0, "a stream is still being read");
    // every stream was read to its end: no socket was closed, and the next requests open none
    const sockets = up.sockets.size;
    for (let id = 15; id < 21; id++) await call(id % 2 ? "json" : "sse", id);
    assert.equal(up.closed, closed, "a socket was closed");
    assert.equal(up.sockets.size, sockets, `6 requests after the streams ended opened ${up.sockets.size - sockets} sockets`);
  });

  it("hands on an error answered at a 4xx with its status, and a bare status page as no answer", async () => {
    const e = await call("error400", 3);
    assert.equal(e.status, 400);
    assert.deepEqual(e.answer, { jsonrpc: "2.0", id: 3, error: { code: -32602, message: "bad params", data: { field: "x" } } });
    const p = await call("page", 4);
    assert.deepEqual([p.status, p.type, p.answer], [502, "text/html", undefined]);
  });

  it("ends an answer past the bound where it is, with the caller's error", async () => {
    await assert.rejects(call("big", 5, { maxBytes: 10_000, tooLarge: (bytes, limit) => new AnswerTooLargeError(bytes, limit) }), AnswerTooLargeError);
    const ok = await call("big", 6, { maxBytes: 200_000 });
    assert.equal(((ok.answer?.result as { text: string }).text).length, 100_000);
  });

  it("ends at the deadline: no answer is a DeadlineError; an answered stream left open is cut there", async () => {
    await assert.rejects(call("hang", 7, { deadlineMs: 200 }), DeadlineError);
    const closed = up.closed;
    const r = await call("answerThenHang", 8, { deadlineMs: 300 });
    assert.deepEqual(r.answer, { jsonrpc: "2.0", id: 8, result: {} });
    const bound = Date.now() + 20_000;
    while (up.closed === closed && Date.now() < bound) await new Promise((res) => setTimeout(res, 50));
    assert.ok(up.closed > closed, "the open stream's socket was closed at the deadline");
  });

  it("ends at once when the caller's signal aborts, with its reason", async () => {
    const ac = new AbortController();
    const pending = call("hang", 9, { signal: ac.signal });
    setTimeout(() => ac.abort(new Error("caller gave up")), 50);
    await assert.rejects(pending, /caller gave up/);
  });
});

describe("attack: a JSON-RPC POST to an address the outbound policy denies", () => {
  let up: Served;
  let elsewhere: Served;
  before(async () => {
    elsewhere = await serve((m, res) => json(res, { jsonrpc: "2.0", id: m.id, result: {} }));
    up = await serve((_m, res) => void res.writeHead(307, { location: elsewhere.url }).end());
  });
  after(() => Promise.all([stop(up), stop(elsewhere)]));

  it("is refused before connecting: loopback denied, the server never contacted", async () => {
    const denying = sharedUpstreamAgent({ deny: ["loopback"] });
    try {
      const before = elsewhere.requests;
      await assert.rejects(postJsonRpc({ dispatcher: denying, url: new URL(elsewhere.url), headers: {}, body: body(1), id: 1 }), OutboundRefusedError);
      assert.equal(elsewhere.requests, before);
    } finally {
      await denying.close();
    }
  });

  it("a redirect to another origin is not followed", async () => {
    const r = await post(up.url, 2);
    assert.deepEqual([r.status, r.answer], [307, undefined]);
    assert.equal(elsewhere.requests, 0);
  });
});

describe("the 2026-07-28 connection over it, against a lean stateless upstream", () => {
  let up: Served;
  let frozen = false;
  const seen: Array<Record<string, string | string[] | undefined>> = [];
  before(async () => {
    up = await serve((m, res, req) => {
      seen.push(req.headers);
      if (m.method === "server/discover") {
        if (frozen) return;
        return json(res, { jsonrpc: "2.0", id: m.id, result: { supportedVersions: ["2026-07-28"], capabilities: { tools: {} }, resultType: "complete", ttlMs: 0, cacheScope: "private" } });
      }
      const name = (m.params as { name?: string }).name;
      if (name === "fail") return json(res, { jsonrpc: "2.0", id: m.id, error: { code: -32602, message: "unknown tool", data: { name } } }, 404);
      sse(res);
      const token = ((m.params as { _meta?: { progressToken?: string } })._meta ?? {}).progressToken;
      if (token) event(res, { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: token, progress: 1, total: 2 } });
      event(res, { jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "hi" } });
      event(res, { jsonrpc: "2.0", id: m.id, result: { content: [{ type: "text", text: "done" }] } });
      res.end();
    });
  });
  after(() => stop(up));

  it("discovers, calls with progress and notifications from the call's stream, and passes the upstream's error unchanged", async () => {
    const notes: string[] = [];
    const conn = await connectStatelessUpstream({
      record: gatewayRecord({ name: "lean", transport: "streamable-http", url: up.url }),
      open: () => assert.fail("no secrets"),
      capabilities: {},
      initialHeaders: {},
      timeoutMs: 20_000,
      outbound: DEFAULT_OUTBOUND_POLICY,
      dispatcher: agent,
      onNotification: (n) => void notes.push(n.method),
    });
    try {
      assert.equal(conn.version, "2026-07-28");
      const progress: number[] = [];
      const r = await conn.request({ method: "tools/call", params: { name: "echo", arguments: {} } }, { headers: {}, signal: new AbortController().signal, onprogress: (p) => void progress.push(p.progress) });
      assert.deepEqual(r, { result: { content: [{ type: "text", text: "done" }] } });
      assert.deepEqual(progress, [1]);
      assert.deepEqual(notes, ["notifications/message"]);
      assert.equal(seen.at(-1)!["mcp-method"], "tools/call");
      const e = await conn.request({ method: "tools/call", params: { name: "fail", arguments: {} } }, { headers: {}, signal: new AbortController().signal });
      assert.deepEqual(e, { rpcError: { code: -32602, message: "unknown tool", data: { name: "fail" } } });

      // a health check bounded by its deadline alone reports a timeout as the SDK does
      frozen = true;
      const err = await checkStatelessUpstream(conn, 200).then(() => assert.fail("answered"), (x: unknown) => x);
      assert.ok(err instanceof McpError && err.code === ErrorCode.RequestTimeout, String(err));
    } finally {
      await conn.close();
    }
  });
});

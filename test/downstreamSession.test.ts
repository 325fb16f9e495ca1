import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  ClientStreamLifecycle,
  negotiateVersion,
  OWN_LISTS_MAX_GATEWAYS,
  ownViews,
  viewListOf,
  withLogLevel,
  withSubscription,
} from "../actors/downstreamSession.ts";
import type { DownstreamSession } from "../protocol/edge.ts";
import { parseStreamEventId, streamEventId } from "../protocol/upstream.ts";
import { HttpError, isAnswer, isNotification, isRequest, parseMessages } from "../runtime/edge/streamableHttp.ts";

const G1 = "0123456789abcdef";
const G2 = "fedcba9876543210";
const record: DownstreamSession = {
  sid: "0".repeat(32),
  owner: "o",
  gid: null,
  protocolVersion: "2025-06-18",
  clientInfo: { name: "c", version: "1" },
  capabilities: {},
  createdAt: "2026-11-30T00:00:00Z",
  lastSeenAt: "2026-11-30T00:00:00Z",
};

describe("client session policy", () => {
  it("negotiates the client's version when supported, else the newest", () => {
    assert.equal(negotiateVersion("2025-06-18", ["2025-06-18", "2025-11-25"], "2025-11-25"), "2025-06-18");
    assert.equal(negotiateVersion("1999-01-01", ["2025-06-18", "2025-11-25"], "2025-11-25"), "2025-11-25");
  });

  it("changes the record only when a message changes something (no write otherwise)", () => {
    const warned = withLogLevel(record, "warning")!;
    assert.equal(warned.logLevel, "warning");
    assert.equal(withLogLevel(warned, "warning"), null);

    const sub = withSubscription(record, G1, "fixture://a", true)!;
    assert.deepEqual(sub.subscriptions, { [G1]: ["fixture://a"] });
    assert.equal(withSubscription(sub, G1, "fixture://a", true), null);
    assert.equal(withSubscription(record, G1, "fixture://a", false), null);
    assert.deepEqual(withSubscription(sub, G1, "fixture://a", false)!.subscriptions, {}, "the last unsubscribe removes the gateway");

    const viewed: DownstreamSession = { ...record, views: { [G1]: ["tools"] } };
    const all = () => [G1, G2];
    assert.deepEqual(ownViews(viewed, "tools", null, all), [G1]);
    assert.deepEqual(ownViews(viewed, "tools", G2, () => [G2]), [], "another gateway's endpoint does not read G1's view");
    assert.deepEqual(ownViews(viewed, "prompts", null, all), []);
    // a client that can sample may be offered tools discovery never saw: every list is its own
    const sampler = { ...record, capabilities: { sampling: {} } };
    assert.deepEqual(ownViews(sampler, "prompts", null, all), [G1, G2]);
    assert.deepEqual(ownViews(sampler, "prompts", G2, () => [G2]), [G2]);
    // ...but on /mcp not from thousands of gateways at its first list: the catalog serves it there
    const many = Array.from({ length: OWN_LISTS_MAX_GATEWAYS + 1 }, (_, i) => i.toString(16).padStart(16, "0"));
    assert.deepEqual(ownViews(sampler, "prompts", null, () => many), []);
    assert.deepEqual(ownViews({ ...viewed, capabilities: { sampling: {} } }, "tools", null, () => many), [G1], "its own views still hold");
    assert.deepEqual(ownViews({ ...record, capabilities: { experimental: {} } }, "prompts", null, all), []);
  });

  it("names the list a list request reads", () => {
    assert.equal(viewListOf("resources/templates/list"), "resources");
    assert.equal(viewListOf("tools/call"), null);
  });

  it("ends a POST stream after the first answer of its last request; a second copy of an answer is dropped", () => {
    const post = new ClientStreamLifecycle("post", ["n1", "n2"]);
    assert.equal(post.answer("n1"), "write");
    assert.equal(post.answer("n1"), "drop");
    assert.equal(post.answer("n9"), "drop");
    assert.equal(post.answer("n2"), "write-and-end");
    assert.ok(post.ended);
    const get = new ClientStreamLifecycle("get");
    assert.equal(get.answer("n1"), "drop");
    get.end();
    assert.ok(get.ended);
  });

  it("reads back the SSE ids it writes, and nothing else", () => {
    assert.deepEqual(parseStreamEventId(streamEventId("abc_-1", "u-2")), { streamId: "abc_-1", uid: "u-2" });
    for (const bad of ["abc", "a.b.c", ".b", "a.", "a b.c", 5, null]) assert.equal(parseStreamEventId(bad), null, String(bad));
  });
});

describe("Streamable HTTP layer: client messages", () => {
  const status = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      assert.ok(err instanceof HttpError);
      return [err.status, err.rpcCode];
    }
    return null;
  };
  it("takes one message or a batch, and refuses bad JSON (-32700), non-JSON-RPC and empty or huge batches (-32600), each a 400", () => {
    assert.equal(parseMessages(Buffer.from('{"jsonrpc":"2.0","id":1,"method":"ping"}')).length, 1);
    assert.equal(parseMessages(Buffer.from('[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]')).length, 2);
    assert.deepEqual(status(() => parseMessages(Buffer.from("{nope"))), [400, -32700]);
    assert.deepEqual(status(() => parseMessages(Buffer.from('{"hello":1}'))), [400, -32600]);
    assert.deepEqual(status(() => parseMessages(Buffer.from("[]"))), [400, -32600]);
    assert.deepEqual(status(() => parseMessages(Buffer.from(JSON.stringify(Array.from({ length: 101 }, (_, i) => ({ jsonrpc: "2.0", id: i, method: "ping" })))))), [400, -32600]);
    assert.deepEqual(status(() => parseMessages(Buffer.from(JSON.stringify({ jsonrpc: "2.0", id: "x".repeat(121), method: "ping" })))), [400, -32600]);
  });
  it("refuses what the SDK's schema refuses, whether or not the quick check of a plain request looks at it; tells requests, notifications and answers apart", () => {
    const one = (m: unknown) => parseMessages(Buffer.from(JSON.stringify(m)));
    // each is one field away from a plain request: the SDK's schema judges it, with the same 400
    for (const bad of [
      { jsonrpc: "2.0", id: 1, method: "ping", extra: true },
      { jsonrpc: "2.0", id: 1.5, method: "ping" },
      { jsonrpc: "2.0", id: null, method: "ping" },
      { jsonrpc: "2.0", id: 1, method: "ping", params: [1] },
      { jsonrpc: "2.0", id: 1, method: "ping", params: { _meta: { progressToken: {} } } },
      { jsonrpc: "1.0", id: 1, method: "ping" },
      { jsonrpc: "2.0", id: 1, method: 7 },
      { jsonrpc: "2.0", id: 1, result: {}, method: "ping" },
    ]) {
      assert.deepEqual(status(() => one(bad)), [400, -32600], JSON.stringify(bad));
    }
    // and what it accepts the schema accepts too: `_meta` and answers go to the schema
    assert.equal(one({ jsonrpc: "2.0", id: 1, method: "tools/call", params: { name: "t", _meta: { progressToken: 3 } } }).length, 1);
    const [req, note, result, error] = parseMessages(
      Buffer.from(
        JSON.stringify([
          { jsonrpc: "2.0", id: "a", method: "tools/call", params: { name: "t", arguments: {} } },
          { jsonrpc: "2.0", method: "notifications/initialized" },
          { jsonrpc: "2.0", id: "s1", result: {} },
          { jsonrpc: "2.0", id: "s2", error: { code: 1, message: "no" } },
        ]),
      ),
    );
    assert.deepEqual([req, note, result, error].map((m) => [isRequest(m!), isNotification(m!), isAnswer(m!)]), [
      [true, false, false],
      [false, true, false],
      [false, false, true],
      [false, false, true],
    ]);
  });
});

// The call request an upstream session actor takes (protocol/upstream.ts): its open-ended parts
// (params, headers, a result) are checked by one object test; bad input is refused naming the field.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ProtocolError, parseRequest } from "../protocol/envelope.ts";
import { UpstreamCallReplySchema, UpstreamCallRequestSchema } from "../protocol/upstream.ts";

const call = (extra: Record<string, unknown>) => ({ method: "tools/call", requestId: "1", params: { name: "echo" }, ...extra });
const refused = (input: unknown, path: string) =>
  assert.throws(
    () => parseRequest(UpstreamCallRequestSchema, input, "upstream call"),
    (err: unknown) => err instanceof ProtocolError && err.code === "invalid_request" && err.issues?.some((i) => i.path === path) === true,
  );

describe("upstream call request", () => {
  it("takes a call with params, headers, a timeout and a stream; headers default to none", () => {
    const r = parseRequest(UpstreamCallRequestSchema, call({ headers: { "x-a": "b" }, timeoutMs: 5, stream: "s1" }), "upstream call");
    assert.deepEqual(r.headers, { "x-a": "b" });
    assert.deepEqual(parseRequest(UpstreamCallRequestSchema, call({}), "upstream call").headers, {});
  });

  it("refuses params that are no object, headers that are not strings of at most 8192 characters, unknown fields", () => {
    refused(call({ params: [1] }), "params");
    refused(call({ params: null }), "params");
    refused(call({ headers: { "x-a": 1 } }), "headers");
    refused(call({ headers: { "x-a": "a".repeat(8193) } }), "headers");
    refused(call({ headers: ["a"] }), "headers");
    refused(call({ extra: true }), "(root)");
  });

  it("a reply is an upstream's result object or its JSON-RPC error", () => {
    assert.ok(UpstreamCallReplySchema.safeParse({ result: { content: [] } }).success);
    assert.ok(UpstreamCallReplySchema.safeParse({ rpcError: { code: -32601, message: "no" } }).success);
    assert.ok(!UpstreamCallReplySchema.safeParse({ result: [] }).success);
    assert.ok(!UpstreamCallReplySchema.safeParse({ result: "x" }).success);
  });
});

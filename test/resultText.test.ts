// The result text an upstream sent, handed through to the client's answer (runtime/resultText.ts).
import assert from "node:assert/strict";
import { test } from "node:test";
import { answerJson, parseMessage, resultTextOf } from "../runtime/resultText.ts";

const parse = (text: string, id: string | number | undefined) => parseMessage(text, Buffer.byteLength(text), id) as { jsonrpc: string; id: unknown; result?: Record<string, unknown> };

test("an answer in either usual shape: the result parsed alone, its text and size kept, the client's answer written with it", () => {
  // an escape JSON.stringify would not write: the client gets the upstream's bytes, not a re-encoding
  const result = '{"content":[{"type":"text","text":"caf\\u00e9 ü"}],"isError":false}';
  for (const text of [`{"jsonrpc":"2.0","id":"mcpgw-7","result":${result}}`, `{"result":${result},"jsonrpc":"2.0","id":"mcpgw-7"}`]) {
    const m = parse(text, "mcpgw-7");
    assert.deepEqual(m, JSON.parse(text));
    assert.deepEqual(resultTextOf(m.result), { text: result, bytes: Buffer.byteLength(result) });
    assert.equal(answerJson({ jsonrpc: "2.0", id: 3, result: m.result }), `{"jsonrpc":"2.0","id":3,"result":${result}}`);
    assert.equal(answerJson([{ jsonrpc: "2.0", id: "a", result: m.result }]), `[{"jsonrpc":"2.0","id":"a","result":${result}}]`);
  }
  const numeric = parse('{"jsonrpc":"2.0","id":12,"result":{}}', 12);
  assert.deepEqual(resultTextOf(numeric.result), { text: "{}", bytes: 2 });
});

test("anything else is parsed whole, as JSON.parse does, and keeps no text", () => {
  const cases: [string, string | number | undefined][] = [
    ['{"jsonrpc":"2.0","id":"mcpgw-7","result":{"a":1}}', undefined], // no request to answer
    ['{"jsonrpc":"2.0","id":"mcpgw-8","result":{"a":1}}', "mcpgw-7"], // another id
    ['{"jsonrpc":"2.0","id":"mcpgw-7","result":{"a":1},"extra":true}', "mcpgw-7"], // a field beside the result
    ['{"jsonrpc":"2.0","id":"mcpgw-7","result":{"a":1},"result":{"b":2}}', "mcpgw-7"], // the result twice: the last one counts
    ['{"result":{"a":1},"result":{"b":2},"jsonrpc":"2.0","id":"mcpgw-7"}', "mcpgw-7"],
    ['{"jsonrpc":"2.0","id":"mcpgw-7","result":[1]}', "mcpgw-7"], // not an object (the transport's check refuses it)
    ['{"jsonrpc":"2.0","id":"mcpgw-7","result":{\n  "a": 1\n}}', "mcpgw-7"], // line breaks: no SSE data line
    ['{"jsonrpc":"2.0","id":"mcpgw-7","error":{"code":-32601,"message":"no"}}', "mcpgw-7"],
    ['[{"jsonrpc":"2.0","id":"mcpgw-7","result":{"a":1}}]', "mcpgw-7"],
  ];
  for (const [text, id] of cases) {
    const m = parse(text, id);
    assert.deepEqual(m, JSON.parse(text), text);
    assert.equal(resultTextOf((m as { result?: unknown }).result), undefined, text);
  }
  assert.throws(() => parse('{"jsonrpc":"2.0","id":"mcpgw-7","result":{"a":}', "mcpgw-7"), SyntaxError);
});

test("a changed result (a copy) and any other message are encoded as JSON.stringify does", () => {
  const m = parse('{"jsonrpc":"2.0","id":1,"result":{"a":1}}', 1);
  const copy = { ...m.result, b: 2 };
  assert.equal(answerJson({ jsonrpc: "2.0", id: 1, result: copy }), JSON.stringify({ jsonrpc: "2.0", id: 1, result: copy }));
  const error = { jsonrpc: "2.0", id: 1, error: { code: 1, message: "x" } };
  assert.equal(answerJson(error), JSON.stringify(error));
  const batch = [{ jsonrpc: "2.0", id: 1, result: m.result }, error];
  assert.equal(answerJson(batch), JSON.stringify(batch));
});

// What a relayed answer's JSON costs a worker, in CPU, from the upstream's bytes to the client's:
// before (the whole body parsed, the envelope encoded for the actor's size check, the client's
// answer encoded by the edge) and now (the result parsed alone and its text handed through:
// runtime/resultText.ts). CPU time (process.cpuUsage) per answer in this process, after a warm-up.
// Run: node --import tsx bench/answerJson.bench.ts   (ANSWERJSON_N: answers per figure, 20,000)
import { ok } from "../protocol/envelope.ts";
import { encodeJson } from "../runtime/bus.ts";
import { answerJson, parseMessage, resultTextOf } from "../runtime/resultText.ts";
import { loadAverage, table } from "./report.ts";

const N = Number(process.env.ANSWERJSON_N ?? 20_000);

function cpuPerOp(n: number, f: (i: number) => void): number {
  for (let i = 0; i < Math.min(2_000, n); i++) f(i);
  const t0 = process.cpuUsage();
  for (let i = 0; i < n; i++) f(i);
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / n;
}

const bodyOf = (text: string) => Buffer.from(`{"jsonrpc":"2.0","id":"mcpgw-17","result":{"content":[{"type":"text","text":${JSON.stringify(text)}}]}}`);
const answers = [
  ["the lean upstream's echo (49 bytes of result)", bodyOf("hello")],
  ["a 16 KB text result", bodyOf("x".repeat(16 * 1024))],
  ["a 256 KB result of 2,000 items", Buffer.from(`{"jsonrpc":"2.0","id":"mcpgw-17","result":{"content":${JSON.stringify(Array.from({ length: 2000 }, (_, i) => ({ type: "text", text: `item ${i} ${"y".repeat(100)}` })))}}}`)],
] as const;

let sink = 0;
const rows = answers.map(([what, body]) => {
  const n = body.length > 100_000 ? N / 50 : body.length > 10_000 ? N / 5 : N;
  const before = cpuPerOp(n, () => {
    const m = JSON.parse(body.toString("utf8")) as { id: string; result: Record<string, unknown> };
    sink += encodeJson(ok({ result: m.result })).length; // the actor's size check
    sink += JSON.stringify({ jsonrpc: "2.0", id: 7, result: m.result }).length; // the edge
  });
  const now = cpuPerOp(n, () => {
    const m = parseMessage(body.toString("utf8"), body.length, "mcpgw-17") as { result: Record<string, unknown> };
    sink += resultTextOf(m.result)!.bytes; // the size check
    sink += answerJson({ jsonrpc: "2.0", id: 7, result: m.result }).length;
  });
  return [what, `${before.toFixed(2)} µs`, `${now.toFixed(2)} µs`, `${(((now - before) / before) * 100).toFixed(0)}%`];
});
table(
  "A relayed answer's JSON in the worker: upstream bytes to the client's answer text",
  `CPU time per answer in one process (${N.toLocaleString("en")} small ones, fewer large ones, after a warm-up; load average ${loadAverage()}). Before: the body parsed whole, the envelope encoded for the size check, the answer encoded by the edge. Now: the result parsed alone, its text handed through.`,
  ["answer", "before", "now", "change"],
  rows,
);
if (sink < 0) console.log(sink);

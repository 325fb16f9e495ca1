// What the upstream session actor's side of one tools/call costs in CPU, piece by piece, in this
// process (no NATS, no upstream): the machine's transitions of a call (and the host's direct update
// of the call table that replaces them in a ready session), the call request's parse,
// the caller's parse of the reply, and the call's instrumentation without an exporter. CPU time
// (process.cpuUsage) per operation, after a warm-up: a loaded machine inflates it less than
// wall time, and the pieces compare with each other and with the same run before a change.
// Run: node --import tsx bench/actorCallCost.bench.ts   (ACTORCOST_N: operations per figure, 20,000)
import { headers as natsHeaders } from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import { createActor } from "xstate";
import { endsCallAtOnce, takesCallAtOnce, upstreamSessionMachine } from "../actors/upstreamSession/machine.ts";
import { parseRequest } from "../protocol/envelope.ts";
import { UpstreamCallReplySchema, UpstreamCallRequestSchema } from "../protocol/upstream.ts";
import { decodeJson, encodeJson, unwrapReply } from "../runtime/bus.ts";
import { createLogger } from "../runtime/logger.ts";
import { createTracing, endSpan, natsTraceHeaders, traceHeadersOf, traceIdOf } from "../runtime/tracing.ts";
import { loadAverage, table } from "./report.ts";

const N = Number(process.env.ACTORCOST_N ?? 20_000);

/** CPU µs per call of `f`, after a warm-up of 2,000 calls */
function cpuPerOp(f: (i: number) => void): number {
  for (let i = 0; i < 2_000; i++) f(i);
  const t0 = process.cpuUsage();
  for (let i = 0; i < N; i++) f(i);
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / N;
}

const nothing = () => {};
const actor = createActor(upstreamSessionMachine, {
  input: {
    effects: {
      connect: async () => {},
      probe: async () => "ok",
      closeGracefully: async () => {},
      forceClose: async () => {},
      startCalls: nothing,
      failCalls: nothing,
      abortCalls: nothing,
      stopTakingCalls: nothing,
      stopAccepting: nothing,
      giveUp: nothing,
    },
  },
}).start();
actor.send({ type: "CLAIMED" });
await new Promise((r) => setTimeout(r, 10));

// a call as the edge sends it: the client's HTTP headers, a progress token, a stream
const headers = {
  "content-type": "application/json",
  accept: "application/json, text/event-stream",
  "mcp-session-id": "abcdef0123456789abcdef0123456789",
  "mcp-protocol-version": "2025-06-18",
  host: "127.0.0.1:4444",
  "user-agent": "node",
  "accept-encoding": "gzip",
  connection: "keep-alive",
  "content-length": "100",
};
const request = encodeJson({ method: "tools/call", params: { name: "echo", arguments: { text: "x" }, _meta: { progressToken: 1 } }, requestId: "5", headers, timeoutMs: 60_000, stream: "abcdefghijkl" });
const reply = encodeJson({ ok: true, data: { result: { content: [{ type: "text", text: "x" }] } } });

const tracing = createTracing({ workerId: "bench" });
const log = createLogger({ level: "info", destination: { write: () => {} } });
const traced = natsHeaders();
traced.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");

const rows: Array<[string, number]> = [
  [
    "machine: a call in a ready session (CALL, CALL_DONE)",
    cpuPerOp((i) => {
      actor.send({ type: "CALL", call: { id: String(i), requestId: "r" } });
      actor.send({ type: "CALL_DONE", callId: String(i), transportFailed: false });
    }),
  ],
  [
    "a call in a ready session as the host takes it now: the call table, no transition",
    cpuPerOp((i) => {
      const call = { id: String(i), requestId: "r" };
      const snap = actor.getSnapshot();
      if (!takesCallAtOnce(snap)) throw new Error("the session is not ready");
      snap.context.calls.admit([call], snap.context.now());
      const after = actor.getSnapshot();
      if (endsCallAtOnce(after, false)) after.context.calls.inflight.delete(call.id);
    }),
  ],
  ["the call request: JSON and schema (actor)", cpuPerOp(() => parseRequest(UpstreamCallRequestSchema, decodeJson(request), "upstream call"))],
  ["the reply: JSON and schemas (caller)", cpuPerOp(() => unwrapReply(reply, UpstreamCallReplySchema))],
  [
    "instrumentation without an exporter: 2 spans, trace headers, a debug line (actor)",
    cpuPerOp(() => {
      const span = tracing.startSpan("session tools/call", { kind: SpanKind.SERVER, parent: natsTraceHeaders(traced), attributes: { "mcp.method.name": "tools/call" } });
      const traceId = traceIdOf(span);
      const upstream = tracing.startSpan("upstream tools/call", { kind: SpanKind.CLIENT, parent: span });
      traceHeadersOf(upstream);
      endSpan(upstream);
      endSpan(span);
      log.debug({ traceId }, "upstream call answered");
    }),
  ],
];
table(
  "The actor's side of a call, piece by piece",
  `CPU time per operation in one process (${N.toLocaleString("en")} each after a warm-up; load average ${loadAverage()}).`,
  ["piece", "CPU per call"],
  rows.map(([what, us]) => [what, `${us.toFixed(1)} µs`]),
);
actor.stop();

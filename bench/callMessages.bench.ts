// NATS protocol operations per call (issue 11): what one `tools/call` costs on the bus, counted
// on each worker's own connection (its nats.js protocol handler: every command it sends, every
// message it is delivered, every socket write). Two in-process workers on one nats-server, the SDK
// fixture upstream in its own process, one client session; calls through the worker that hosts
// the session's upstream actor, then through the other one. Counts per call, averaged over
// CALLMSG_CALLS (200) after a warm-up; and the CPU time per call of this process and of
// nats-server. Counts, not time: the load of the machine does not change them.
// Run: node --import tsx bench/callMessages.bench.ts (CALLMSG_ONLY=host|other: one path only); with
// node --cpu-prof, the printed windows cut the profile to the calls (bench/cpuProfile.ts <file> [top] <from-to>).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { NatsConnection } from "@nats-io/transport-node";
import { sessionKey } from "../protocol/edge.ts";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { readFileSync } from "node:fs";
import { startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { processTree } from "../test/helpers/processes.ts";
import { startNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { startTestWorker, type TestWorker } from "../test/helpers/worker.ts";
import { cpuSecondsOf, loadAverage, table } from "./report.ts";

const CALLS = Number(process.env.CALLMSG_CALLS ?? 200);
const ONLY = process.env.CALLMSG_ONLY;
const OPS = ["PUB", "HPUB", "SUB", "UNSUB", "PING", "MSG", "HMSG", "writes"] as const;
type Op = (typeof OPS)[number];
type Counts = Record<Op, number>;

/** Counts what `nc` sends and is delivered, from its protocol handler (nats.js internals: a bench may). */
function counted(nc: NatsConnection): Counts {
  const counts = Object.fromEntries(OPS.map((op) => [op, 0])) as Counts;
  const protocol = (nc as unknown as { protocol: Record<string, (...args: unknown[]) => unknown> & { transport: { _send(b: Uint8Array): Promise<void> } } }).protocol;
  const sendCommand = protocol.sendCommand!.bind(protocol);
  protocol.sendCommand = (cmd: unknown, ...payloads: unknown[]) => {
    const text = typeof cmd === "string" ? cmd : new TextDecoder().decode((cmd as Uint8Array).subarray(0, 6));
    const verb = text.split(" ", 1)[0] as Op;
    if (OPS.includes(verb)) counts[verb]++;
    return sendCommand(cmd, ...payloads);
  };
  const flush = protocol.flush!.bind(protocol);
  protocol.flush = (...args: unknown[]) => {
    counts.PING++;
    return flush(...args);
  };
  const processMsg = protocol.processMsg!.bind(protocol);
  protocol.processMsg = (msg: unknown, data: unknown) => {
    counts[(msg as { hdr: number }).hdr > 0 ? "HMSG" : "MSG"]++;
    return processMsg(msg, data);
  };
  // the socket writes: the transport's `_send` (nats.js's transport writes each `send`; the runtime's gathers them per turn)
  const transport = protocol.transport;
  const write = transport._send.bind(transport);
  transport._send = (b: Uint8Array) => {
    counts.writes++;
    return write(b);
  };
  return counts;
}

const nats = await startNats();
const natsPid = processTree(process.pid).find((pid) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("nats-server");
  } catch {
    return false;
  }
})!;
const upstream = await startFixtureProcess();
const workers: TestWorker[] = [];
try {
  const a = await startTestWorker(nats);
  const b = await startTestWorker(nats);
  const counts = new Map([a, b].map((w) => [w, counted(w.nc)]));
  workers.push(a, b);
  const admin = await nats.connect("admin");
  await request(admin, subjects("mcpgw").admin.gateway("add"), { name: "up", transport: "streamable-http", url: upstream.url("gw") }, GatewayViewSchema, 60_000);

  let target = a.edge.url;
  /** how the edge answered the client's POSTs: one JSON response, or an SSE stream (priming event, then the answer) */
  const answers = { json: 0, sse: 0 };
  const routed: typeof fetch = async (input, init) => {
    const u = new URL(input instanceof Request ? input.url : String(input));
    u.host = new URL(target).host;
    const res = await fetch(u, init);
    if (init?.method === "POST") answers[/^text\/event-stream/.test(res.headers.get("content-type") ?? "") ? "sse" : "json"]++;
    return res;
  };
  const transport = new StreamableHTTPClientTransport(new URL(a.edge.url), { fetch: routed });
  const client = new Client({ name: "callmsg", version: "1.0.0" });
  await client.connect(transport);
  await until("the gateway's tools at the edge", async () => (await client.listTools()).tools.some((t) => t.name === "up__echo"), 60_000);
  const call = () => client.callTool({ name: "up__echo", arguments: { text: "x" } });
  await call();
  const sid = sessionKey(transport.sessionId!);
  const host = [a, b].find((w) => w.upstream.sessions().some((x) => x.sid === sid))!;
  const other = host === a ? b : a;

  const rows: string[][] = [];
  const windows: string[] = [];
  for (const [label, via] of (
    [
      ["through the hosting worker", host],
      ["through the other worker", other],
    ] as const
  ).filter(([, w]) => !ONLY || (ONLY === "host") === (w === host))) {
    target = via.edge.url;
    for (let i = 0; i < 3; i++) await call();
    await new Promise((r) => setTimeout(r, 300));
    const before = new Map([...counts].map(([w, c]) => [w, { ...c }]));
    const answers0 = { ...answers };
    const cpu0 = process.cpuUsage();
    const natsCpu0 = cpuSecondsOf(natsPid);
    const fromUs = process.hrtime.bigint() / 1000n;
    for (let i = 0; i < CALLS; i++) await call();
    const cpu = process.cpuUsage(cpu0);
    // the calls' span on V8's profile clock: bench/cpuProfile.ts <profile> [top] <from-to> sums only it
    windows.push(`${label}: ${fromUs}-${process.hrtime.bigint() / 1000n}`);
    const cpuPerCall = ((cpu.user + cpu.system) / 1000 / CALLS).toFixed(2);
    const natsPerCall = (((cpuSecondsOf(natsPid) - natsCpu0) * 1000) / CALLS).toFixed(3);
    // trailing operations of the last call (an UNSUB after its answer)
    await new Promise((r) => setTimeout(r, 300));
    for (const [who, w] of [
      ["hosting worker", host],
      ["other worker", other],
    ] as const) {
      const n = (op: Op) => (counts.get(w)![op] - before.get(w)![op]) / CALLS;
      const sent = n("PUB") + n("HPUB") + n("SUB") + n("UNSUB") + n("PING");
      const received = n("MSG") + n("HMSG");
      const answered = who === "hosting worker" ? `${((answers.json - answers0.json) / CALLS).toFixed(2)} / ${((answers.sse - answers0.sse) / CALLS).toFixed(2)}` : "";
      rows.push([label, who, ...OPS.map((op) => n(op).toFixed(2)), sent.toFixed(2), received.toFixed(2), answered, who === "hosting worker" ? `${cpuPerCall} ms` : "", who === "hosting worker" ? `${natsPerCall} ms` : ""]);
    }
  }
  table("NATS operations per call", `tools/call of echo, ${CALLS} sequential calls of one session after a warm-up, counted on each worker\'s NATS connection, per call; "writes": socket writes of that connection. answers JSON / SSE: how the edge answered the client's POSTs, per call. CPU per call: this process (the SDK client and both workers; the upstream runs in its own) and nats-server (/proc, 10 ms ticks), load average ${loadAverage()}.`, ["calls", "connection", ...OPS, "sent", "received", "answers JSON / SSE", "CPU per call", "nats-server"], rows);
  console.log(`profile windows (µs, for --cpu-prof): ${windows.join("; ")}`);
  await transport.terminateSession().catch(() => {});
  await client.close();
} finally {
  for (const w of workers) await w.stop().catch(() => {});
  await upstream.stop();
  await nats.stop();
}

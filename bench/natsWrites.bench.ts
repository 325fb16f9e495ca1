// What every NATS message costs a worker (issues 11 and 12): socket writes and CPU time per
// operation on one connection, with nats.js's own Node transport (one write per microtask flush)
// and with the runtime's (runtime/natsTransport.ts: one write per turn of the event loop),
// in alternating rounds in one process so a busy machine weighs on both alike.
// - KV puts as 10,000 pollers make them: KVPUT_COUNT (1,000) puts, each started by a timer of its
//   own, all falling due together (one macrotask each), to the state bucket;
// - request/reply as the runtime's own callers make them: REQ_COUNT (1,000) requests, REQ_PARALLEL
//   (16) at a time, answered by a responder on a second connection: `nc.request` (nats.js's
//   mux, which builds a `RequestError` with its stack for every answered request) beside
//   `requestWhole` (runtime/largeMessages.ts: one reply subscription of the runtime's own).
// - calls at concurrency: CONC_SESSIONS (16) client sessions calling `echo` at once through two
//   in-process workers, CONC_CALLS (50) calls each: socket writes and NATS commands per call on
//   both workers' connections (which use the runtime's transport: compare with a run on a build
//   whose connectNats uses nats.js's `connect`).
// CPU is this process's (both ends of the requests; nats-server runs in its own). Counts do not
// depend on the load of the machine; CPU does: the load average is printed beside it.
// Run: node --import tsx bench/natsWrites.bench.ts
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { KEYS, subjects } from "../protocol/subjects.ts";
import { encodeJson } from "../runtime/bus.ts";
import { requestWhole } from "../runtime/largeMessages.ts";
import { connectNats, openStores } from "../runtime/nats.ts";
import { GatewayViewSchema } from "../protocol/gateway.ts";
import { request } from "../runtime/bus.ts";
import { startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
import { startNats } from "../test/helpers/nats.ts";
import { until } from "../test/helpers/wait.ts";
import { startTestWorker } from "../test/helpers/worker.ts";
import { loadAverage, table } from "./report.ts";

const PUTS = Number(process.env.KVPUT_COUNT ?? 1000);
const REQUESTS = Number(process.env.REQ_COUNT ?? 1000);
const PARALLEL = Number(process.env.REQ_PARALLEL ?? 16);
const ROUNDS = Number(process.env.NATSWRITES_ROUNDS ?? 3);
const SESSIONS = Number(process.env.CONC_SESSIONS ?? 16);
const CALLS_EACH = Number(process.env.CONC_CALLS ?? 50);

/** NATS commands `nc` sends so far: calls of its protocol handler's `sendCommand` (nats.js internals). */
function commandsOf(nc: NatsConnection): () => number {
  let commands = 0;
  const protocol = (nc as unknown as { protocol: { sendCommand(...args: unknown[]): void } }).protocol;
  const sendCommand = protocol.sendCommand.bind(protocol);
  protocol.sendCommand = (...args: unknown[]) => {
    commands++;
    return sendCommand(...args);
  };
  return () => commands;
}

/** Writes and commands per call of both workers, SESSIONS sessions calling at once. */
async function concurrentCalls(nats: Awaited<ReturnType<typeof startNats>>): Promise<string[][]> {
  const upstream = await startFixtureProcess();
  const a = await startTestWorker(nats);
  const b = await startTestWorker(nats);
  const clients: Client[] = [];
  try {
    const admin = await nats.connect("admin");
    await request(admin, subjects("mcpgw").admin.gateway("add"), { name: "up", transport: "streamable-http", url: upstream.url("gw") }, GatewayViewSchema, 60_000);
    const counters = [a, b].map((w) => ({ writes: writesOf(w.nc), commands: commandsOf(w.nc) }));
    for (let i = 0; i < SESSIONS; i++) {
      const client = new Client({ name: `natswrites-${i}`, version: "1.0.0" });
      await client.connect(new StreamableHTTPClientTransport(new URL((i % 2 ? b : a).edge.url)));
      clients.push(client);
    }
    await until("the gateway's tools at the edge", async () => (await clients[0]!.listTools()).tools.some((t) => t.name === "up__echo"), 60_000);
    const call = (c: Client) => c.callTool({ name: "up__echo", arguments: { text: "x" } });
    await Promise.all(clients.map(call));
    const before = counters.map((c) => ({ writes: c.writes(), commands: c.commands() }));
    const cpu0 = process.cpuUsage();
    await Promise.all(clients.map(async (c) => {
      for (let i = 0; i < CALLS_EACH; i++) await call(c);
    }));
    const cpu = cpuMs(cpu0);
    const calls = SESSIONS * CALLS_EACH;
    const writes = counters.reduce((n, c, i) => n + c.writes() - before[i]!.writes, 0);
    const commands = counters.reduce((n, c, i) => n + c.commands() - before[i]!.commands, 0);
    return [[`${SESSIONS} sessions at once, half through each worker`, (commands / calls).toFixed(2), (writes / calls).toFixed(2), `${(cpu / calls).toFixed(2)} ms`]];
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await a.stop().catch(() => {});
    await b.stop().catch(() => {});
    await upstream.stop();
  }
}

/** Socket writes of `nc` so far: calls of its transport's `_send` (nats.js internals: a bench may). */
function writesOf(nc: NatsConnection): () => number {
  let writes = 0;
  const transport = (nc as unknown as { protocol: { transport: { _send(b: Uint8Array): Promise<void> } } }).protocol.transport;
  const send = transport._send.bind(transport);
  transport._send = (b) => {
    writes++;
    return send(b);
  };
  return () => writes;
}

const cpuMs = (since: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1000;
};

const nats = await startNats();
try {
  const opts = { url: nats.url, user: "runtime", password: nats.passwords.runtime };
  // nats.js's own transport first: its `connect` sets the process-wide transport factory, which
  // connectNats then sets back to the runtime's for the second connection.
  const plain = await connect({ servers: nats.url, user: opts.user, pass: opts.password, noAsyncTraces: true });
  const gathering = await connectNats(opts);
  const responder = await connectNats(opts);
  const transports = [
    ["nats.js transport", plain, writesOf(plain)],
    ["gathering transport", gathering, writesOf(gathering)],
  ] as const;

  const stores = await openStores(responder, "mcpgw");
  const value = encodeJson({ gid: "g", ok: true, checkedAt: new Date().toISOString(), latencyMs: 3, failures: 0, error: null });
  const putRows = new Map<string, { writes: number; cpu: number; n: number }>();
  const reqRows = new Map<string, { writes: number; cpu: number; n: number }>();
  const subject = subjects("mcpgw").upstream.op("bench", "bench", "status");
  responder.subscribe(subject, { callback: (_err, msg) => void msg.respond(msg.data) });
  await responder.flush();

  // round -1 warms both paths up (the JIT, the buckets' streams) and is not counted
  for (let round = -1; round < ROUNDS; round++) {
    for (const [label, nc, writes] of transports) {
      const kv = await new Kvm(nc).open(stores.names.state);
      await kv.put(KEYS.pollHealth("g0"), value);
      const w0 = writes();
      const cpu0 = process.cpuUsage();
      await Promise.all(
        Array.from({ length: PUTS }, (_, i) => new Promise<unknown>((resolve, reject) => setTimeout(() => kv.put(KEYS.pollHealth(`g${i}`), value).then(resolve, reject), 0))),
      );
      if (round < 0) continue;
      const put = putRows.get(label) ?? { writes: 0, cpu: 0, n: 0 };
      putRows.set(label, { writes: put.writes + writes() - w0, cpu: put.cpu + cpuMs(cpu0), n: put.n + PUTS });
    }
    for (const [label, nc, writes] of transports) {
      for (const [how, ask] of [
        ["nc.request", (data: Uint8Array) => nc.request(subject, data, { timeout: 10_000 })],
        ["requestWhole", (data: Uint8Array) => requestWhole(nc, subject, data, { timeoutMs: 10_000, limit: 1024 * 1024 })],
      ] as const) {
        await ask(value);
        const w0 = writes();
        const cpu0 = process.cpuUsage();
        let next = 0;
        await Promise.all(
          Array.from({ length: PARALLEL }, async () => {
            while (next++ < REQUESTS) await ask(value);
          }),
        );
        if (round < 0) continue;
        const key = `${label}|${how}`;
        const r = reqRows.get(key) ?? { writes: 0, cpu: 0, n: 0 };
        reqRows.set(key, { writes: r.writes + writes() - w0, cpu: r.cpu + cpuMs(cpu0), n: r.n + REQUESTS });
      }
    }
  }

  table(
    "NATS writes of KV puts",
    `${PUTS} puts to the state bucket, each started by a timer of its own, all due at once (as pollers' timers fall due), ${ROUNDS} rounds alternating the two transports; per 1,000 puts: socket writes of the putting connection; CPU per put: this process. Load average ${loadAverage()}.`,
    ["transport", "writes per 1,000 puts", "CPU per put"],
    [...putRows].map(([label, r]) => [label, ((r.writes / r.n) * 1000).toFixed(0), `${((r.cpu / r.n) * 1000).toFixed(0)} µs`]),
  );
  table(
    "NATS writes and CPU of an answered request",
    `${REQUESTS} requests, ${PARALLEL} at a time, to a responder on a second connection of this process (which echoes), ${ROUNDS} rounds alternating; writes: the requesting connection's socket writes per request; CPU per request: this process, both ends. Load average ${loadAverage()}.`,
    ["transport", "request path", "writes per request", "CPU per request"],
    [...reqRows].map(([key, r]) => [...key.split("|"), (r.writes / r.n).toFixed(2), `${((r.cpu / r.n) * 1000).toFixed(0)} µs`]),
  );
  await plain.close();
  await gathering.close();
  await responder.close();
  table(
    "NATS writes of concurrent calls",
    `tools/call of echo, ${SESSIONS} client sessions calling at once, ${CALLS_EACH} calls each, two workers in this process (the SDK fixture upstream in its own); per call, both workers' connections together: NATS commands sent, socket writes; CPU per call: this process (clients and both workers). Load average ${loadAverage()}.`,
    ["calls", "commands per call", "writes per call", "CPU per call"],
    await concurrentCalls(nats),
  );
} finally {
  await nats.stop();
}

// The system under fault: a real nats-server with the project's nats.conf (restartable on the
// same port and store), worker processes (`runtime/main.ts`, the way operators run them), real
// upstreams, and SDK clients that fail over between edges the way a load balancer would.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { startEmbeddedNats, type EmbeddedNats, type NatsUser } from "../runtime/embeddedNats.ts";
import { connectNats } from "../runtime/nats.ts";
import { locateNatsServer } from "../runtime/natsServerBinary.ts";
import { freePort } from "../test/helpers/nats.ts";
import { edgeUrlOf, runTs, workerEnv, type Proc } from "../test/helpers/processes.ts";

export const s = subjects("mcpgw");
/** hang bound of one admin request */
export const ADMIN_MS = 20_000;

export type WorkerProc = { id: string; proc: Proc; edgeUrl: string };

export type System = {
  natsUrl: string;
  passwords: Record<NatsUser, string>;
  secretKey: string;
  /** the harness's own connection (user runtime: it reads state the way workers do) */
  nc: NatsConnection;
  workers: WorkerProc[];
  startWorker(env?: Record<string, string>): Promise<WorkerProc>;
  killWorker(w: WorkerProc, signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** stops nats-server (SIGTERM), waits `downMs`, starts it again on the same port and store */
  restartNats(downMs: number): Promise<void>;
  connect(user: NatsUser): Promise<NatsConnection>;
  addGateway(spec: Record<string, unknown>): Promise<string>;
  /** every gateway record, by id, as JSON text (to compare before and after) */
  gatewaySnapshot(): Promise<Map<string, string>>;
  stop(): Promise<void>;
};

export async function startSystem(opts: { workers: number; env?: Record<string, string> }): Promise<System> {
  const dir = mkdtempSync(join(tmpdir(), "mcpgw-chaos-"));
  const passwords = { runtime: randomBytes(12).toString("hex"), admin: randomBytes(12).toString("hex"), viewer: randomBytes(12).toString("hex") };
  const port = await freePort();
  const bin = locateNatsServer(process.env.NATS_SERVER_BIN);
  const startServer = () => startEmbeddedNats({ bin, host: "127.0.0.1", port, storeDir: join(dir, "jetstream"), passwords });
  let server: EmbeddedNats = await startServer();
  const natsUrl = server.url;
  const secretKey = randomBytes(32).toString("hex");
  const conns: NatsConnection[] = [];
  const connect = async (user: NatsUser) => {
    const c = await connectNats({ url: natsUrl, user, password: passwords[user], name: `chaos-${user}` });
    conns.push(c);
    return c;
  };
  const nc = await connect("runtime");
  const workers: WorkerProc[] = [];
  let seq = 0;

  const startWorker = async (env: Record<string, string> = {}): Promise<WorkerProc> => {
    const id = `chaos-w${++seq}`;
    const proc = runTs("runtime/main.ts", [], workerEnv({ url: natsUrl, passwords }, secretKey, { MCPGW_WORKER_ID: id, MCPGW_LOG_LEVEL: "warn", ...opts.env, ...env }));
    const w = { id, proc, edgeUrl: await edgeUrlOf(proc) };
    workers.push(w);
    return w;
  };
  for (let i = 0; i < opts.workers; i++) await startWorker();

  return {
    natsUrl,
    passwords,
    secretKey,
    nc,
    workers,
    startWorker,
    async killWorker(w, signal = "SIGKILL") {
      w.proc.child.kill(signal);
      const exit = await w.proc.exited;
      workers.splice(workers.indexOf(w), 1);
      return exit;
    },
    async restartNats(downMs) {
      await server.stop();
      await new Promise((r) => setTimeout(r, downMs));
      server = await startServer();
    },
    connect,
    async addGateway(spec) {
      return (await request(nc, s.admin.gateway("add"), spec, z.object({ id: z.string() }), ADMIN_MS)).id;
    },
    async gatewaySnapshot() {
      const reply = await request(nc, s.admin.gateway("list"), {}, z.object({ gateways: z.array(z.looseObject({ id: z.string() })) }), ADMIN_MS);
      return new Map(reply.gateways.map((g) => [g.id, JSON.stringify({ ...g, status: undefined })]));
    },
    async stop() {
      for (const w of workers) if (w.proc.child.exitCode === null && w.proc.child.signalCode === null) w.proc.child.kill("SIGKILL");
      await Promise.all(workers.map((w) => w.proc.exited));
      await Promise.allSettled(conns.map((c) => c.close()));
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * An SDK client whose requests go to the first edge that accepts a connection, starting with
 * `preferred`: what a load balancer in front of several workers does when one of them dies.
 */
export async function failoverClient(edges: () => string[], preferred = 0, name = "chaos"): Promise<Client> {
  const failover: typeof fetch = async (input, init) => {
    const list = edges();
    let last: unknown;
    for (let i = 0; i < list.length; i++) {
      const edge = new URL(list[(preferred + i) % list.length]!);
      const url = new URL(String(input instanceof Request ? input.url : input));
      url.host = edge.host;
      try {
        return await fetch(url, init);
      } catch (err) {
        last = err; // connection refused: that worker is gone, try the next
      }
    }
    throw last;
  };
  const transport = new StreamableHTTPClientTransport(new URL(edges()[preferred % edges().length]!), { fetch: failover });
  const client = new Client({ name, version: "1.0.0" });
  await client.connect(transport);
  return client;
}

export type CallRecord = { lane: number; at: number; ms: number; ok: boolean; error?: string };

/** Calls `f` back to back on each of `lanes` lanes until `stop()` says so; every call recorded. */
export function loadLoop(lanes: number, f: (lane: number, n: number) => Promise<void>): { records: CallRecord[]; stop(): Promise<void> } {
  const records: CallRecord[] = [];
  let running = true;
  const runLane = async (lane: number) => {
    for (let n = 0; running; n++) {
      const at = performance.now();
      try {
        await f(lane, n);
        records.push({ lane, at, ms: performance.now() - at, ok: true });
      } catch (err) {
        records.push({ lane, at, ms: performance.now() - at, ok: false, error: (err as Error).message?.slice(0, 200) });
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const done = Promise.all(Array.from({ length: lanes }, (_, i) => runLane(i)));
  return {
    records,
    async stop() {
      running = false;
      await done;
    },
  };
}

/** Waits (a 60 s hang bound) until the client's tool list has every one of `names`: their gateways were discovered and are healthy. */
export async function waitForTools(client: Client, names: string[]): Promise<void> {
  const end = Date.now() + 60_000;
  for (;;) {
    const listed = new Set((await client.listTools()).tools.map((t) => t.name));
    if (names.every((n) => listed.has(n))) return;
    if (Date.now() > end) throw new Error(`tools ${names.join(", ")} not listed within 60 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The text of a tool result's first content item. */
export function textOf(result: unknown): string {
  const r = result as { content?: Array<{ text?: string }>; isError?: boolean };
  if (r.isError) throw new Error(`tool error: ${r.content?.[0]?.text}`);
  return String(r.content?.[0]?.text ?? "");
}

export type ScenarioResult = {
  scenario: string;
  load: string;
  faults: string;
  failures: string;
  recovery: string;
  intact: string;
  /** every check held */
  ok: boolean;
  checks: Array<{ what: string; ok: boolean; detail?: string }>;
};

/** Collects named checks for a scenario's result. */
export class Checks {
  readonly list: ScenarioResult["checks"] = [];
  check(what: string, ok: boolean, detail?: string): boolean {
    this.list.push({ what, ok, ...(detail === undefined ? {} : { detail }) });
    return ok;
  }
  get ok(): boolean {
    return this.list.every((c) => c.ok);
  }
  summary(): string {
    const failed = this.list.filter((c) => !c.ok);
    return failed.length === 0 ? `all ${this.list.length} checks held` : `FAILED: ${failed.map((c) => `${c.what}${c.detail ? ` (${c.detail})` : ""}`).join("; ")}`;
  }
}

export function ms(n: number): string {
  return `${Math.round(n).toLocaleString("en-US")} ms`;
}

const T0 = performance.now();
/** Progress on stderr with CHAOS_DEBUG=1 (a scenario that stalls says where). */
export function debug(line: string): void {
  if (process.env.CHAOS_DEBUG) process.stderr.write(`chaos +${Math.round(performance.now() - T0)}ms ${line}\n`);
}

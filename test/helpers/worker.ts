import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { KV } from "@nats-io/kv";
import { Registry } from "../../actors/registry.ts";
import { subjects } from "../../protocol/subjects.ts";
import type { Stores } from "../../runtime/nats.ts";
import { SecretBox } from "../../runtime/secretBox.ts";
import { loadConfig, type Config } from "../../runtime/config.ts";
import { createLogger, type Logger } from "../../runtime/logger.ts";
import { startWorker, type Worker } from "../../runtime/worker.ts";
import type { TestNats } from "./nats.ts";

/** Collects a logger's JSON lines in memory. */
export function memoryLogger(level = "debug"): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  return { log: createLogger({ level, destination }), lines };
}

export const TEST_SECRET_KEY = randomBytes(32).toString("hex");

/** A configuration for in-process test workers: the defaults, a shared secret key, overrides on top. */
export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({
    MCPGW_SECRET_KEY: TEST_SECRET_KEY,
    MCPGW_EDGE_PORT: "0",
    MCPGW_EDGE_AUTH: "none",
    MCPGW_LOG_LEVEL: "silent",
    ...env,
  });
}

export type TestWorker = Worker & { nc: NatsConnection; log: Logger; lines: string[] };

export async function startTestWorker(nats: TestNats, env: Record<string, string> = {}): Promise<TestWorker> {
  const nc = await nats.connect("runtime");
  const { log, lines } = memoryLogger();
  const worker = await startWorker(testConfig(env), nc, log);
  return { ...worker, nc, log, lines };
}

/** A registry on the stores themselves, with no worker and no events: gateways registered "before the cluster started". */
export function directRegistry(stores: Stores, prefix = "mcpgw"): Registry {
  const box = new SecretBox(TEST_SECRET_KEY);
  return new Registry({
    gateways: stores.gateways,
    catalog: stores.catalog,
    state: stores.state,
    subjects: subjects(prefix),
    publish: async () => {},
    seal: (p, gid) => box.seal(p, gid),
    open: (sealed, gid) => box.open(sealed, gid),
  });
}

export type KeyWrite = { key: string; revision: number; op: string; value: unknown; at: number };

/** Records every write of `keys` in `kv`, in stream order, with the time it was seen here (performance.now()). */
export async function recordKeyWrites(kv: KV, keys: string[]): Promise<{ writes: KeyWrite[]; stop(): void }> {
  const seen: KeyWrite[] = [];
  const watch = await kv.watch({ key: ">" });
  void (async () => {
    for await (const e of watch) {
      if (!keys.includes(e.key)) continue;
      let value: unknown = null;
      try {
        value = e.operation === "PUT" ? e.json() : null;
      } catch {}
      seen.push({ key: e.key, revision: e.revision, op: e.operation, value, at: performance.now() });
    }
  })();
  return { writes: seen, stop: () => watch.stop() };
}

export type PollLine = { i: number; gid: string; kind: string; time: number };

/** A test worker's "poll" log lines (debug level, written as a poll falls due, before it waits for a slot), in log order; `i` is the line's index. */
export function pollLines(w: TestWorker, from = 0): PollLine[] {
  return w.lines
    .slice(from)
    .map((l, j) => ({ ...(JSON.parse(l) as { msg?: string; gid?: string; kind?: string; time: number }), i: from + j }))
    .filter((l) => l.msg === "poll" && l.gid)
    .map((l) => ({ i: l.i, gid: l.gid!, kind: l.kind!, time: l.time }));
}

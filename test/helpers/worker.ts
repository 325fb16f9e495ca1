import { randomBytes } from "node:crypto";
import { Writable } from "node:stream";
import type { NatsConnection } from "@nats-io/transport-node";
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

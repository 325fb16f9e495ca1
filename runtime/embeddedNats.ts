import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { PACKAGE_ROOT } from "./packageRoot.ts";

/** nats.conf at the repository root. */
export const NATS_CONF = join(PACKAGE_ROOT, "nats.conf");

export const NATS_USERS = ["runtime", "admin", "viewer"] as const;
export type NatsUser = (typeof NATS_USERS)[number];

/** Secrets the embedded default generates once into `<dataDir>/secrets` (dir 0700, files 0600). */
export type LocalSecrets = {
  natsPasswords: Record<NatsUser, string>;
  secretKey: string;
  edgeToken: string;
  consoleToken: string;
};

export function secretsDir(dataDir: string): string {
  return join(resolve(dataDir), "secrets");
}

function readOrCreate(dir: string, file: string, make: () => string): string {
  const path = join(dir, file);
  if (existsSync(path)) return readFileSync(path, "utf8").trim();
  const value = make();
  writeFileSync(path, `${value}\n`, { mode: 0o600, flag: "wx" });
  return value;
}

/** Reads the local secrets, generating whichever is missing. */
export function localSecrets(dataDir: string): LocalSecrets {
  const dir = secretsDir(dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const password = () => randomBytes(24).toString("base64url");
  return {
    natsPasswords: {
      runtime: readOrCreate(dir, "nats-runtime.password", password),
      admin: readOrCreate(dir, "nats-admin.password", password),
      viewer: readOrCreate(dir, "nats-viewer.password", password),
    },
    secretKey: readOrCreate(dir, "secret-key.hex", () => randomBytes(32).toString("hex")),
    edgeToken: readOrCreate(dir, "edge-token", () => `mcpgw_${randomBytes(24).toString("base64url")}`),
    consoleToken: readOrCreate(dir, "console-token", () => `mcpgw_console_${randomBytes(24).toString("base64url")}`),
  };
}

export type EmbeddedNats = {
  url: string;
  process: ChildProcess;
  stop(): Promise<void>;
};

export type EmbeddedNatsOptions = {
  bin: string;
  host: string;
  port: number;
  storeDir: string;
  passwords: Record<NatsUser, string>;
  /** how long to wait for "Server is ready" */
  readyTimeoutMs?: number;
  onLog?: (line: string) => void;
  /** pid file; a live nats-server named in it (left by a worker that was killed) is stopped first */
  pidFile?: string;
  /** a configuration that includes nats.conf and adds to it (a cluster node's name and routes); default nats.conf */
  configFile?: string;
};

/** Stops a nats-server left running by an embedded worker that died without cleaning up. */
function stopLeftover(pidFile: string): void {
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  try {
    if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("nats-server")) process.kill(pid, "SIGKILL");
  } catch {
    // not running any more
  }
}

/** Starts `nats-server -c nats.conf` and resolves once it accepts clients. */
export async function startEmbeddedNats(opts: EmbeddedNatsOptions): Promise<EmbeddedNats> {
  mkdirSync(opts.storeDir, { recursive: true });
  if (opts.pidFile) stopLeftover(opts.pidFile);
  const child = spawn(opts.bin, ["-c", opts.configFile ?? NATS_CONF], {
    // its own process group: a Ctrl-C meant for the worker must not stop NATS before the worker has drained
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
    env: {
      ...process.env,
      // nats-server parses a variable's value as config syntax: quoted, it stays a string
      MCPGW_NATS_LISTEN: JSON.stringify(`${opts.host}:${opts.port}`),
      MCPGW_NATS_STORE_DIR: JSON.stringify(opts.storeDir),
      MCPGW_NATS_RUNTIME_PASSWORD: JSON.stringify(opts.passwords.runtime),
      MCPGW_NATS_ADMIN_PASSWORD: JSON.stringify(opts.passwords.admin),
      MCPGW_NATS_VIEWER_PASSWORD: JSON.stringify(opts.passwords.viewer),
    },
  });
  const tail: string[] = [];
  await new Promise<void>((resolveReady, reject) => {
    let buffered = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`nats-server did not become ready: ${tail.join(" | ")}`));
    }, opts.readyTimeoutMs ?? 15_000);
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      buffered += chunk;
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 5) tail.shift();
        opts.onLog?.(line);
        if (line.includes("Server is ready")) {
          clearTimeout(timer);
          resolveReady();
        }
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited (${signal ?? code}) before it was ready: ${tail.join(" | ")}`));
    });
  });
  if (opts.pidFile) writeFileSync(opts.pidFile, `${child.pid}\n`);
  child.stderr!.removeAllListeners("data");
  child.stderr!.resume();
  let exited = child.exitCode !== null;
  const exit = new Promise<void>((r) => child.once("exit", () => ((exited = true), r())));
  return {
    url: `nats://${opts.host}:${opts.port}`,
    process: child,
    async stop() {
      if (exited) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exit;
      clearTimeout(timer);
    },
  };
}

import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/**
 * Hang bound of a process coming up (tsx transpiling, node_modules loading, a server or an
 * upstream's first discovery): at load 50 a worker process took more than 60 s to serve.
 */
export const START_MS = 180_000;

export type Proc = {
  child: ChildProcess;
  output(): string;
  /** resolves with the first output line matching `pattern`; rejects when the process exits first or after `ms` */
  waitFor(pattern: RegExp, ms?: number): Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
};

/** Runs a TypeScript entry of this repository through tsx, collecting stdout and stderr. */
export function runTs(entry: string, args: string[], env: NodeJS.ProcessEnv): Proc {
  return run(process.execPath, ["--import", "tsx", resolve(ROOT, entry), ...args], env);
}

/**
 * Runs a command in the repository root, collecting stdout and stderr. `detached`: in a
 * process group of its own, like a shell's foreground job (a Ctrl-C goes to the group).
 */
export function run(command: string, args: string[], env: NodeJS.ProcessEnv, opts: { detached?: boolean } = {}): Proc {
  const child = spawn(command, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: opts.detached,
  });
  let out = "";
  const waiters = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    out += chunk.toString("utf8");
    for (const w of waiters) w();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once("exit", (code, signal) => {
      r({ code, signal });
      for (const w of waiters) w();
    }),
  );
  return {
    child,
    output: () => out,
    exited,
    waitFor(pattern, ms = 30_000) {
      return new Promise((resolveLine, reject) => {
        const check = () => {
          const line = out.split("\n").find((l) => pattern.test(l));
          if (line !== undefined) return done(() => resolveLine(line));
          if (child.exitCode !== null || child.signalCode !== null) return done(() => reject(new Error(`exited before ${pattern}: ${out.slice(-2000)}`)));
        };
        const timer = setTimeout(() => done(() => reject(new Error(`no ${pattern} within ${ms} ms: ${out.slice(-2000)}`))), ms);
        const done = (f: () => void) => {
          clearTimeout(timer);
          waiters.delete(check);
          f();
        };
        waiters.add(check);
        check();
      });
    },
  };
}

/** The MCP endpoint a worker process prints once it serves. */
export async function edgeUrlOf(worker: Proc): Promise<string> {
  const line = await worker.waitFor(/MCP endpoint (\S+)/, START_MS);
  return /MCP endpoint (\S+)/.exec(line)![1]!;
}

/** The environment of a worker process joining the test's nats-server (as user `runtime`). */
export function workerEnv(nats: { url: string; passwords: { runtime: string } }, secretKey: string, env: Record<string, string> = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    NATS_URL: nats.url,
    NATS_USER: "runtime",
    NATS_PASSWORD: nats.passwords.runtime,
    MCPGW_SECRET_KEY: secretKey,
    MCPGW_EDGE_PORT: "0",
    MCPGW_EDGE_AUTH: "none",
    ...env,
  };
}

/** The `mcpgw` CLI run against the test's nats-server as its `admin` user. */
export function runCli(nats: { url: string; passwords: { admin: string } }, args: string[]): Proc {
  return runTs("runtime/cli/main.ts", ["--server", nats.url, "--user", "admin", "--password", nats.passwords.admin, ...args], {});
}

/** Whether a process with this pid is still running (a zombie, exited but not yet reaped, is not). */
export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces and parentheses
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** `pid` and every process descended from it, from /proc. */
export function processTree(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // exited while we looked
    }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const [child, parent] of parentOf) if (parent === tree[i]) tree.push(child);
  }
  return tree;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs` (a bench's or test's cleanup). */
export async function stopProc(p: Proc | undefined, graceMs = 30_000): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.exited, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
  clearTimeout(timer);
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
}

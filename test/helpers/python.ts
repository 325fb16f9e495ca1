// Runs the Python MCP SDK (test/python/requirements.txt, in the venv .ci/run creates) against
// real endpoints: its clients in each of their modes, and its stateless server as an upstream.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { keepUntilExit } from "./nats.ts";
import { ROOT, run } from "./processes.ts";

/** The venv's interpreter (`.ci/run` makes it: `python3 -m venv .venv-py`, then the requirements). */
export const PYTHON = resolve(ROOT, ".venv-py", "bin", "python");

/**
 * Why the Python tests cannot run here, or false when they can. Outside CI a missing venv skips
 * them with a warning on stderr naming the command that makes it; in CI it is an error (CI made
 * the venv, so its absence is a broken install, never a reason to pass quietly).
 */
export function pythonSkip(): string | false {
  if (existsSync(PYTHON)) return false;
  const fix = "python3 -m venv .venv-py && .venv-py/bin/pip install -r test/python/requirements.txt";
  if (process.env.CI) throw new Error(`the Python venv is missing (${PYTHON}); .ci/run makes it: ${fix}`);
  const reason = `SKIPPED: the Python MCP SDK tests need the venv ${PYTHON}: run \`${fix}\``;
  process.stderr.write(`\n*** ${reason} ***\n\n`);
  return reason;
}

/** How the Python client negotiates: `legacy` a 2025-11-25 session, `2026-07-28` stateless from the start, `auto` probe then fall back. */
export type PythonClientMode = "legacy" | "2026-07-28" | "auto";

export type PythonError = { code?: number; message: string; data?: unknown; type?: string };

/** What test/python/client.py printed. */
export type PythonClientReport = {
  mode: PythonClientMode;
  protocolVersion?: string;
  tools?: string[];
  listTtlMs?: number | null;
  calls?: Array<{ name: string; result?: { content?: Array<{ type: string; text?: string }>; isError?: boolean; structuredContent?: unknown }; error?: PythonError; progress?: number[] }>;
  /** how many elicitation / sampling requests the client's callbacks answered */
  asked?: { elicitation: number; sampling: number };
  /** a listen run: the filter the server acknowledged, and the types of the events it got (e.g. `ToolsListChanged`) */
  honored?: Record<string, unknown>;
  events?: string[];
  /** the connection failed (the handshake, or the list) */
  error?: PythonError;
};

/**
 * Python's start-up alone (importing the SDK) takes seconds on a loaded machine: a hang bound, not
 * a speed (the revision clients' batch missed 120 s at load 60-70).
 */
const PYTHON_BOUND_MS = 300_000;

/** One run of test/python/client.py: connect to `url` in `mode`, list tools, make each call in turn. */
export type PythonClientRun = {
  url: string;
  mode: PythonClientMode;
  token?: string;
  calls?: Array<[string, Record<string, unknown>]>;
  /** declare elicitation and accept every request with this content */
  elicit?: Record<string, unknown>;
  /** declare sampling and answer every request with this text */
  sample?: string;
  /** collect each call's progress */
  progress?: boolean;
  /** after the calls, listen for these change notices (see `startPythonListener`) */
  listen?: { tools?: boolean; prompts?: boolean; resources?: boolean; uris?: string[]; events?: number };
};

/**
 * Makes every run at once in one Python process (importing the SDK is the slow part) and
 * returns their reports in the same order. The plan, tokens included, goes on stdin, never argv.
 */
export async function runPythonClients(runs: PythonClientRun[], onLine?: (line: string) => void): Promise<PythonClientReport[]> {
  const child = spawn(PYTHON, [resolve(ROOT, "test/python/client.py")], { cwd: ROOT, env: { PATH: process.env.PATH, HOME: process.env.HOME }, stdio: ["pipe", "pipe", "pipe"] });
  keepUntilExit(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => {
    const before = stdout.length;
    stdout += c.toString("utf8");
    if (!onLine) return;
    const start = stdout.lastIndexOf("\n", before - 1) + 1;
    const done = stdout.lastIndexOf("\n");
    if (done >= start) for (const line of stdout.slice(start, done).split("\n")) if (line) onLine(line);
  });
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
  child.stdin.end(JSON.stringify(runs));
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    new Promise<number | string | null>((r) => child.once("exit", (c, signal) => r(c ?? signal))),
    new Promise<"hung">((r) => (timer = setTimeout(() => r("hung"), PYTHON_BOUND_MS))),
  ]).finally(() => clearTimeout(timer));
  if (code === "hung") child.kill("SIGKILL");
  if (code !== 0) throw new Error(`python client ${code === "hung" ? `did not finish within ${PYTHON_BOUND_MS} ms` : `exited ${code}`}: ${stderr.slice(-2000)}`);
  // the report is the last line (a listen run prints its acknowledgment before it)
  return JSON.parse(stdout.trim().split("\n").at(-1)!) as PythonClientReport[];
}

/**
 * One run with `listen`: resolves `honored` once the client holds its listen stream
 * (acknowledged), so the test can change the catalog then; `report` once it got its first event.
 */
export function startPythonListener(run: PythonClientRun & { listen: NonNullable<PythonClientRun["listen"]> }): { honored: Promise<Record<string, unknown>>; report: Promise<PythonClientReport> } {
  let acked!: (h: Record<string, unknown>) => void;
  const honored = new Promise<Record<string, unknown>>((r) => (acked = r));
  const report = runPythonClients([run], (line) => {
    const m = JSON.parse(line) as { honored?: Record<string, unknown> };
    if (m.honored) acked(m.honored);
  }).then((r) => r[0]!);
  // a run that ends before it listens (refused, failed) ends the wait for its acknowledgment too
  void report.then((r) => acked(r.honored ?? {}), () => acked({}));
  return { honored, report };
}

/** One run on its own (see `runPythonClients`). */
export async function runPythonClient(url: string, mode: PythonClientMode, opts: Omit<PythonClientRun, "url" | "mode"> = {}): Promise<PythonClientReport> {
  return (await runPythonClients([{ url, mode, ...opts }]))[0]!;
}

/** The text of a call's first content block, or its error's message. */
export function callText(call: NonNullable<PythonClientReport["calls"]>[number] | undefined): string {
  if (!call) return "(no such call)";
  if (call.error) return `error ${call.error.code ?? call.error.type}: ${call.error.message}`;
  return call.result?.content?.[0]?.text ?? "";
}

/** test/python/stateless_server.py: an upstream that offers only 2026-07-28, on a free loopback port. */
export async function startPythonStatelessServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const proc = run(PYTHON, [resolve(ROOT, "test/python/stateless_server.py")], {});
  keepUntilExit(proc.child);
  const line = await proc.waitFor(/^\{"url"/, PYTHON_BOUND_MS);
  const { url } = JSON.parse(line) as { url: string };
  return {
    url,
    async stop() {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
      proc.child.kill("SIGTERM");
      const killer = setTimeout(() => proc.child.kill("SIGKILL"), 5_000);
      await proc.exited;
      clearTimeout(killer);
    },
  };
}

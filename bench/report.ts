// What every benchmark prints: a titled table of measured figures, with the context needed to
// read them (the setup and, where one exists, the bound the figure is judged against).
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { stopProc, type Proc } from "../test/helpers/processes.ts";

export type Stats = { n: number; min: number; p50: number; p95: number; p99: number; max: number; mean: number };

/** Order statistics of a sample (nearest-rank percentiles). */
export function stats(sample: number[]): Stats {
  if (sample.length === 0) throw new Error("no samples");
  const s = [...sample].sort((a, b) => a - b);
  const rank = (p: number) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
  return { n: s.length, min: s[0]!, p50: rank(0.5), p95: rank(0.95), p99: rank(0.99), max: s.at(-1)!, mean: s.reduce((a, b) => a + b, 0) / s.length };
}

export const ms = (x: number) => `${Math.round(x)} ms`;
export const ratio = (x: number) => x.toFixed(2);
export const msStats = (x: Stats) => `p50 ${ms(x.p50)}, p95 ${ms(x.p95)}, max ${ms(x.max)} (n=${x.n})`;

/** A table row of times: their stats and, with a bound, p50/p95/max as ratios of it. */
export function msRow(figure: string, sample: number[], bound?: number, boundName?: string): [string, string] {
  const s = stats(sample);
  if (bound === undefined) return [figure, msStats(s)];
  return [figure, `${msStats(s)}; p50/${boundName} ${ratio(s.p50 / bound)}, p95/${boundName} ${ratio(s.p95 / bound)}, max/${boundName} ${ratio(s.max / bound)}`];
}

/** Prints one benchmark's results as a Markdown table. */
export function report(title: string, setup: string, rows: Array<[figure: string, value: string]>): void {
  const width = Math.max("figure".length, ...rows.map(([f]) => f.length));
  const lines = [`\n## ${title}`, "", setup, "", `| ${"figure".padEnd(width)} | value |`, `| ${"-".repeat(width)} | ----- |`];
  for (const [figure, value] of rows) lines.push(`| ${figure.padEnd(width)} | ${value} |`);
  console.log(lines.join("\n"));
}

/** Prints a Markdown table with columns of its own (one row per thing compared). */
export function table(title: string, setup: string, header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  console.log([`\n## ${title}`, "", setup, "", line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n"));
}

/** Milliseconds with the precision a sub-millisecond figure needs. */
export const msFine = (x: number) => (x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`);

/** Resident memory of a process, in MB (Linux /proc). */
export function rssMbOf(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}

/** User + system CPU seconds a process has used so far (Linux /proc; clock ticks of 1/100 s). */
export function cpuSecondsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The machine's 1-minute load average: other work on the machine weighs on every figure. */
export const loadAverage = () => loadavg()[0]!.toFixed(1);

/**
 * Runs a bench's `main`; on failure prints the error and the tail of each process's output and
 * sets a failing exit code. Then stops the processes (SIGTERM: a profiled worker writes its
 * profile as it exits), runs `cleanup`, and exits, whatever handles are left open.
 */
export async function runBench(main: () => Promise<void>, procs: Proc[], cleanup: () => Promise<void>): Promise<never> {
  try {
    await main();
  } catch (err) {
    console.error(err);
    for (const p of procs) console.error("process output:\n", p.output().slice(-2000));
    process.exitCode = 1;
  } finally {
    await Promise.all(procs.map((p) => stopProc(p)));
    await cleanup();
  }
  process.exit();
}

// What a V8 CPU profile (`node --cpu-prof`, e.g. CALLPATH_CPU_PROF=dir on bench/callPath.bench.ts)
// says a process spent its time on: self time by area (a package, a file of ours, Node's
// internals, the garbage collector) and by function, and inclusive time by function (the
// function or anything it called), each as a share of the busy (non-idle) time.
// Run: node --import tsx bench/cpuProfile.ts <file.cpuprofile> [top=25] [from-to]
// `from-to`: only the samples in that span of the monotonic clock, in µs (a bench prints its
// window that way: V8 stamps samples with CLOCK_MONOTONIC, as process.hrtime does).
import { readFileSync } from "node:fs";

type Frame = { functionName: string; url: string; lineNumber: number };
type ProfileNode = { id: number; callFrame: Frame; children?: number[] };
type Profile = { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number };

/** Where a frame's code lives: a package, one of our files, Node itself, or V8's pseudo-frames. */
export function areaOf(url: string, functionName: string): string {
  if (!url) return functionName.startsWith("(") ? functionName : "(native)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  if (url.startsWith("node:")) return "node:" + url.slice(5).split("/")[0] + (url.includes("internal/") ? "/" + url.split("internal/")[1]!.split("/")[0]!.replace(/\.js$/, "") : "");
  const ours = /\/(protocol|actors|runtime|bench|test)\/(.+)$/.exec(url);
  return ours ? `${ours[1]}/${ours[2]}` : url;
}

export type Share = { name: string; ms: number; share: number };

export function summarise(p: Profile, top = 25, span?: { fromUs: number; toUs: number }): { busyMs: number; idleMs: number; byArea: Share[]; selfByFunction: Share[]; inclusiveByFunction: Share[] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const fnKey = (f: Frame) => `${f.functionName || "(anonymous)"} ${areaOf(f.url, f.functionName)}:${f.lineNumber + 1}`;
  const self = new Map<string, number>();
  const area = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let idle = 0;
  let busy = 0;
  const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);
  let at = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    at += p.timeDeltas[i] ?? 0;
    if (span && (at < span.fromUs || at >= span.toUs)) continue;
    // a sample's time is the delta to the next sample
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
    const n = byId.get(p.samples[i]!)!;
    if (n.callFrame.functionName === "(idle)") {
      idle += dt;
      continue;
    }
    busy += dt;
    add(self, fnKey(n.callFrame), dt);
    add(area, areaOf(n.callFrame.url, n.callFrame.functionName), dt);
    const seen = new Set<string>();
    for (let id: number | undefined = n.id; id !== undefined; id = parent.get(id)) {
      const k = fnKey(byId.get(id)!.callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      add(inclusive, k, dt);
    }
  }
  const rank = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, ms]) => ({ name, ms, share: ms / busy }));
  return { busyMs: busy, idleMs: idle, byArea: rank(area), selfByFunction: rank(self), inclusiveByFunction: rank(inclusive).filter((x) => !x.name.startsWith("(root)")) };
}

if (process.argv[1]?.endsWith("cpuProfile.ts")) {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node --import tsx bench/cpuProfile.ts <file.cpuprofile> [top] [fromUs-toUs]");
    process.exit(2);
  }
  const [fromUs, toUs] = (process.argv[4] ?? "").split("-").map(Number);
  const span = fromUs && toUs ? { fromUs, toUs } : undefined;
  const r = summarise(JSON.parse(readFileSync(file, "utf8")) as Profile, Number(process.argv[3] ?? 25), span);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  console.log(`busy ${(r.busyMs / 1000).toFixed(1)} s, idle ${(r.idleMs / 1000).toFixed(1)} s`);
  for (const [title, list] of [
    ["self time by area", r.byArea],
    ["self time by function", r.selfByFunction],
    ["inclusive time by function", r.inclusiveByFunction],
  ] as const) {
    console.log(`\n### ${title}\n`);
    for (const x of list) console.log(`| ${pct(x.share).padStart(6)} | ${x.name} |`);
  }
}

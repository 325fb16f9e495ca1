// What holds a process's heap: a V8 heap snapshot (`node --heapsnapshot-signal`, taken after a
// full GC, so only what is reachable) summed by what each object is (its constructor for
// objects; strings, code, closures, arrays by kind), and the difference between two snapshots
// divided by what was added between them (e.g. bytes per session).
// Run: node --import tsx bench/heapSnapshot.ts <before.heapsnapshot> <after.heapsnapshot> <items added> [top=20]
import { readFileSync } from "node:fs";

type Snapshot = {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
};

export type Holding = { what: string; bytes: number; count: number };

/** Self sizes of every live object of a snapshot, summed by what it is. */
export function holdings(file: string): Map<string, Holding> {
  const snap = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const [T, N, S] = ["type", "name", "self_size"].map((f) => fields.indexOf(f)) as [number, number, number];
  const out = new Map<string, Holding>();
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const type = types[snap.nodes[i + T]!]!;
    const name = snap.strings[snap.nodes[i + N]!]!;
    const what =
      type === "object" || type === "native" ? name.slice(0, 60) : type === "closure" ? "(closures)" : type.includes("string") ? "(strings)" : type === "array" || type === "hidden" ? `(${type}) ${name.slice(0, 40)}` : `(${type})`;
    const h = out.get(what) ?? { what, bytes: 0, count: 0 };
    h.bytes += snap.nodes[i + S]!;
    h.count += 1;
    out.set(what, h);
  }
  return out;
}

/** What grew between two snapshots, per item added, largest first. */
export function growthPer(before: Map<string, Holding>, after: Map<string, Holding>, items: number): { total: number; rows: Holding[] } {
  const rows: Holding[] = [];
  for (const [what, a] of after) {
    const b = before.get(what) ?? { bytes: 0, count: 0 };
    rows.push({ what, bytes: (a.bytes - b.bytes) / items, count: (a.count - b.count) / items });
  }
  rows.sort((x, y) => y.bytes - x.bytes);
  return { total: rows.reduce((n, r) => n + r.bytes, 0), rows };
}

if (process.argv[1]?.endsWith("heapSnapshot.ts")) {
  const [before, after, items, top] = process.argv.slice(2);
  if (!before || !after || !items) {
    console.error("usage: node --import tsx bench/heapSnapshot.ts <before> <after> <items added> [top]");
    process.exit(2);
  }
  const g = growthPer(holdings(before), holdings(after), Number(items));
  console.log(`heap growth per item: ${(g.total / 1024).toFixed(1)} KB`);
  for (const r of g.rows.slice(0, Number(top ?? 20))) console.log(`| ${(r.bytes / 1024).toFixed(2).padStart(7)} KB | ${r.count.toFixed(1).padStart(6)} | ${r.what} |`);
}

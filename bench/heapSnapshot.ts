// What holds a process's heap: a V8 heap snapshot (`node --heapsnapshot-signal`, taken after a
// full GC, so only what is reachable) summed by what each object is (its constructor for
// objects; strings, code, closures, arrays by kind), and the difference between two snapshots
// divided by what was added between them (e.g. bytes per session).
// Run: node --import tsx bench/heapSnapshot.ts <before.heapsnapshot> <after.heapsnapshot> <items added> [top=20]
// or: node --import tsx bench/heapSnapshot.ts --retainers <file.heapsnapshot> <what> [top=15]: for the objects of
// one kind (a name as the summary prints it, e.g. Promise, Generator, "(closures)"), what holds them:
// their retaining paths (up to 4 hops, weak edges skipped) counted, most common first.
import { readFileSync } from "node:fs";

type Snapshot = {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]]; edge_fields: string[]; edge_types: [string[], ...unknown[]] } };
  nodes: number[];
  edges: number[];
  strings: string[];
};

export type Holding = { what: string; bytes: number; count: number };

/** Self sizes of every live object of a snapshot, summed by what it is. */
export function holdings(file: string): Map<string, Holding> {
  const snap = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
  const fields = snap.snapshot.meta.node_fields;
  const [S] = ["self_size"].map((f) => fields.indexOf(f)) as [number];
  const out = new Map<string, Holding>();
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const what = kindOf(snap, i);
    const h = out.get(what) ?? { what, bytes: 0, count: 0 };
    h.bytes += snap.nodes[i + S]!;
    h.count += 1;
    out.set(what, h);
  }
  return out;
}

/** What a node is, as the summaries name it: its constructor for objects; strings, code, closures, arrays by kind. */
function kindOf(snap: Snapshot, i: number): string {
  const fields = snap.snapshot.meta.node_fields;
  const type = snap.snapshot.meta.node_types[0][snap.nodes[i + fields.indexOf("type")]!]!;
  const name = snap.strings[snap.nodes[i + fields.indexOf("name")]!]!;
  return type === "object" || type === "native" ? name.slice(0, 60) : type === "closure" ? "(closures)" : type.includes("string") ? "(strings)" : type === "array" || type === "hidden" ? `(${type}) ${name.slice(0, 40)}` : `(${type})`;
}

/** For every object of kind `what`: its retaining path (first non-weak retainer, up to `depth` hops), counted. */
export function retainers(file: string, what: string, depth = 4): Array<{ path: string; count: number }> {
  const snap = JSON.parse(readFileSync(file, "utf8")) as Snapshot;
  const nf = snap.snapshot.meta.node_fields.length;
  const ef = snap.snapshot.meta.edge_fields;
  const edgeTypes = snap.snapshot.meta.edge_types[0];
  const [ET, EN, ETO] = ["type", "name_or_index", "to_node"].map((f) => ef.indexOf(f)) as [number, number, number];
  const EC = snap.snapshot.meta.node_fields.indexOf("edge_count");
  // the first strong retainer of each node (node index → [retainer node index, edge label])
  const retainer = new Map<number, [number, string]>();
  for (let n = 0, e = 0; n < snap.nodes.length; n += nf) {
    const count = snap.nodes[n + EC]!;
    for (let k = 0; k < count; k++, e += ef.length) {
      const type = edgeTypes[snap.edges[e + ET]!]!;
      if (type === "weak" || type === "shortcut") continue;
      const to = snap.edges[e + ETO]!;
      if (retainer.has(to)) continue;
      const label = type === "element" || type === "hidden" ? `[${snap.edges[e + EN]}]` : String(snap.strings[snap.edges[e + EN]!]);
      retainer.set(to, [n, label]);
    }
  }
  const paths = new Map<string, number>();
  for (let n = 0; n < snap.nodes.length; n += nf) {
    if (kindOf(snap, n) !== what) continue;
    const hops: string[] = [];
    for (let at = n, i = 0; i < depth; i++) {
      const r = retainer.get(at);
      if (!r) break;
      hops.push(`${kindOf(snap, r[0])}.${r[1].replace(/^\d+$/, "[n]").slice(0, 30)}`);
      at = r[0];
    }
    const path = hops.join(" ← ");
    paths.set(path, (paths.get(path) ?? 0) + 1);
  }
  return [...paths].map(([path, count]) => ({ path, count })).sort((a, b) => b.count - a.count);
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

if (process.argv[1]?.endsWith("heapSnapshot.ts") && process.argv[2] === "--retainers") {
  const [, file, what, top] = process.argv.slice(2);
  if (!file || !what) {
    console.error("usage: node --import tsx bench/heapSnapshot.ts --retainers <file> <what> [top]");
    process.exit(2);
  }
  for (const r of retainers(file, what).slice(0, Number(top ?? 15))) console.log(`${String(r.count).padStart(7)}  ${what} ← ${r.path}`);
} else if (process.argv[1]?.endsWith("heapSnapshot.ts")) {
  const [before, after, items, top] = process.argv.slice(2);
  if (!before || !after || !items) {
    console.error("usage: node --import tsx bench/heapSnapshot.ts <before> <after> <items added> [top]");
    process.exit(2);
  }
  const g = growthPer(holdings(before), holdings(after), Number(items));
  console.log(`heap growth per item: ${(g.total / 1024).toFixed(1)} KB`);
  for (const r of g.rows.slice(0, Number(top ?? 20))) console.log(`| ${(r.bytes / 1024).toFixed(2).padStart(7)} KB | ${r.count.toFixed(1).padStart(6)} | ${r.what} |`);
}

const ids = Array.from({ length: 10000 }, (_, i) => (i * 2654435761 >>> 0).toString(16).padStart(16, "0"));
const m = new Map(ids.filter((_, i) => i % 5 === 0).map((g, i) => [g, { lastUsedAt: Date.now() - i, uses: 1, liveSessions: i % 3 }]));
for (let r = 0; r < 6; r++) {
  const c = () => { const u = process.cpuUsage(); return () => { const d = process.cpuUsage(u); return ((d.user + d.system) / 1000).toFixed(1); }; };
  let f = c(); const g = [...new Set(ids)].sort(); const a = f();
  f = c(); const el = g.flatMap((gid) => { const u = m.get(gid); return u ? [{ gid, u }] : []; }); const b = f();
  f = c(); el.sort((x, y) => (y.u.lastUsedAt - x.u.lastUsedAt) || (x.gid < y.gid ? -1 : 1)); const d = f();
  f = c(); const hs = new Set(el.slice(0, 2000).map((e) => e.gid)); const cold = g.filter((x) => !hs.has(x)); const e = f();
  console.log("sort", a, "flatMap", b, "rank", d, "cold", e);
}

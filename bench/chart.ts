// Latency distributions as an SVG a browser or a Markdown viewer shows as it is: one panel per
// load, one cumulative curve per path (share of calls done within x ms), x on a log scale so a
// 0.8 ms path and a 5 ms path are both readable. Hand-made: a few polylines need no library.

export type Series = { name: string; latenciesMs: number[] };
export type Panel = { title: string; series: Series[] };

const COLORS = ["#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c"];
const W = 520;
const H = 300;
const M = { left: 52, right: 16, top: 30, bottom: 40 };

const esc = (t: string) => t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function panel(p: Panel, x0: number): string {
  const all = p.series.flatMap((s) => s.latenciesMs);
  const sorted = [...all].sort((a, b) => a - b);
  // from the fastest call to the 99.9th percentile: the rare outlier would squash the rest
  const lo = Math.max(0.01, sorted[0] ?? 0.1);
  const hi = Math.max(lo * 2, sorted[Math.floor(sorted.length * 0.999)] ?? 1);
  const [a, b] = [Math.floor(Math.log10(lo)), Math.ceil(Math.log10(hi))];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const x = (ms: number) => x0 + M.left + ((Math.log10(Math.min(Math.max(ms, 10 ** a), 10 ** b)) - a) / (b - a)) * pw;
  const y = (share: number) => M.top + (1 - share) * ph;
  const out: string[] = [`<text x="${x0 + M.left}" y="18" font-size="13" font-weight="bold">${esc(p.title)}</text>`];
  for (let d = a; d <= b; d++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** d;
      if (v < 10 ** a || v > 10 ** b) continue;
      out.push(`<line x1="${x(v).toFixed(1)}" x2="${x(v).toFixed(1)}" y1="${M.top}" y2="${M.top + ph}" stroke="#ddd"/>`);
      out.push(`<text x="${x(v).toFixed(1)}" y="${M.top + ph + 14}" font-size="10" text-anchor="middle">${v >= 1 ? v : v.toPrecision(1)}</text>`);
    }
  }
  out.push(`<line x1="${x0 + M.left}" x2="${x0 + M.left + pw}" y1="${y(1)}" y2="${y(1)}" stroke="#eee"/>`);
  for (const share of [0, 0.25, 0.5, 0.75, 0.99]) {
    out.push(`<line x1="${x0 + M.left}" x2="${x0 + M.left + pw}" y1="${y(share).toFixed(1)}" y2="${y(share).toFixed(1)}" stroke="${share === 0.5 || share === 0.99 ? "#bbb" : "#eee"}"/>`);
    out.push(`<text x="${x0 + M.left - 4}" y="${(y(share) + 3).toFixed(1)}" font-size="10" text-anchor="end">${share === 0.99 ? "p99" : share === 0.5 ? "p50" : `${share * 100}%`}</text>`);
  }
  out.push(`<text x="${x0 + M.left + pw / 2}" y="${H - 6}" font-size="11" text-anchor="middle">latency of one tools/call (ms, log scale)</text>`);
  p.series.forEach((s, i) => {
    const v = [...s.latenciesMs].sort((m, n) => m - n);
    if (v.length === 0) return;
    // at most ~400 points per curve: enough for the eye, small enough for the repository
    const step = Math.max(1, Math.floor(v.length / 400));
    const pts: string[] = [];
    for (let k = 0; k < v.length; k += step) pts.push(`${x(v[k]!).toFixed(1)},${y((k + 1) / v.length).toFixed(1)}`);
    pts.push(`${x(v.at(-1)!).toFixed(1)},${y(1).toFixed(1)}`);
    const color = COLORS[i % COLORS.length];
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="1.8" points="${pts.join(" ")}"/>`);
    // the legend top left, where cumulative curves rising to the right leave room
    out.push(`<rect x="${x0 + M.left + 8}" y="${M.top + 10 + 14 * i}" width="10" height="3" fill="${color}"/>`);
    out.push(`<text x="${x0 + M.left + 22}" y="${M.top + 14 + 14 * i}" font-size="10">${esc(s.name)}</text>`);
  });
  return out.join("\n");
}

/** The panels side by side in one SVG document. */
export function latencyChart(panels: Panel[], caption: string): string {
  const width = W * panels.length;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${H + 20}" viewBox="0 0 ${width} ${H + 20}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...panels.map((p, i) => panel(p, i * W)),
    `<text x="8" y="${H + 14}" font-size="10" fill="#555">${esc(caption)}</text>`,
    `</svg>`,
  ].join("\n");
}

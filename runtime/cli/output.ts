import { ProtocolError } from "../../protocol/envelope.ts";

/** Renders rows as an aligned text table. */
export function table(headers: string[], rows: Array<Array<string | number | boolean | null | undefined>>): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? "-" : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n");
}

/** Key/value lines for one object. */
export function fields(pairs: Array<[string, unknown]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k.padEnd(w)}  ${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join("\n");
}

/** One line for any error; an error envelope shows its code, message and field issues. */
export function errorLine(err: unknown): string {
  if (err instanceof ProtocolError) {
    const issues = err.issues?.length ? ` (${err.issues.map((i) => `${i.path}: ${i.message}`).join("; ")})` : "";
    return `error: ${err.code}: ${err.message}${issues}`;
  }
  const e = err as Error;
  if (e?.name === "NoRespondersError" || /no responders/i.test(e?.message ?? "")) return "error: unavailable: no mcpgw worker is answering (is one running?)";
  if (/timeout/i.test(e?.name ?? "") || /timeout/i.test(e?.message ?? "")) return "error: timeout: no answer in time";
  return `error: ${e?.message ?? String(err)}`;
}

export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "-";
  const ms = now - Date.parse(iso);
  const abs = Math.abs(ms);
  const text = abs < 1000 ? `${abs}ms` : abs < 60_000 ? `${Math.round(abs / 1000)}s` : abs < 3_600_000 ? `${Math.round(abs / 60_000)}m` : `${Math.round(abs / 3_600_000)}h`;
  return ms >= 0 ? `${text} ago` : `in ${text}`;
}

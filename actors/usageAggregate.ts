import type { StoredUsage, UsageReport } from "../protocol/usage.ts";
import type { UsageStats } from "./classification.ts";

type WorkerView = { heardAt: number; liveSessions: Map<string, number> };

/**
 * Cluster-wide usage from the workers' usage reports: last used = max, use count =
 * cumulative, live sessions = sum of each worker's latest report. A worker whose reports
 * stopped for `staleAfterMs` (on this process's monotonic clock) no longer counts and is
 * forgotten; a removed gateway's totals are forgotten when the host says so.
 */
export class UsageAggregate {
  readonly #staleAfterMs: number;
  readonly #workers = new Map<string, WorkerView>();
  readonly #totals = new Map<string, StoredUsage>();

  constructor(staleAfterMs: number) {
    this.#staleAfterMs = staleAfterMs;
  }

  /** `heardAt`: this process's monotonic time of receipt (never the sender's clock). */
  ingest(report: UsageReport, heardAt: number): void {
    // every worker ingests but only the leader takes snapshots: prune here too, or a
    // follower keeps every worker id it ever heard from
    this.#dropStaleWorkers(heardAt);
    const liveSessions = new Map<string, number>();
    for (const g of report.gateways) {
      const t = this.#totals.get(g.gid) ?? { lastUsedAt: null, uses: 0 };
      this.#totals.set(g.gid, { lastUsedAt: maxOrNull(t.lastUsedAt, g.lastUsedAt), uses: t.uses + g.uses });
      if (g.liveSessions > 0) liveSessions.set(g.gid, (liveSessions.get(g.gid) ?? 0) + g.liveSessions);
    }
    this.#workers.set(report.worker, { heardAt, liveSessions });
  }

  /** Merges usage kept in KV by an earlier leader: max of both, so nothing is counted twice. */
  adopt(gid: string, stored: StoredUsage): void {
    const t = this.#totals.get(gid) ?? { lastUsedAt: null, uses: 0 };
    this.#totals.set(gid, { lastUsedAt: maxOrNull(t.lastUsedAt, stored.lastUsedAt), uses: Math.max(t.uses, stored.uses) });
  }

  /** Cumulative usage of one gateway, as it should be kept in KV. */
  stored(gid: string): StoredUsage | undefined {
    return this.#totals.get(gid);
  }

  gids(): string[] {
    return [...this.#totals.keys()];
  }

  /** Drops a removed gateway's totals. */
  forget(gid: string): void {
    this.#totals.delete(gid);
  }

  /** Drops the totals of every gateway not in `known`: a report sent after a gateway's removal would otherwise bring it back. */
  keepOnly(known: { has(gid: string): boolean }): void {
    for (const gid of this.#totals.keys()) if (!known.has(gid)) this.#totals.delete(gid);
  }

  /** How many workers' latest reports are held (stale ones go at every report and snapshot). */
  workerCount(): number {
    return this.#workers.size;
  }

  /** Each gateway's usage at monotonic time `now`; reports older than the stale bound are dropped first. */
  snapshot(now: number): Map<string, UsageStats> {
    this.#dropStaleWorkers(now);
    const out = new Map<string, UsageStats>();
    for (const [gid, t] of this.#totals) out.set(gid, { ...t, liveSessions: 0 });
    for (const view of this.#workers.values()) {
      for (const [gid, n] of view.liveSessions) {
        const u = out.get(gid) ?? { lastUsedAt: null, uses: 0, liveSessions: 0 };
        out.set(gid, { ...u, liveSessions: u.liveSessions + n });
      }
    }
    return out;
  }

  #dropStaleWorkers(now: number): void {
    for (const [worker, view] of this.#workers) if (now - view.heardAt > this.#staleAfterMs) this.#workers.delete(worker);
  }
}

function maxOrNull(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.max(a, b);
}

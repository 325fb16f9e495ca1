// Hot/cold classification: a pure, deterministic function of the enabled gateways and
// their cluster-wide usage (lesson 11). Keyed by gateway id only, never by URL (lesson 4).
import type { Classification } from "../protocol/classification.ts";

/** One gateway's cluster-wide usage as the classifier sees it. */
export type UsageStats = { lastUsedAt: number | null; liveSessions: number; uses: number };

export type ClassificationResult = Pick<Classification, "hot" | "cold" | "meta">;

/** Share of the enabled gateways that may be hot: floor(N / 5) = floor(20% of N), in integers. */
export function hotCapOf(total: number): number {
  return Math.floor(total / 5);
}

function hasRecordedUse(u: UsageStats | undefined): u is UsageStats {
  return !!u && (u.lastUsedAt !== null || u.uses > 0 || u.liveSessions > 0);
}

/** Last used desc, live sessions desc, use count desc, id asc (code-unit order, locale-free). */
function byRank(a: { gid: string; u: UsageStats }, b: { gid: string; u: UsageStats }): number {
  return (
    (b.u.lastUsedAt ?? -1) - (a.u.lastUsedAt ?? -1) ||
    b.u.liveSessions - a.u.liveSessions ||
    b.u.uses - a.u.uses ||
    (a.gid < b.gid ? -1 : a.gid > b.gid ? 1 : 0)
  );
}

/**
 * hot = the first min(cap, eligible) of the eligible gateways by rank; cold = every other
 * enabled gateway, in id order. No backfill: a gateway without recorded use is never hot.
 */
export function classify(enabledGids: readonly string[], usageOf: (gid: string) => UsageStats | undefined): ClassificationResult {
  // ids already strictly ascending (the roster keeps them so) skip the set and the sort: most of the CPU at 10,000
  const gids = isStrictlyAscending(enabledGids) ? enabledGids : [...new Set(enabledGids)].sort();
  const total = gids.length;
  const hotCap = hotCapOf(total);
  const eligible: Array<{ gid: string; u: UsageStats }> = [];
  for (const gid of gids) {
    const u = usageOf(gid);
    if (hasRecordedUse(u)) eligible.push({ gid, u });
  }
  const hot = eligible.sort(byRank).slice(0, hotCap).map((e) => e.gid);
  const hotSet = new Set(hot);
  const cold = gids.filter((gid) => !hotSet.has(gid));
  const belowCapReason =
    hot.length < hotCap ? `only ${eligible.length} of ${total} enabled gateways have recorded use, below the hot cap of ${hotCap}` : null;
  return { hot, cold, meta: { total, hotCap, hotActual: hot.length, eligible: eligible.length, belowCapReason } };
}

function isStrictlyAscending(ids: readonly string[]): boolean {
  for (let i = 1; i < ids.length; i++) if (!(ids[i - 1]! < ids[i]!)) return false;
  return true;
}

/**
 * Which gateways exist and which of them are enabled: what the classifier needs of the gateway
 * records, kept in memory as the records change (runtime/classifierHost.ts feeds it from a KV
 * watch), so a classification reads no record.
 */
export class GatewayRoster {
  readonly #enabled = new Map<string, boolean>();
  /** the enabled ids in ascending order, kept until the set changes (most intervals it does not) */
  #sorted: string[] | null = null;

  set(gid: string, enabled: boolean): void {
    if (this.#enabled.get(gid) !== enabled) this.#sorted = null;
    this.#enabled.set(gid, enabled);
  }

  remove(gid: string): void {
    if (this.#enabled.delete(gid)) this.#sorted = null;
  }

  /** whether the gateway is registered, enabled or not */
  has(gid: string): boolean {
    return this.#enabled.has(gid);
  }

  /** the enabled gateways' ids, ascending */
  enabledIds(): readonly string[] {
    if (!this.#sorted) {
      const out: string[] = [];
      for (const [gid, on] of this.#enabled) if (on) out.push(gid);
      this.#sorted = out.sort();
    }
    return this.#sorted;
  }

  static of(gateways: Iterable<{ id: string; enabled: boolean }>): GatewayRoster {
    const r = new GatewayRoster();
    for (const g of gateways) r.set(g.id, g.enabled);
    return r;
  }
}

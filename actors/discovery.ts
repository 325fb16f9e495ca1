// Pure logic of discovery and poll scheduling: catalog hashing and diffing, classification
// tiers, poll timestamps and the per-gateway poll phase. No I/O.
import { createHash } from "node:crypto";
import { CATALOG_LISTS, type Catalog, type CatalogDiff, type CatalogList, type CatalogListDiff, type UpstreamEra } from "../protocol/catalog.ts";
import { ClassificationSchema, isClassificationValid, type Classification, type Tier } from "../protocol/classification.ts";
import { PollStampSchema } from "../protocol/poller.ts";

/** The four lists discovery fetches, MCP objects as the upstream sent them. */
export type CatalogLists = Pick<Catalog, CatalogList>;

/** What identifies an item within its list: tool/prompt name, resource URI, template. */
const KEY_OF: Record<CatalogList, (item: Record<string, unknown>) => string> = {
  tools: (i) => String(i.name),
  prompts: (i) => String(i.name),
  resources: (i) => String(i.uri),
  resourceTemplates: (i) => String(i.uriTemplate),
};

/** JSON with object keys sorted, so equal content always serialises equally. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

const byKey = (list: CatalogList, items: readonly Record<string, unknown>[]) =>
  new Map(items.map((i) => [KEY_OF[list](i), canonicalJson(i)] as const));

/** sha256 of the canonical JSON of the four lists; items are ordered by key, so a reordering upstream is no change. */
export function catalogHash(lists: CatalogLists): string {
  const canonical = Object.fromEntries(
    CATALOG_LISTS.map((l) => [l, [...byKey(l, lists[l]).entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, v]) => v)]),
  );
  return createHash("sha256").update(canonicalJson(canonical)).digest("hex");
}

const emptyListDiff = (): CatalogListDiff => ({ tools: [], prompts: [], resources: [], resourceTemplates: [] });

/** Added, updated and removed items by key; `before` null means everything is added. */
export function diffCatalogs(before: CatalogLists | null, after: CatalogLists): CatalogDiff {
  const diff: CatalogDiff = { added: emptyListDiff(), updated: emptyListDiff(), removed: emptyListDiff() };
  for (const list of CATALOG_LISTS) {
    const old = byKey(list, before?.[list] ?? []);
    const now = byKey(list, after[list]);
    for (const [k, v] of now) {
      if (!old.has(k)) diff.added[list].push(k);
      else if (old.get(k) !== v) diff.updated[list].push(k);
    }
    for (const k of old.keys()) if (!now.has(k)) diff.removed[list].push(k);
    for (const kind of ["added", "updated", "removed"] as const) diff[kind][list].sort();
  }
  return diff;
}

export const EMPTY_DIFF: CatalogDiff = { added: emptyListDiff(), updated: emptyListDiff(), removed: emptyListDiff() };

/** `changed`: the lists changed; `write`: the stored catalog is to be replaced (the lists, or only the era, changed). */
export type Reconciled = { changed: boolean; write: boolean; catalog: Catalog; diff: CatalogDiff };

/** Compares what discovery found (and the era it found the upstream speaking, when it knows) with the stored catalog. */
export function reconcile(gid: string, current: Catalog | null, found: CatalogLists, at: string, era?: UpstreamEra): Reconciled {
  const hash = catalogHash(found);
  if (current && current.hash === hash) {
    if (era === undefined || current.era === era) return { changed: false, write: false, catalog: current, diff: EMPTY_DIFF };
    return { changed: false, write: true, catalog: { ...current, era }, diff: EMPTY_DIFF };
  }
  const catalog: Catalog = { gid, hash, discoveredAt: at, ...(era === undefined ? {} : { era }), ...found };
  return { changed: true, write: true, catalog, diff: diffCatalogs(current, found) };
}

/** Discovery interval multiplier per tier: cold polls at 3×, everything else at the base interval. */
export const DISCOVERY_MULTIPLIER: Record<Tier, number> = { hot: 1, cold: 3, unclassified: 1 };

/**
 * The gateway's tier from the stored classification. Missing, unparsable or expired
 * classification is "unclassified" (fail open: polled at the base interval, never as cold),
 * and so is one computed in the future (beyond the skew allowance): like a future poll stamp,
 * its `validUntil` cannot be trusted.
 */
export function tierOf(classification: unknown, gid: string, nowMs: number): Tier {
  const c = readClassification(classification);
  if (!c || !isClassificationValid(c.data, nowMs)) return "unclassified";
  if (c.hot.has(gid)) return "hot";
  if (c.cold.has(gid)) return "cold";
  return "unclassified";
}

type ReadClassification = { data: Classification; hot: Set<string>; cold: Set<string> };
/** Parsed once per value: every poller of a worker shares the one its watch holds. */
const readClassifications = new WeakMap<object, ReadClassification | null>();

function readClassification(raw: unknown): ReadClassification | null {
  if (typeof raw !== "object" || raw === null) return null;
  let read = readClassifications.get(raw);
  if (read === undefined) {
    const c = ClassificationSchema.safeParse(raw);
    read = c.success ? { data: c.data, hot: new Set(c.data.hot), cold: new Set(c.data.cold) } : null;
    readClassifications.set(raw, read);
  }
  return read;
}

/** When a poll stamp says the last successful poll happened; absent, unparsable or future stamps are null. */
export function lastPollAt(stamp: unknown, nowMs: number): number | null {
  const s = PollStampSchema.safeParse(stamp);
  if (!s.success) return null;
  const at = Date.parse(s.data.at);
  return Number.isFinite(at) && at <= nowMs ? at : null;
}

/** A stable fraction in [0, 1) per gateway: its phase within every poll period. */
export function phaseOf(gid: string): number {
  return createHash("sha256").update(gid).digest().readUInt32BE(0) / 2 ** 32;
}

/**
 * Milliseconds from `nowMs` to the gateway's next slot: the next instant at least `minGapMs`
 * away that sits at `phase` of a `periodMs` grid. Every worker computes the same grid, so a
 * gateway's polls keep their place in the period whichever worker runs them.
 */
export function delayToSlot(nowMs: number, periodMs: number, phase: number, minGapMs = 0): number {
  const offset = Math.floor(phase * periodMs);
  let delay = (((offset - nowMs) % periodMs) + periodMs) % periodMs;
  while (delay < minGapMs) delay += periodMs;
  return delay;
}

/**
 * True when the stamp shows this slot's poll was already done (by any worker): the last
 * success is less than `periodMs` minus half a slot old. Slots sit `slotMs` apart (the
 * period itself unless a poll is due only every few slots, as cold discovery is).
 * Anything older, absent or in the future means poll.
 */
export function slotAlreadyPolled(last: number | null, nowMs: number, periodMs: number, slotMs = periodMs): boolean {
  return last !== null && nowMs - last < periodMs - slotMs / 2;
}

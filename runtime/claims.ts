// Claims of keyed actors: the one host-side mechanism behind the placement policy
// (actors/placement.ts), used by gateway pollers (`owner.<gid>` in the state bucket) and
// upstream session actors (`up.<sid>.<gid>` in the sessions bucket). A claim is a KV entry
// `{ worker, since }` whose revision is the fencing token; it is taken with `create` or a
// compare-and-swap at the revision seen, and given back with a compare-and-swap delete.
// What differs per actor kind is a parameter: how a claim's holder is judged alive (pollers:
// its heartbeat, from the live set; upstream sessions: its address answers `status`), and
// whether the host keeps the claims it sees up to date with a watch (pollers) or reads one
// when it needs it (upstream sessions).
import type { KvEntry } from "@nats-io/kv";
import { encodeValue, isCasConflict, parseEntry, type KvStore } from "../actors/kvStore.ts";
import { holderToJudge, placementStep, type ClaimSeen, type PlacementFacts, type PlacementStep } from "../actors/placement.ts";
import { ClaimSchema } from "../protocol/placement.ts";

/** Whether the worker a claim names still hosts its actor; asked only when the policy needs to know. */
export type HolderAlive = (key: string, holder: string) => boolean | Promise<boolean>;

/** A step the placement policy decides, with `holderAlive` sync (pollers) or not (upstream sessions). */
type Decided<A extends HolderAlive> = ReturnType<A> extends Promise<boolean> ? Promise<PlacementStep> : PlacementStep;

/** The bucket a claim is kept in: the nats.js bucket, or its writes acknowledged on one subscription (jetstreamAcks.ts). */
export type ClaimsKv = Pick<KvStore, "get" | "create" | "update" | "delete" | "keys">;

export class Claims<A extends HolderAlive = HolderAlive> {
  readonly #kv: ClaimsKv;
  readonly #me: string;
  readonly #holderAlive: A;
  /** the latest claim seen per key (its own writes, reads, and a watch when the host follows one) */
  readonly #seen = new Map<string, ClaimSeen>();

  constructor(opts: { kv: ClaimsKv; me: string; holderAlive: A }) {
    this.#kv = opts.kv;
    this.#me = opts.me;
    this.#holderAlive = opts.holderAlive;
  }

  seen(key: string): ClaimSeen | undefined {
    return this.#seen.get(key);
  }

  /** Folds in an entry of the key (from a watch or a read); one older than what is known is ignored. Returns the claim known now. */
  heard(e: KvEntry): ClaimSeen {
    const known = this.#seen.get(e.key);
    if (known && known.revision >= e.revision) return known;
    const holder = e.operation === "PUT" ? (parseEntry(ClaimSchema, e)?.worker ?? null) : null;
    const seen = { holder, revision: e.revision };
    this.#seen.set(e.key, seen);
    return seen;
  }

  /** Reads the key's claim now. */
  async read(key: string): Promise<ClaimSeen | undefined> {
    const e = await this.#kv.get(key);
    return e ? this.heard(e) : this.#seen.get(key);
  }

  /** What the policy says about `key` with the claim last seen; `holderAlive` is asked only when the answer depends on it. */
  decide(key: string, f: Omit<PlacementFacts, "me" | "claim" | "holderAlive">): Decided<A> {
    const facts: PlacementFacts = { ...f, me: this.#me, claim: this.#seen.get(key), holderAlive: false };
    const holder = holderToJudge(facts);
    if (holder === null) return placementStep(facts) as Decided<A>;
    const alive = this.#holderAlive(key, holder);
    if (typeof alive === "boolean") return placementStep({ ...facts, holderAlive: alive }) as Decided<A>;
    return alive.then((holderAlive) => placementStep({ ...facts, holderAlive })) as Decided<A>;
  }

  /** Carries out a `claim` step: the revision this worker now holds the key at, or null when another worker was quicker. */
  async take(key: string, step: { create: boolean; revision: number }): Promise<number | null> {
    const value = encodeValue(ClaimSchema.parse({ worker: this.#me, since: new Date().toISOString() }));
    try {
      const revision = step.create ? await this.#kv.create(key, value) : await this.#kv.update(key, value, step.revision);
      if ((this.#seen.get(key)?.revision ?? 0) < revision) this.#seen.set(key, { holder: this.#me, revision });
      return revision;
    } catch (err) {
      if (!isCasConflict(err)) throw err;
      // what holds the key now is the next decision's fact; a deleted key is taken at its delete's revision
      const e = await this.#kv.get(key);
      if (e) this.heard(e);
      if (step.create && e && e.operation !== "PUT") return this.take(key, { create: false, revision: e.revision });
      return null;
    }
  }

  /** Gives a claim back: a compare-and-swap delete, so a successor's newer claim stays. */
  async release(key: string, revision: number): Promise<void> {
    await this.#kv.delete(key, { previousSeq: revision }).catch(() => {});
    if (this.#seen.get(key)?.revision === revision) this.#seen.delete(key);
  }

  /** Forgets what was seen of a key that no longer names anything to host. */
  forget(key: string): void {
    this.#seen.delete(key);
  }

  /**
   * Deletes the claims under `prefix` whose holder is not alive (left by workers that died;
   * nats-server 2.9 has no per-key TTL), except those `skip` names. The compare-and-swap spares
   * a claim taken over meanwhile. Returns how many it deleted.
   */
  async sweep(prefix: string, skip: (key: string) => boolean, stopping: () => boolean): Promise<number> {
    const keys: string[] = [];
    for await (const k of await this.#kv.keys(`${prefix}>`)) keys.push(k);
    let removed = 0;
    for (const key of keys) {
      if (stopping()) break;
      if (skip(key)) continue;
      // read apart from what was seen: a sweep must not fill the cache with every key it met
      const e = await this.#kv.get(key);
      const holder = e?.operation === "PUT" ? (parseEntry(ClaimSchema, e)?.worker ?? null) : null;
      if (!e || holder === null || (await this.#holderAlive(key, holder))) continue;
      try {
        await this.#kv.delete(key, { previousSeq: e.revision });
        removed++;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    return removed;
  }
}

// Placement: which worker hosts a keyed actor. One mechanism for every keyed actor (a gateway's
// poller, an upstream session): a claim is a KV entry `{ worker, since }` whose revision is the
// fencing token. It is taken with `create` (free key) or a compare-and-swap `update` at the
// revision seen (deleted key, or held by a worker that is gone), and given back with a
// compare-and-swap delete (runtime/claims.ts carries the steps out for both kinds). Per actor
// kind only two facts differ, and the host supplies them:
// whether this worker should host the key (pollers: the rendezvous winner among live workers;
// upstream sessions: the worker asked to spawn it) and whether the claim's holder is alive
// (pollers: its heartbeat changed within the TTL on this worker's clock; upstream sessions: its
// address answers `status`). Pure: no I/O, time passed in (monotonic milliseconds).
import { createHash } from "node:crypto";

/** The latest claim a worker has seen for a key: its holder (null: deleted) and KV revision. */
export type ClaimSeen = { holder: string | null; revision: number };

export type PlacementFacts = {
  me: string;
  /** the key still names something to host (gateway registered and enabled) */
  exists: boolean;
  /** this worker should host the key */
  wanted: boolean;
  /** the latest claim seen; undefined when the key was never claimed */
  claim: ClaimSeen | undefined;
  /** the claim revision this worker hosts the actor under; undefined when it does not host it */
  hosting: number | undefined;
  /** whether `claim.holder` is alive (not consulted when the holder is this worker or nobody) */
  holderAlive: boolean;
};

export type PlacementStep =
  /** nothing to do */
  | { type: "stay" }
  /** claim the key: `create` a free one, else compare-and-swap at `revision`; host once it succeeded */
  | { type: "claim"; create: boolean; revision: number }
  /** this worker's own claim is newer than the one its actor runs under: run under that one */
  | { type: "adopt"; revision: number }
  /** stop hosting and give the claim back (compare-and-swap delete at `revision`) */
  | { type: "release"; revision: number }
  /** stop hosting, leave the claim: another worker holds a newer one */
  | { type: "yield" };

/**
 * The holder whose liveness decides the step, or null when the step does not depend on it: only
 * a claim of another worker, on a key this worker should host and does not, needs the answer
 * (an upstream session's holder is judged by a request, so it is asked only then).
 */
export function holderToJudge(f: Omit<PlacementFacts, "holderAlive">): string | null {
  const holder = f.claim?.holder ?? null;
  if (f.hosting !== undefined || !f.exists || !f.wanted || holder === null || holder === f.me) return null;
  return holder;
}

export function placementStep(f: PlacementFacts): PlacementStep {
  const { claim, hosting } = f;
  if (hosting !== undefined) {
    if (claim && claim.revision > hosting) return claim.holder === f.me ? { type: "adopt", revision: claim.revision } : { type: "yield" };
    if (!f.exists || !f.wanted) return { type: "release", revision: hosting };
    return { type: "stay" };
  }
  if (!f.exists || !f.wanted) return { type: "stay" };
  if (!claim) return { type: "claim", create: true, revision: 0 };
  // free, left over from this worker's previous life, or held by a worker that is gone
  if (claim.holder === null || claim.holder === f.me || !f.holderAlive) return { type: "claim", create: false, revision: claim.revision };
  return { type: "stay" };
}

/**
 * A holder steps down on its own once its liveness record (heartbeat) has not been renewed for
 * two thirds of the TTL: another live worker may take its keys over after a full TTL, so it
 * stops first. With no other worker alive there is nobody to make room for, and stopping
 * everything (to start it all again a moment later) under a load that only slowed the heartbeat
 * would feed that load; a worker that appears later takes over by compare-and-swap, and this
 * one yields when it sees the newer claim.
 */
export function mustStepDown(lastRenewedAt: number, now: number, ttlMs: number, othersAlive: boolean): boolean {
  return othersAlive && now - lastRenewedAt > (ttlMs * 2) / 3;
}

/** Rendezvous (highest random weight) hashing: the worker among `workers` a key belongs to. */
export function ownerOf(key: string, workers: Iterable<string>): string | null {
  let best: string | null = null;
  let bestScore = -1n;
  for (const w of workers) {
    const score = createHash("sha256").update(`${key}/${w}`).digest().readBigUInt64BE(0);
    if (score > bestScore || (score === bestScore && best !== null && w < best)) {
      best = w;
      bestScore = score;
    }
  }
  return best;
}

/**
 * Which workers are alive, from their heartbeat keys: a worker is alive while the revision of its
 * heartbeat changed within the TTL, on this worker's own monotonic clock (never by comparing
 * timestamps written on another machine). This worker counts itself alive.
 */
export class Liveness {
  readonly #seen = new Map<string, { at: number; revision: number }>();
  readonly #me: string;
  readonly #ttlMs: number;
  /** the rendezvous owner of each key among the live workers, kept until that set changes */
  #placed = { workers: "", owner: new Map<string, string | null>() };

  constructor(me: string, ttlMs: number) {
    this.#me = me;
    this.#ttlMs = ttlMs;
  }

  /** a heartbeat entry: `revision` null when the key was deleted */
  heard(worker: string, revision: number | null, now: number): void {
    if (revision === null) return void this.#seen.delete(worker);
    // a watch opened again repeats the latest entry: only a new revision is a sign of life
    if (this.#seen.get(worker)?.revision === revision) return;
    this.#seen.set(worker, { at: now, revision });
  }

  live(now: number): Set<string> {
    const live = new Set<string>([this.#me]);
    for (const [w, h] of this.#seen) if (now - h.at < this.#ttlMs) live.add(w);
    return live;
  }

  /** A test of "is `key` this worker's" against the live set of `now`; one hash per key while the set stays the same. */
  placedHere(now: number): (key: string) => boolean {
    const live = this.live(now);
    const workers = [...live].sort().join(" ");
    if (workers !== this.#placed.workers) this.#placed = { workers, owner: new Map() };
    const { owner } = this.#placed;
    return (key) => {
      let o = owner.get(key);
      if (o === undefined) owner.set(key, (o = ownerOf(key, live)));
      return o === this.#me;
    };
  }

  /** forgets a key's cached placement (the key is gone) */
  forgetKey(key: string): void {
    this.#placed.owner.delete(key);
  }

  /** Workers silent for `factor` TTLs, with the revision to delete their heartbeat at (compare-and-swap: unless they came back); forgotten here. */
  takeLongGone(now: number, factor = 10): Array<{ worker: string; revision: number }> {
    const gone: Array<{ worker: string; revision: number }> = [];
    for (const [worker, h] of this.#seen) {
      if (worker !== this.#me && now - h.at > factor * this.#ttlMs) {
        this.#seen.delete(worker);
        gone.push({ worker, revision: h.revision });
      }
    }
    return gone;
  }
}

// Ownership of upstream session actors: at most one actor per (sid, gid) in the cluster, through
// a claim `up.<sid>.<gid>` in the sessions bucket. Placement (actors/placement.ts, carried out
// by runtime/claims.ts) with the upstream sessions' two parameters: the worker a spawn reaches
// wants the key, and a claim's holder is alive while the actor's address answers a `status`
// request. Claims are short-lived (the actor's life) and read when needed, not watched.
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { KEYS, type Subjects } from "../../protocol/subjects.ts";
import { encodeJson, isNoResponders } from "../bus.ts";
import { Claims } from "../claims.ts";

const LIVENESS_TIMEOUT_MS = 1_000;
/** a spawn's worker should host the key; no actor of it runs here yet */
const SPAWNED = { exists: true, wanted: true, hosting: undefined };

export type ClaimHolder = {
  /** the worker the claim names, when readable */
  worker: string | null;
  /** takes the claim over (its holder is gone): the revision, or null when someone was quicker; null when it may not be taken */
  takeOver: (() => Promise<number | null>) | null;
};

export function upstreamClaims(deps: { nc: NatsConnection; s: Subjects; kv: KV; workerId: string }) {
  const { nc, s } = deps;

  async function isAlive(key: string): Promise<boolean> {
    const k = KEYS.parseUpstreamClaim(key);
    if (!k) return false;
    try {
      await nc.request(s.upstream.op(k.sid, k.gid, "status"), encodeJson({}), { timeout: LIVENESS_TIMEOUT_MS });
      return true;
    } catch (err) {
      // a timeout means someone is subscribed (activating): treat as alive, never steal
      return !isNoResponders(err);
    }
  }
  const claims = new Claims({ kv: deps.kv, me: deps.workerId, holderAlive: (key: string) => isAlive(key) });

  /** The first try of a spawn: claims the key as KV holds it now. Its revision, or null when someone holds it. */
  async function create(sid: string, gid: string): Promise<number | null> {
    const key = KEYS.upstreamClaim(sid, gid);
    // what this worker saw of the key before (an earlier actor's claim) says nothing of now
    claims.forget(key);
    const step = await claims.decide(key, SPAWNED);
    return step.type === "claim" ? claims.take(key, step) : null;
  }

  /** Who holds a claim, and whether this worker may take it over (ask with this worker's own address gone). */
  async function holder(sid: string, gid: string): Promise<ClaimHolder> {
    const key = KEYS.upstreamClaim(sid, gid);
    const seen = await claims.read(key);
    const step = await claims.decide(key, SPAWNED);
    // kept only while this worker holds the claim (take records it, release forgets it)
    claims.forget(key);
    return { worker: seen?.holder ?? null, takeOver: step.type === "claim" ? () => claims.take(key, step) : null };
  }

  /** Deletes this actor's own claim (a successor may already hold the key). */
  const release = (sid: string, gid: string, revision: number): Promise<void> => claims.release(KEYS.upstreamClaim(sid, gid), revision);

  /**
   * A claim whose worker died stays in KV until a spawn for its key takes it over, for good
   * when that client never comes back (nats-server 2.9 has no per-key TTL). Any worker may
   * delete a claim nobody answers for.
   */
  function sweepStale(hostedHere: (sid: string, gid: string) => boolean, stopping: () => boolean): Promise<number> {
    const skip = (key: string) => {
      const c = KEYS.parseUpstreamClaim(key);
      return !c || hostedHere(c.sid, c.gid);
    };
    return claims.sweep(KEYS.upstreamClaimPrefix, skip, stopping);
  }

  return { create, holder, release, sweepStale };
}

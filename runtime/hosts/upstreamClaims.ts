// Ownership of upstream session actors: at most one actor per (sid, gid) in the cluster,
// through a claim `up.<sid>.<gid>` in the sessions bucket. A claim whose owner answers no
// `status` request (no responders) is taken over by compare-and-swap.
import type { KV, KvEntry } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { encodeValue, getLive, isCasConflict } from "../../actors/kvStore.ts";
import { KEYS, type Subjects } from "../../protocol/subjects.ts";
import { UpstreamClaimSchema } from "../../protocol/upstream.ts";
import { encodeJson, isNoResponders } from "../bus.ts";

const LIVENESS_TIMEOUT_MS = 1_000;

export type ClaimHolder = {
  /** the claim's entry as read (null: none, or deleted) */
  entry: KvEntry | null;
  /** the worker it names, when readable */
  worker: string | null;
  /** its actor answers (or is activating): never take it over */
  alive: boolean;
};

export function upstreamClaims(deps: { nc: NatsConnection; s: Subjects; kv: KV; workerId: string }) {
  const { nc, s, kv } = deps;
  const claimValue = () => encodeValue(UpstreamClaimSchema.parse({ worker: deps.workerId, since: new Date().toISOString() }));

  async function isAlive(sid: string, gid: string): Promise<boolean> {
    try {
      await nc.request(s.upstream.op(sid, gid, "status"), encodeJson({}), { timeout: LIVENESS_TIMEOUT_MS });
      return true;
    } catch (err) {
      // a timeout means someone is subscribed (activating): treat as alive, never steal
      return !isNoResponders(err);
    }
  }

  /** Claims a free key: its revision, or null when someone holds it. */
  async function create(sid: string, gid: string): Promise<number | null> {
    try {
      return await kv.create(KEYS.upstreamClaim(sid, gid), claimValue());
    } catch (err) {
      if (isCasConflict(err)) return null;
      throw err;
    }
  }

  /** Who holds a claim, and whether it is alive (ask with this worker's own address gone). */
  async function holder(sid: string, gid: string): Promise<ClaimHolder> {
    const entry = await kv.get(KEYS.upstreamClaim(sid, gid));
    const claim = entry?.operation === "PUT" ? UpstreamClaimSchema.safeParse(entry.json()) : null;
    return { entry, worker: claim?.success ? claim.data.worker : null, alive: await isAlive(sid, gid) };
  }

  /** Takes over the claim of a holder that is gone: its revision, or null when someone was quicker. */
  async function takeOver(sid: string, gid: string, seen: ClaimHolder): Promise<number | null> {
    const key = KEYS.upstreamClaim(sid, gid);
    const entry = seen.entry;
    try {
      return entry && entry.operation === "PUT"
        ? await kv.update(key, claimValue(), entry.revision)
        : await kv.create(key, claimValue()).catch(async (e) => {
            // a deleted key is re-created by update at its delete revision
            if (entry && isCasConflict(e)) return kv.update(key, claimValue(), entry.revision);
            throw e;
          });
    } catch (err) {
      if (isCasConflict(err)) return null;
      throw err;
    }
  }

  /** Deletes this actor's own claim (a successor may already hold the key). */
  async function release(sid: string, gid: string, revision: number): Promise<void> {
    await kv.delete(KEYS.upstreamClaim(sid, gid), { previousSeq: revision }).catch(() => {});
  }

  /**
   * A claim whose worker died stays in KV until a spawn for its key takes it over, for good
   * when that client never comes back (nats-server 2.9 has no per-key TTL). Any worker may
   * delete a claim nobody answers for; the compare-and-swap spares one taken over meanwhile.
   */
  async function sweepStale(hostedHere: (sid: string, gid: string) => boolean, stopping: () => boolean): Promise<number> {
    const keys: string[] = [];
    for await (const k of await kv.keys(`${KEYS.upstreamClaimPrefix}>`)) keys.push(k);
    let removed = 0;
    for (const key of keys) {
      if (stopping()) break;
      const c = KEYS.parseUpstreamClaim(key);
      if (!c || hostedHere(c.sid, c.gid)) continue;
      const e = await getLive(kv, key);
      if (!e || (await isAlive(c.sid, c.gid))) continue;
      try {
        await kv.delete(key, { previousSeq: e.revision });
        removed++;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    return removed;
  }

  return { create, holder, takeOver, release, sweepStale };
}

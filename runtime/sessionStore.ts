import type { JetStreamClient } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { getLive, isCasConflict, parseEntry } from "../actors/kvStore.ts";
import { DownstreamSessionSchema, type DownstreamSession } from "../protocol/edge.ts";
import { KEYS, type Subjects } from "../protocol/subjects.ts";
import { publishEvent } from "./events.ts";
import type { Logger } from "./logger.ts";

export type LoadedSession = { record: DownstreamSession; revision: number };

/**
 * Downstream session records in the sessions bucket (`ds.<sid>`): any worker serves any
 * session from its record. Ending a session deletes the record and publishes
 * `evt.session.<sid>.closed` exactly once (the delete is a compare-and-swap).
 */
export class SessionStore {
  #sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly deps: {
      kv: KV;
      js: JetStreamClient;
      s: Subjects;
      log: Logger;
      idleTtlMs: number;
      now?: () => Date;
      /** after each sweep: how many sessions it left alive (the cluster's count, for the metrics) */
      onSwept?: (alive: number) => void;
    },
  ) {}

  #now(): Date {
    return this.deps.now?.() ?? new Date();
  }

  async create(record: DownstreamSession): Promise<void> {
    await this.deps.kv.create(KEYS.downstreamSession(record.sid), JSON.stringify(record));
  }

  /**
   * Changes a record by compare-and-swap, retried on conflict (the edges and the upstream
   * session actors of one session write it: use, log level, subscriptions, views).
   * `mutate` returns the new record, or null to leave it as it is. Null when the session is gone.
   */
  async update(sid: string, mutate: (record: DownstreamSession) => DownstreamSession | null): Promise<LoadedSession | null> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const s = await this.load(sid);
      if (!s) return null;
      const next = mutate(s.record);
      if (next === null) return s;
      const record = DownstreamSessionSchema.parse(next);
      try {
        const revision = await this.deps.kv.update(KEYS.downstreamSession(sid), JSON.stringify(record), s.revision);
        return { record, revision };
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new Error(`session ${sid}: too many concurrent changes`);
  }

  async load(sid: string): Promise<LoadedSession | null> {
    const e = await getLive(this.deps.kv, KEYS.downstreamSession(sid));
    const record = parseEntry(DownstreamSessionSchema, e);
    return e && record ? { record, revision: e.revision } : null;
  }

  /** Records use, at most every tenth of the idle TTL (a write per request would be wasted). */
  async touch(s: LoadedSession): Promise<void> {
    const now = this.#now();
    if (now.getTime() - Date.parse(s.record.lastSeenAt) < this.deps.idleTtlMs / 10) return;
    const record = { ...s.record, lastSeenAt: now.toISOString() };
    await this.deps.kv.update(KEYS.downstreamSession(s.record.sid), JSON.stringify(record), s.revision).catch((err) => {
      if (!isCasConflict(err)) this.deps.log.warn({ err, sid: s.record.sid }, "could not record session use");
    });
  }

  /** Ends a session; false when it was already gone (or changed under us, for `expectedRevision`). */
  async end(sid: string, reason: string, expectedRevision?: number): Promise<boolean> {
    try {
      await this.deps.kv.delete(KEYS.downstreamSession(sid), expectedRevision === undefined ? undefined : { previousSeq: expectedRevision });
    } catch (err) {
      if (isCasConflict(err)) return false;
      throw err;
    }
    await publishEvent(this.deps.js, this.deps.s.evt.sessionClosed(sid), { sid, at: this.#now().toISOString(), reason });
    this.deps.log.info({ sid, reason }, "downstream session ended");
    return true;
  }

  /** Ends every session idle longer than the TTL; each worker sweeps, the CAS delete picks one. */
  async sweep(): Promise<number> {
    let ended = 0;
    let alive = 0;
    const keys: string[] = [];
    for await (const k of await this.deps.kv.keys(`${KEYS.downstreamSessionPrefix}>`)) keys.push(k);
    for (const key of keys) {
      const s = await this.load(key.slice(KEYS.downstreamSessionPrefix.length)).catch(() => null);
      if (!s) continue;
      if (this.#now().getTime() - Date.parse(s.record.lastSeenAt) <= this.deps.idleTtlMs) alive++;
      else if (await this.end(s.record.sid, "idle", s.revision)) ended++;
    }
    this.deps.onSwept?.(alive);
    return ended;
  }

  /**
   * Sweeps every quarter TTL (at most every minute). Sessions whose GET stream this worker
   * holds (`listening`) are touched first: a client that only listens is still there.
   */
  startSweeping(listening: () => string[] = () => []): void {
    const every = Math.max(1000, Math.min(60_000, Math.floor(this.deps.idleTtlMs / 4)));
    const round = async () => {
      for (const sid of listening()) {
        const s = await this.load(sid).catch(() => null);
        if (s) await this.touch(s);
      }
      await this.sweep();
    };
    this.#sweeper = setInterval(() => {
      round().catch((err) => this.deps.log.warn({ err }, "session sweep failed"));
    }, every);
    this.#sweeper.unref();
  }

  stop(): void {
    clearInterval(this.#sweeper);
  }
}

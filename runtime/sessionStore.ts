import type { JetStreamClient } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { getLive, isCasConflict, parseEntry } from "../actors/kvStore.ts";
import { DownstreamSessionSchema, type DownstreamSession } from "../protocol/edge.ts";
import { KEYS, type Subjects } from "../protocol/subjects.ts";
import { SessionClosedEventSchema } from "../protocol/upstream.ts";
import { decodeJson, listen, type Guard } from "./bus.ts";
import { followConnection } from "./nats.ts";
import { publishEvent } from "./events.ts";
import type { Logger } from "./logger.ts";

export type LoadedSession = { record: DownstreamSession; revision: number };

/** How many records `recall` keeps in memory (the least recently used go first). */
const RECALLED_MAX = 10_000;

/**
 * Downstream session records in the sessions bucket (`ds.<sid>`): any worker serves any
 * session from its record. Ending a session deletes the record and publishes
 * `evt.session.<sid>.closed` exactly once (the delete is a compare-and-swap).
 */
export class SessionStore {
  #sweeper: NodeJS.Timeout | undefined;
  /**
   * Records `recall` serves from memory, kept only while `followEnds` listens: a session that
   * ends anywhere (a DELETE at any worker, the idle sweep of any worker) publishes its
   * `closed` event before its end is answered, and that event removes it here.
   */
  readonly #known = new Map<string, LoadedSession>();
  #following = false;
  /** moves on at every forgetting: a read that started before one may hold what was just forgotten */
  #generation = 0;
  #unfollow: () => void = () => {};

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

  async create(record: DownstreamSession): Promise<LoadedSession> {
    const revision = await this.deps.kv.create(KEYS.downstreamSession(record.sid), JSON.stringify(record));
    this.#remember(record.sid, { record, revision });
    return { record, revision };
  }

  /**
   * Keeps records in memory for `recall` from now on: listens to every session's `closed`
   * event (and forgets that session), and forgets everything when the NATS connection drops
   * (an event may be missed meanwhile); `onEnded` hears of each end too. Resolves once the
   * listener is in place.
   */
  async followEnds(nc: NatsConnection, guard: Guard, onEnded: (sid: string) => void = () => {}): Promise<void> {
    const sub = listen(
      nc,
      this.deps.s.evt.sessionAll,
      (msg) => {
        let payload: unknown;
        try {
          payload = decodeJson(msg.data);
        } catch {
          return;
        }
        const closed = SessionClosedEventSchema.safeParse(payload);
        if (!msg.subject.endsWith(".closed") || !closed.success) return;
        this.#forget(closed.data.sid);
        onEnded(closed.data.sid);
      },
      { ...guard, expect: "message" },
    );
    await nc.flush();
    this.#following = true;
    const stopFollowing = followConnection(nc).onChange(() => this.#forgetAll());
    this.#unfollow = () => {
      this.#following = false;
      stopFollowing();
      sub.unsubscribe();
      this.#forgetAll();
    };
  }
  #remember(sid: string, s: LoadedSession): void {
    if (!this.#following) return;
    this.#known.delete(sid);
    this.#known.set(sid, s);
    if (this.#known.size > RECALLED_MAX) this.#known.delete(this.#known.keys().next().value!);
  }

  #forget(sid: string): void {
    this.#generation++;
    this.#known.delete(sid);
  }

  #forgetAll(): void {
    this.#generation++;
    this.#known.clear();
  }

  /**
   * The session as far as a request needs what never changes after its initialize (owner,
   * gateway, protocol version, capabilities) and that it exists, from memory when this worker
   * has it (see `followEnds`); undefined when it does not (read it with `load` then). What another
   * worker or an actor changes (`views`, `logLevel`, `subscriptions`, `lastSeenAt`) may be older
   * here than in KV: read it with `load`.
   */
  recall(sid: string): LoadedSession | undefined {
    const known = this.#known.get(sid);
    if (!known) return undefined;
    this.#known.delete(sid);
    this.#known.set(sid, known);
    return known;
  }

  /**
   * Changes a record by compare-and-swap, retried on conflict (the edges and the upstream
   * session actors of one session write it: use, log level, subscriptions, views).
   * `mutate` returns the new record, or null to leave it as it is. Null when the session is gone.
   */
  async update(sid: string, mutate: (record: DownstreamSession) => DownstreamSession | null): Promise<LoadedSession | null> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const s = await this.#read(sid);
      if (!s) {
        this.#known.delete(sid);
        return null;
      }
      const next = mutate(s.record);
      if (next === null) return s;
      const record = DownstreamSessionSchema.parse(next);
      try {
        const revision = await this.deps.kv.update(KEYS.downstreamSession(sid), JSON.stringify(record), s.revision);
        this.#remember(sid, { record, revision });
        return { record, revision };
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new Error(`session ${sid}: too many concurrent changes`);
  }

  /** The session as KV has it now (and, when following, as `recall` will have it). */
  async load(sid: string): Promise<LoadedSession | null> {
    const generation = this.#generation;
    const s = await this.#read(sid);
    // a session forgotten while this read was under way may be the one it read: not kept
    if (s && generation === this.#generation) this.#remember(sid, s);
    else if (!s) this.#known.delete(sid);
    return s;
  }

  async #read(sid: string): Promise<LoadedSession | null> {
    const e = await getLive(this.deps.kv, KEYS.downstreamSession(sid));
    const record = parseEntry(DownstreamSessionSchema, e);
    return e && record ? { record, revision: e.revision } : null;
  }

  /**
   * Records use, at most every tenth of the idle TTL (a write per request would be wasted):
   * undefined when it was recorded recently enough, else the write under way.
   */
  touch(s: LoadedSession): Promise<void> | undefined {
    const now = this.#now();
    if (now.getTime() - Date.parse(s.record.lastSeenAt) < this.deps.idleTtlMs / 10) return undefined;
    return this.#recordUse(s, now);
  }

  async #recordUse(s: LoadedSession, now: Date): Promise<void> {
    const record = { ...s.record, lastSeenAt: now.toISOString() };
    const sid = s.record.sid;
    try {
      const revision = await this.deps.kv.update(KEYS.downstreamSession(sid), JSON.stringify(record), s.revision);
      if (this.#known.has(sid)) this.#remember(sid, { record, revision });
    } catch (err) {
      // a record changed elsewhere: the next request reads it again (and records its use then)
      if (isCasConflict(err)) this.#known.delete(sid);
      else this.deps.log.warn({ err, sid }, "could not record session use");
    }
  }

  /** Ends a session; false when it was already gone (or changed under us, for `expectedRevision`). */
  async end(sid: string, reason: string, expectedRevision?: number): Promise<boolean> {
    this.#forget(sid);
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
      const s = await this.#read(key.slice(KEYS.downstreamSessionPrefix.length)).catch(() => null);
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
        const s = await this.#read(sid).catch(() => null);
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
    this.#unfollow();
  }
}

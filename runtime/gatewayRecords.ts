// Every worker's one copy of the gateway records, kept by one watch of the gateways bucket and
// shared by whoever needs them (the poller host, the classifier's roster, the worker's catalog
// cache, the registry's list, the upstream host's activations): an add or change is parsed once per
// worker and nobody reads the record again. The watch covers the whole bucket (the name index too), so the highest
// revision it has delivered can be compared with the bucket's last one: `caughtUp` waits for
// every write there was when it was called (a list answered right after an add shows it).
import type { KV, KvEntry } from "@nats-io/kv";
import { errors } from "@nats-io/transport-node";
import { parseEntry } from "../actors/kvStore.ts";
import { GatewayRecordSchema, type GatewayRecord } from "../protocol/gateway.ts";
import { KEYS } from "../protocol/subjects.ts";
import { bounded } from "./jetstreamRetry.ts";
import { followKv } from "./kvWatch.ts";
import type { Logger } from "./logger.ts";

export type HeldGateway = { record: GatewayRecord; revision: number };

/** One record's change as the watch delivered it: `record` null when it was removed (or no longer parses). */
export type GatewayChange = { gid: string; record: GatewayRecord | null; previous: GatewayRecord | null; revision: number };

/** How long `caughtUp` waits for the watch before it answers with what is held. */
const CATCH_UP_MS = 5_000;
/**
 * How long `caughtUp` waits for the bucket's last revision. Only the stream's leader answers it, and
 * after a node loss nats-server 2.9 takes 4-9 s to elect one; meanwhile the stream takes no write
 * either, so what the watch holds is what there is to show. Not shorter: on a loaded machine a
 * leader's answer can take a second or more, and a list right after an add must show it.
 */
const LAST_REVISION_MS = 3_000;

export class GatewayRecords {
  readonly #held = new Map<string, HeldGateway>();
  readonly #listeners = new Set<(change: GatewayChange) => void>();
  /** records this worker's registry wrote and the watch has not delivered yet, by gateway id: taken instead of parsing the entry again */
  readonly #written = new Map<string, HeldGateway>();
  /** the bucket's highest revision the watch has delivered */
  #seen = 0;
  #waiters: Array<{ revision: number; done: () => void }> = [];

  constructor(
    private readonly kv: Pick<KV, "status">,
    private readonly log: Logger,
  ) {}

  get(gid: string): HeldGateway | undefined {
    return this.#held.get(gid);
  }

  /** every record held, secrets still sealed */
  all(): IterableIterator<HeldGateway> {
    return this.#held.values();
  }

  get size(): number {
    return this.#held.size;
  }

  /**
   * Calls `listener` on every change from now on, in the watch's order; it must not throw. Take
   * `all()` in the same turn to start from: nothing can come in between.
   */
  onChange(listener: (change: GatewayChange) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /**
   * A record this worker's registry has just written at `revision` (validated there): when the
   * watch delivers that revision, this object is held instead of the entry parsed a second time.
   * The watch stays the one source of changes; any entry of the gateway drops what is kept here.
   */
  wrote(held: HeldGateway): void {
    if (held.revision > this.#seen) this.#written.set(held.record.id, held);
  }

  /** Resolves once the watch has delivered every write the bucket had when called (or after a bound: then with false). */
  async caughtUp(withinMs = CATCH_UP_MS, lastRevisionMs = LAST_REVISION_MS): Promise<boolean> {
    let revision: number;
    try {
      revision = (await bounded(() => this.kv.status(), lastRevisionMs)).streamInfo.state.last_seq;
    } catch (err) {
      if (!(err instanceof errors.TimeoutError)) throw err;
      this.log.warn({ seen: this.#seen }, "gateway records: the bucket's last revision is not known (no stream leader?); answering with what is held");
      return false;
    }
    if (this.#seen >= revision) return true;
    let timer: NodeJS.Timeout | undefined;
    const reached = await new Promise<boolean>((resolve) => {
      const waiter = { revision, done: () => resolve(true) };
      this.#waiters.push(waiter);
      timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        resolve(false);
      }, withinMs);
    });
    clearTimeout(timer);
    if (!reached) this.log.warn({ revision, seen: this.#seen }, "gateway records: the watch is behind the bucket; answering with what is held");
    return reached;
  }

  /** The watch's entry: one key of the bucket (a record, or the name index, which only moves `#seen`). */
  apply(e: KvEntry): void {
    if (e.key.startsWith(KEYS.gatewayPrefix)) this.#applyRecord(e);
    if (e.revision > this.#seen) {
      this.#seen = e.revision;
      if (this.#waiters.length > 0) {
        const ready = this.#waiters.filter((w) => w.revision <= e.revision);
        this.#waiters = this.#waiters.filter((w) => w.revision > e.revision);
        for (const w of ready) w.done();
      }
    }
  }

  #applyRecord(e: KvEntry): void {
    const gid = e.key.slice(KEYS.gatewayPrefix.length);
    const held = this.#held.get(gid);
    // a watch opened again repeats each key's latest entry
    if (held && held.revision >= e.revision) return;
    const written = this.#written.get(gid);
    if (written) this.#written.delete(gid);
    const record = e.operation !== "PUT" ? null : written?.revision === e.revision ? written.record : parseEntry(GatewayRecordSchema, e);
    if (e.operation === "PUT" && !record) this.log.warn({ key: e.key }, "ignoring a gateway record that does not match the schema");
    if (record) this.#held.set(gid, { record, revision: e.revision });
    else if (held) this.#held.delete(gid);
    else return;
    const change: GatewayChange = { gid, record, previous: held?.record ?? null, revision: e.revision };
    for (const l of this.#listeners) {
      try {
        l(change);
      } catch (err) {
        this.log.error({ err, gid }, "a gateway records listener failed");
      }
    }
  }
}

/** Follows the gateways bucket from its current records on; resolves once they are all held. */
export async function followGatewayRecords(kv: KV, log: Logger): Promise<{ records: GatewayRecords; stop(): void }> {
  const records = new GatewayRecords(kv, log);
  const follower = await followKv(kv, ">", (e) => records.apply(e), log, "gateway records watch");
  await records.caughtUp(60_000, 60_000);
  return { records, stop: () => follower.stop() };
}

import type { KV, KvEntry } from "@nats-io/kv";
import { buildView, changedLists, type CatalogView, type GatewayFacts, type Route, type ViewList } from "../../actors/catalogView.ts";
import { CatalogSchema, type Catalog, type UpstreamEra } from "../../protocol/catalog.ts";
import { GatewayStatusSchema, type GatewayStatus } from "../../protocol/gateway.ts";
import { KEYS } from "../../protocol/subjects.ts";
import type { GatewayChange, GatewayRecords } from "../gatewayRecords.ts";
import { followKv } from "../kvWatch.ts";
import type { Logger } from "../logger.ts";
import type { GatewaySummary } from "../metrics.ts";

type Watched<T> = { value: T; revision: number };

/** A view changed: the scope (null = federated) and which of its lists differ. */
export type ViewChange = { scope: string | null; lists: ViewList[] };

/**
 * This worker's copy of what clients can see: gateway records (from the worker's records), catalogs
 * and poller health (watched here), kept current. Views are built on demand per scope and
 * rebuilt after any change; `onChange` hears which scopes' lists differ.
 */
export class CatalogCache {
  readonly #gateways = new Map<string, Watched<{ name: string; enabled: boolean; passthroughHeaders: string[] }>>();
  readonly #catalogs = new Map<string, Watched<Catalog>>();
  readonly #health = new Map<string, Watched<GatewayStatus["health"]>>();
  readonly #views = new Map<string | null, CatalogView>();
  readonly #listeners = new Set<(change: ViewChange) => void>();
  readonly #loggedClashes = new Set<string>();
  /** the watches, stopped with the cache */
  readonly #watches = new Set<{ stop(): void }>();
  #stopping = false;
  #dirty: NodeJS.Immediate | undefined;

  /** `records`: the worker's gateway records (one watch per worker, runtime/gatewayRecords.ts); catalogs and health are watched here */
  constructor(
    private readonly kv: { records: GatewayRecords; catalog: KV; state: KV },
    readonly separator: string,
    private readonly log: Logger,
  ) {}

  /** Loads the current values, then follows changes. */
  async start(): Promise<void> {
    const records = this.kv.records;
    // the records held now, and every change after them (same turn: nothing in between)
    this.#watches.add({ stop: records.onChange((c) => this.#applyGateway(c) && this.#changed()) });
    for (const { record, revision } of records.all()) this.#applyGateway({ gid: record.id, record, revision });
    await Promise.all([
      this.#follow(this.kv.catalog, `${KEYS.catalogPrefix}>`, (e) => this.#applyCatalog(e)),
      this.#follow(this.kv.state, `${KEYS.gatewayStatusPrefix}>`, (e) => this.#applyStatus(e)),
    ]);
  }

  stop(): void {
    this.#stopping = true;
    for (const w of this.#watches) w.stop();
    if (this.#dirty) clearImmediate(this.#dirty);
  }

  onChange(listener: (change: ViewChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The names of the downstream request's headers gateway `gid` lets through to its upstream. */
  passthroughHeaders(gid: string): string[] {
    return this.#gateways.get(gid)?.value.passthroughHeaders ?? [];
  }

  gatewayName(gid: string): string | undefined {
    return this.#gateways.get(gid)?.value.name;
  }

  /**
   * Where a name no catalog lists goes, the upstream deciding about it: on a gateway's own
   * endpoint to that gateway, on `/mcp` to the gateway its `<gateway><separator>` prefix names.
   */
  passThrough(scope: string | null, name: string): Route | undefined {
    let gid: string | undefined = scope ?? undefined;
    let original = name;
    if (scope === null) {
      const at = name.indexOf(this.separator);
      if (at <= 0) return undefined;
      gid = this.gatewayByName(name.slice(0, at));
      original = name.slice(at + this.separator.length);
    }
    const g = gid === undefined ? undefined : this.#gateways.get(gid);
    if (gid === undefined || !g?.value.enabled || original === "") return undefined;
    return { gid, gatewayName: g.value.name, original, healthy: this.#health.get(gid)?.value !== "unhealthy" };
  }

  /** The gateway's catalog as this worker holds it. */
  catalog(gid: string): Catalog | undefined {
    return this.#catalogs.get(gid)?.value;
  }

  /** The era discovery recorded in the gateway's catalog; undefined when none is held or it names none. */
  era(gid: string): UpstreamEra | undefined {
    return this.catalog(gid)?.era;
  }

  /** Whether a call to this gateway would be sent (enabled, and not found unhealthy). */
  callable(gid: string): boolean {
    return this.#gateways.get(gid)?.value.enabled === true && this.#health.get(gid)?.value !== "unhealthy";
  }

  /** The gateways an endpoint serves lists of: its own, or on `/mcp` every enabled, healthy one. */
  gatewaysIn(scope: string | null): string[] {
    if (scope !== null) return [scope];
    return this.#facts().flatMap((g) => (g.enabled && g.healthy ? [g.gid] : []));
  }

  /** The enabled gateway with this name, if any. */
  gatewayByName(name: string): string | undefined {
    for (const [gid, g] of this.#gateways) if (g.value.name === name && g.value.enabled) return gid;
    return undefined;
  }

  view(scope: string | null): CatalogView {
    let v = this.#views.get(scope);
    if (!v) {
      v = buildView(this.#facts(), new Map([...this.#catalogs].map(([gid, c]) => [gid, c.value])), scope, this.separator);
      this.#views.set(scope, v);
      for (const clash of v.clashes) {
        if (this.#loggedClashes.has(clash)) continue;
        this.#loggedClashes.add(clash);
        this.log.warn({ scope }, `catalog clash: ${clash}`);
      }
    }
    return v;
  }

  /** Every registered gateway with its health and catalog size, for the metrics. */
  summaries(): GatewaySummary[] {
    return [...this.#gateways].map(([gid, g]) => {
      const c = this.#catalogs.get(gid)?.value;
      return {
        name: g.value.name,
        health: g.value.enabled ? (this.#health.get(gid)?.value ?? "unknown") : "disabled",
        ...(c && { catalog: { tools: c.tools.length, prompts: c.prompts.length, resources: c.resources.length, resourceTemplates: c.resourceTemplates.length } }),
      };
    });
  }

  #facts(): GatewayFacts[] {
    return [...this.#gateways].map(([gid, g]) => ({ gid, name: g.value.name, enabled: g.value.enabled, healthy: this.#health.get(gid)?.value !== "unhealthy" }));
  }

  async #follow(kv: KV, key: string, apply: (e: KvEntry) => boolean): Promise<void> {
    // Current values are in before start() returns; the watch (opened again if it ends, so a
    // worker never serves a catalog that stopped changing) keeps them current.
    const follower = await followKv(kv, key, (e) => void (apply(e) && this.#changed()), this.log, "catalog watch", { loadFirst: true });
    this.#watches.add(follower);
    if (this.#stopping) follower.stop();
  }

  /** Stores `value` under `id` unless what we hold is newer; true when something changed. */
  #put<T>(map: Map<string, Watched<T>>, id: string, e: KvEntry, value: () => T | undefined): boolean {
    const held = map.get(id);
    if (held && held.revision >= e.revision) return false;
    const v = e.operation === "PUT" ? value() : undefined;
    if (v === undefined) return map.delete(id);
    map.set(id, { value: v, revision: e.revision });
    return true;
  }

  #applyGateway({ gid, record, revision }: Pick<GatewayChange, "gid" | "record" | "revision">): boolean {
    if (!record) return this.#gateways.delete(gid);
    this.#gateways.set(gid, { value: { name: record.name, enabled: record.enabled, passthroughHeaders: record.passthroughHeaders }, revision });
    return true;
  }

  #applyCatalog(e: KvEntry): boolean {
    const gid = e.key.slice(KEYS.catalogPrefix.length);
    return this.#put(this.#catalogs, gid, e, () => {
      const r = CatalogSchema.safeParse(e.json());
      if (!r.success) this.log.warn({ gid }, "ignoring a catalog that does not match the schema");
      return r.success ? r.data : undefined;
    });
  }

  #applyStatus(e: KvEntry): boolean {
    const gid = e.key.slice(KEYS.gatewayStatusPrefix.length);
    return this.#put(this.#health, gid, e, () => {
      const r = GatewayStatusSchema.safeParse(e.json());
      return r.success ? r.data.health : undefined;
    });
  }

  /** Coalesces a burst of KV updates into one rebuild and one round of change notices. */
  #changed(): void {
    if (this.#dirty) return;
    this.#dirty = setImmediate(() => {
      this.#dirty = undefined;
      const before = new Map(this.#views);
      this.#views.clear();
      for (const [scope, old] of before) {
        const lists = changedLists(old, this.view(scope));
        if (lists.length === 0) continue;
        for (const l of this.#listeners) l({ scope, lists });
      }
    });
  }
}

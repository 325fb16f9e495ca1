import { randomBytes } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import type { z } from "zod";
import { ProtocolError, parseRequest } from "../protocol/envelope.ts";
import {
  CONNECT_FIELDS,
  GATEWAY_LIST_MAX,
  GatewayAddRequestSchema,
  GatewayGetRequestSchema,
  GatewayListRequestSchema,
  GatewayNameIndexSchema,
  GatewayRecordSchema,
  GatewayRemoveRequestSchema,
  GatewaySpecSchema,
  GatewayUpdateRequestSchema,
  MASK,
  mapGatewaySecrets,
  type GatewayEvent,
  type GatewayRecord,
  type GatewayRef,
  type GatewaySpec,
  type GatewayStatus,
  type GatewayView,
} from "../protocol/gateway.ts";
import { KEYS, type Subjects } from "../protocol/subjects.ts";
import { encodeValue, getLive, isCasConflict, listKeys, parseEntry, type KvStore } from "./kvStore.ts";
import { DEFAULT_OUTBOUND_POLICY, outboundRefusal } from "./outboundPolicy.ts";

/** Effects the registry needs; the runtime provides NATS-backed ones. */
export type RegistryDeps = {
  gateways: KvStore;
  /** clean-up of what other actors keep about a removed gateway */
  catalog: Pick<KvStore, "delete">;
  state: Pick<KvStore, "delete">;
  subjects: Subjects;
  /** durable publication (JetStream) of a gateway-mutation event */
  publish: (subject: string, event: GatewayEvent) => Promise<void>;
  seal: (plain: string, gid: string) => string;
  /** opens a sealed secret; used only to compare an update with what is stored, never returned */
  open: (sealed: string, gid: string) => string;
  statusOf?: (gid: string) => Promise<GatewayStatus | undefined>;
  /** the statuses of many gateways at once (a list's page); without it, `statusOf` each */
  statusesOf?: (gids: string[]) => Promise<Map<string, GatewayStatus>>;
  /** every record as this worker holds them, caught up with the bucket; without it, each is read from KV */
  records?: () => Promise<Stored[]>;
  /** told of each record written (validated, secrets sealed) with its revision, so this worker's watch need not parse it again */
  wrote?: (stored: Stored) => void;
  now?: () => Date;
  newId?: () => string;
};

export type Stored = { record: GatewayRecord; revision: number };

const CAS_RETRIES = 5;
/** A list reply's views stop at about this many bytes: well within NATS's default max_payload (1 MB), headers and envelope included. */
const LIST_REPLY_BYTES = 512 * 1024;

/**
 * A URL whose host is a literal address that is never contacted (metadata, link-local, …) is
 * refused here. Only the always-denied set: loopback and private addresses denied by a
 * worker's configuration, and names, are judged when that worker connects.
 */
const deniedUrlRule = (url: string | undefined, path: string[], ctx: z.RefinementCtx) => {
  if (url === undefined || !URL.canParse(url)) return;
  const refusal = outboundRefusal(new URL(url).hostname, DEFAULT_OUTBOUND_POLICY);
  if (refusal) ctx.addIssue({ code: "custom", path, message: refusal });
};
const AddSchema = GatewayAddRequestSchema.superRefine((spec, ctx) => deniedUrlRule(spec.url, ["url"], ctx));
const UpdateSchema = GatewayUpdateRequestSchema.superRefine((req, ctx) => deniedUrlRule(req.patch.url, ["patch", "url"], ctx));

/** Masks every secret; the only shape a gateway leaves the registry in. */
export function viewOf(record: GatewayRecord, revision: number, status?: GatewayStatus): GatewayView {
  const masked = mapGatewaySecrets(record, () => MASK) as unknown as GatewayView;
  return { ...masked, revision, ...(status ? { status } : {}) };
}

/** Names of the spec fields that differ; `connectChanged` when any of them affects the upstream connection. */
export function diffSpecs(before: GatewaySpec, after: GatewaySpec): { changedFields: string[]; connectChanged: boolean } {
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]) as Set<keyof GatewaySpec>;
  const changedFields = [...keys].filter((k) => !isDeepStrictEqual(before[k], after[k])).sort();
  return { changedFields, connectChanged: changedFields.some((f) => (CONNECT_FIELDS as readonly string[]).includes(f)) };
}

/** Whether a field that affects the upstream connection differs between two versions of a gateway (sealed secrets compare as stored: an unchanged one keeps its sealed form). */
export function connectChanged(before: Pick<GatewaySpec, (typeof CONNECT_FIELDS)[number]>, after: Pick<GatewaySpec, (typeof CONNECT_FIELDS)[number]>): boolean {
  return CONNECT_FIELDS.some((f) => !isDeepStrictEqual(before[f], after[f]));
}

/** Gateway ids, 16 random hex digits each, cut from one random buffer at a time: one call into the RNG per 512 adds, not one per add. */
function randomIds(): () => string {
  let pool = Buffer.alloc(0);
  let at = 0;
  return () => {
    if (at === pool.length) [pool, at] = [randomBytes(8 * 512), 0];
    at += 8;
    return pool.toString("hex", at - 8, at);
  };
}

/**
 * The gateway registry: CRUD over `mcpgw_gateways` with a race-free unique-name index,
 * compare-and-swap writes, sealed secrets and a durable event per mutation.
 */
export class Registry {
  readonly #d: RegistryDeps;
  readonly #now: () => Date;
  readonly #newId: () => string;

  constructor(deps: RegistryDeps) {
    this.#d = deps;
    this.#now = deps.now ?? (() => new Date());
    this.#newId = deps.newId ?? randomIds();
  }

  async add(input: unknown): Promise<GatewayView> {
    const spec = parseRequest(AddSchema, input, "gateway");
    const id = this.#newId();
    await this.#claimName(spec.name, id);
    const at = this.#now().toISOString();
    const record = this.#seal(spec, { id, createdAt: at, updatedAt: at });
    let revision: number;
    try {
      revision = await this.#d.gateways.create(KEYS.gateway(id), encodeValue(record));
    } catch (err) {
      await this.#releaseName(spec.name, id);
      throw err;
    }
    this.#d.wrote?.({ record, revision });
    await this.#emit(id, { type: "added", gid: id, name: spec.name, at, revision });
    return viewOf(record, revision);
  }

  async get(input: unknown): Promise<GatewayView> {
    const ref = parseRequest(GatewayGetRequestSchema, input, "gateway reference");
    const { record, revision } = await this.#load(ref);
    return viewOf(record, revision, await this.#d.statusOf?.(record.id));
  }

  /**
   * One page of gateways in name order: up to `limit` (1,000), fewer when their views would not
   * fit in one NATS message; `next` when there are more. The page's live statuses are asked at once.
   */
  async list(input: unknown): Promise<{ gateways: GatewayView[]; next?: string }> {
    const filter = parseRequest(GatewayListRequestSchema, input ?? {}, "list filter");
    const stored = await this.records();
    const picked = stored
      .filter(
        ({ record }) =>
          (filter.tag === undefined || record.tags.includes(filter.tag)) &&
          (filter.enabled === undefined || record.enabled === filter.enabled) &&
          (filter.after === undefined || record.name.localeCompare(filter.after) > 0),
      )
      .sort((a, b) => a.record.name.localeCompare(b.record.name));
    const page = picked.slice(0, filter.limit ?? GATEWAY_LIST_MAX);
    const statuses = await this.#statusesOf(page.map(({ record }) => record.id));
    const gateways: GatewayView[] = [];
    let bytes = 0;
    for (const { record, revision } of page) {
      const view = viewOf(record, revision, statuses.get(record.id));
      bytes += JSON.stringify(view).length;
      if (gateways.length > 0 && bytes > LIST_REPLY_BYTES) break;
      gateways.push(view);
    }
    return gateways.length < picked.length ? { gateways, next: gateways.at(-1)!.name } : { gateways };
  }

  async #statusesOf(gids: string[]): Promise<Map<string, GatewayStatus>> {
    if (this.#d.statusesOf) return this.#d.statusesOf(gids);
    const out = new Map<string, GatewayStatus>();
    await Promise.all(
      gids.map(async (gid) => {
        const status = await this.#d.statusOf?.(gid);
        if (status) out.set(gid, status);
      }),
    );
    return out;
  }

  /** Every gateway record, secrets still sealed (for other actors of this worker). */
  async records(): Promise<Stored[]> {
    if (this.#d.records) return this.#d.records();
    const keys = await listKeys(this.#d.gateways, `${KEYS.gatewayPrefix}*`);
    const loaded = await Promise.all(keys.map((k) => this.#read(k)));
    return loaded.filter((s): s is Stored => s !== null);
  }

  async update(input: unknown): Promise<GatewayView> {
    const req = parseRequest(UpdateSchema, input, "gateway update");
    for (let attempt = 0; ; attempt++) {
      const current = await this.#load(req);
      if (req.expectedRevision !== undefined && req.expectedRevision !== current.revision) {
        throw new ProtocolError("conflict", `gateway ${current.record.name} is at revision ${current.revision}, not ${req.expectedRevision}`);
      }
      const before = this.#clearSpec(current.record);
      // The patch is merged over the stored spec (secrets the patch leaves out stay sealed).
      const merged = parseRequest(GatewaySpecSchema, { ...before.spec, ...req.patch }, "gateway update");
      const { changedFields, connectChanged } = diffSpecs(before.spec, merged);
      if (changedFields.length === 0) return viewOf(current.record, current.revision);
      const at = this.#now().toISOString();
      const record = this.#seal(merged, { id: current.record.id, createdAt: current.record.createdAt, updatedAt: at }, before.sealedBy);
      const renamed = merged.name !== current.record.name;
      if (renamed) await this.#claimName(merged.name, record.id);
      let revision: number;
      try {
        revision = await this.#d.gateways.update(KEYS.gateway(record.id), encodeValue(record), current.revision);
      } catch (err) {
        if (renamed) await this.#releaseName(merged.name, record.id);
        if (isCasConflict(err) && req.expectedRevision === undefined && attempt < CAS_RETRIES) continue;
        if (isCasConflict(err)) throw new ProtocolError("conflict", `gateway ${current.record.name} changed while it was being updated; retry`);
        throw err;
      }
      this.#d.wrote?.({ record, revision });
      if (renamed) await this.#releaseName(current.record.name, record.id);
      await this.#emit(record.id, { type: "updated", gid: record.id, name: record.name, at, revision, connectChanged, changedFields });
      return viewOf(record, revision);
    }
  }

  async remove(input: unknown): Promise<{ id: string; name: string; removed: true }> {
    const req = parseRequest(GatewayRemoveRequestSchema, input, "gateway reference");
    const current = await this.#load(req);
    const { record, revision } = current;
    if (req.expectedRevision !== undefined && req.expectedRevision !== revision) {
      throw new ProtocolError("conflict", `gateway ${record.name} is at revision ${revision}, not ${req.expectedRevision}`);
    }
    try {
      await this.#d.gateways.delete(KEYS.gateway(record.id), { previousSeq: revision });
    } catch (err) {
      if (isCasConflict(err)) throw new ProtocolError("conflict", `gateway ${record.name} changed while it was being removed; retry`);
      throw err;
    }
    await this.#releaseName(record.name, record.id);
    // What other actors keep about the gateway goes with it, also when no poller is running.
    await Promise.allSettled([
      this.#d.catalog.delete(KEYS.catalog(record.id)),
      ...[KEYS.pollHealth, KEYS.pollDiscovery, KEYS.pollOwner, KEYS.gatewayStatus, KEYS.usage].map((key) => this.#d.state.delete(key(record.id))),
    ]);
    await this.#emit(record.id, { type: "removed", gid: record.id, name: record.name, at: this.#now().toISOString() });
    return { id: record.id, name: record.name, removed: true };
  }

  /** Loads by id or name; `not_found` when absent. */
  async #load(ref: GatewayRef): Promise<Stored> {
    let id = ref.id;
    if (!id) {
      const idx = await getLive(this.#d.gateways, KEYS.gatewayName(ref.name!));
      const index = parseEntry(GatewayNameIndexSchema, idx);
      if (!index) throw new ProtocolError("not_found", `no gateway named ${ref.name}`);
      id = index.id;
    }
    const stored = await this.#read(KEYS.gateway(id));
    if (!stored) throw new ProtocolError("not_found", ref.name ? `no gateway named ${ref.name}` : `no gateway with id ${id}`);
    return stored;
  }

  async #read(key: string): Promise<Stored | null> {
    const e = await getLive(this.#d.gateways, key);
    const record = parseEntry(GatewayRecordSchema, e);
    return e && record ? { record, revision: e.revision } : null;
  }

  /**
   * Creates `name.<name>` → id. KV create is atomic, so of two racing adds exactly one wins.
   * An index entry whose gateway no longer exists (an add that died half-way) is taken over by CAS.
   */
  async #claimName(name: string, id: string): Promise<void> {
    const key = KEYS.gatewayName(name);
    try {
      await this.#d.gateways.create(key, encodeValue({ id }));
      return;
    } catch (err) {
      if (!isCasConflict(err)) throw err;
    }
    const existing = await this.#d.gateways.get(key);
    if (existing && existing.operation === "PUT") {
      const owner = parseEntry(GatewayNameIndexSchema, existing);
      const alive = owner && (await getLive(this.#d.gateways, KEYS.gateway(owner.id)));
      if (alive) throw new ProtocolError("conflict", `a gateway named ${name} already exists`);
    }
    try {
      if (existing) await this.#d.gateways.update(key, encodeValue({ id }), existing.revision);
      else await this.#d.gateways.create(key, encodeValue({ id }));
    } catch (err) {
      if (isCasConflict(err)) throw new ProtocolError("conflict", `a gateway named ${name} already exists`);
      throw err;
    }
  }

  /** Deletes `name.<name>` only while it still points at `id`. */
  async #releaseName(name: string, id: string): Promise<void> {
    const key = KEYS.gatewayName(name);
    const e = await getLive(this.#d.gateways, key);
    if (e && parseEntry(GatewayNameIndexSchema, e)?.id === id) await this.#d.gateways.delete(key, { previousSeq: e.revision }).catch(() => {});
  }

  #seal(spec: GatewaySpec, meta: Pick<GatewayRecord, "id" | "createdAt" | "updatedAt">, keep?: Map<string, string>): GatewayRecord {
    // A secret whose clear value did not change keeps its sealed form, so an edit of
    // one field does not rewrite every ciphertext.
    const sealed = mapGatewaySecrets(spec, (plain) => keep?.get(plain) ?? this.#d.seal(plain, meta.id));
    // the spec was validated at the boundary and sealing only replaces secret strings: no second parse
    return { ...sealed, ...meta };
  }

  /** The stored spec with secrets opened, and a map back to their sealed forms. */
  #clearSpec(record: GatewayRecord): { spec: GatewaySpec; sealedBy: Map<string, string> } {
    const sealedBy = new Map<string, string>();
    const open = this.#d.open;
    const { id: _id, createdAt: _c, updatedAt: _u, ...rest } = record;
    const spec = mapGatewaySecrets(rest, (sealed) => {
      const plain = open(sealed, record.id);
      sealedBy.set(plain, sealed);
      return plain;
    });
    return { spec: spec as GatewaySpec, sealedBy };
  }

  async #emit(gid: string, event: GatewayEvent): Promise<void> {
    await this.#d.publish(this.#d.subjects.evt.gateway(gid, event.type), event);
  }
}

import type { KV, KvEntry } from "@nats-io/kv";

/** The part of a JetStream KV bucket the actors use; tests may provide their own. */
export type KvStore = Pick<KV, "get" | "create" | "update" | "put" | "delete" | "purge" | "keys">;

/** The entry, or null when the key is absent or its last operation was a delete/purge (nats-server 2.9). */
export async function getLive(kv: Pick<KV, "get">, key: string): Promise<KvEntry | null> {
  const e = await kv.get(key);
  return e && e.operation === "PUT" ? e : null;
}

export async function listKeys(kv: Pick<KV, "keys">, filter: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of await kv.keys(filter)) out.push(k);
  return out;
}

/** An entry's value parsed with `schema`; null when there is no entry or its value does not fit. */
export function parseEntry<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } }, entry: { json(): unknown } | null | undefined): T | null {
  if (!entry) return null;
  const r = schema.safeParse(entryJson(entry));
  return r.success ? r.data : null;
}

/** An entry's value as JSON; undefined when it is not JSON (the caller's schema then rejects it). */
export function entryJson(e: { json(): unknown }): unknown {
  try {
    return e.json();
  } catch {
    return undefined;
  }
}

export function encodeValue(value: unknown): string {
  return JSON.stringify(value);
}

/** JetStream error 10071, wrong last sequence: KV create of an existing key, or a stale compare-and-swap. */
export function isCasConflict(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: unknown }).code === 10071) return true;
    if (e instanceof Error && /wrong last sequence|key exists/i.test(e.message)) return true;
  }
  return false;
}

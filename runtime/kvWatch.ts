// A KV watch that lasts as long as its owner: when the watch ends or fails (a consumer lost
// with a stream or server failure), it is opened again after a pause. A new watch repeats
// each key's latest entry, so `onEntry` must take an entry it has already seen in its stride.
import type { KV, KvEntry } from "@nats-io/kv";
import type { Logger } from "./logger.ts";

const RETRY_MS = 1_000;

export type KvFollower = { stop(): void };

/**
 * Watches `key` (wildcards allowed) until stopped; resolves once the first watch is open.
 * With `loadFirst`, every matching key's current entry has been handed to `onEntry` by then.
 */
export async function followKv(
  kv: KV,
  key: string,
  onEntry: (e: KvEntry) => void,
  log: Logger,
  what: string,
  opts: { loadFirst?: boolean } = {},
): Promise<KvFollower> {
  let stopped = false;
  const apply = (e: KvEntry) => {
    try {
      onEntry(e);
    } catch (err) {
      log.warn({ err, key: e.key }, `${what}: ignoring an entry its handler could not take`);
    }
  };
  if (opts.loadFirst) {
    for await (const k of await kv.keys(key)) {
      const e = await kv.get(k);
      if (e) apply(e);
    }
  }
  let current: { stop(): void } | null = await kv.watch({ key });
  void (async () => {
    let iter: Awaited<ReturnType<KV["watch"]>> | null = current as Awaited<ReturnType<KV["watch"]>>;
    while (!stopped) {
      try {
        iter ??= await kv.watch({ key });
        current = iter;
        if (stopped) iter.stop();
        for await (const e of iter) apply(e);
      } catch (err) {
        log.warn({ err, key }, `${what} failed`);
      }
      iter = null;
      if (stopped) return;
      log.warn({ key }, `${what} ended; watching again`);
      await new Promise((r) => setTimeout(r, RETRY_MS).unref());
    }
  })();
  return {
    stop() {
      stopped = true;
      current?.stop();
    },
  };
}

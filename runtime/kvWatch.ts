// A KV watch that lasts as long as its owner: when the watch ends or fails (a consumer lost
// with a stream or server failure), it is opened again after a pause; when a NATS node may have
// been lost (a reconnect, a stream's new leader), a new one is opened at once and replaces it,
// since a consumer on a dead node is silent until two 5 s heartbeats are missed. A watch opened
// again resumes after the last revision a watch delivered (watches deliver in revision order),
// so nothing is repeated or skipped. With `loadFirst` a key read first may still come again from
// the first watch: `onEntry` must take an entry it has already seen in its stride.
import type { KV, KvEntry } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "./logger.ts";
import { followConnection } from "./nats.ts";

const RETRY_MS = 1_000;

export type KvFollower = { stop(): void };

type Watch = Awaited<ReturnType<KV["watch"]>>;

/** The connection a nats.js bucket talks through (its public `js`); none for a fake. */
const connectionOf = (kv: KV): NatsConnection | undefined => (kv as Partial<{ js: { nc?: NatsConnection } }>).js?.nc;

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
  /** the highest revision a watch delivered: a watch opened again starts after it */
  let delivered = 0;
  const apply = (e: KvEntry) => {
    try {
      onEntry(e);
    } catch (err) {
      log.warn({ err, key: e.key }, `${what}: ignoring an entry its handler could not take`);
    }
  };
  // the watch being replaced and its replacement may both deliver an entry for a moment
  const fromWatch = (e: KvEntry) => {
    if (e.revision <= delivered) return;
    delivered = e.revision;
    apply(e);
  };
  const open = () => kv.watch(delivered > 0 ? { key, resumeFromRevision: delivered + 1 } : { key });
  if (opts.loadFirst) {
    for await (const k of await kv.keys(key)) {
      const e = await kv.get(k);
      if (e) apply(e);
    }
  }
  let current: Watch = await open();
  /** a watch opened to replace `current`, which the loop takes up when `current` ends */
  let replacement: Watch | null = null;
  let replacing = false;
  const replace = () => {
    if (stopped || replacing) return;
    replacing = true;
    void open()
      .then(
        (next) => {
          if (stopped) return next.stop();
          replacement?.stop();
          replacement = next;
          current.stop();
        },
        (err: unknown) => log.warn({ err, key }, `${what}: could not open a replacement; keeping the watch`),
      )
      .finally(() => (replacing = false));
  };
  const unfollow = (() => {
    const nc = connectionOf(kv);
    return nc ? followConnection(nc).onNodeLoss(replace) : () => {};
  })();
  void (async () => {
    let iter: Watch | null = current;
    while (!stopped) {
      try {
        iter ??= replacement ?? (await open());
        if (replacement && iter !== replacement) {
          // replaced while this one was opening
          iter.stop();
          iter = replacement;
        }
        replacement = null;
        current = iter;
        if (stopped) iter.stop();
        for await (const e of iter) fromWatch(e);
      } catch (err) {
        log.warn({ err, key }, `${what} failed`);
      }
      iter = null;
      if (stopped) return;
      // replaced on purpose: the replacement is already open
      if (replacement) continue;
      log.warn({ key }, `${what} ended; watching again`);
      await new Promise((r) => setTimeout(r, RETRY_MS).unref());
    }
  })();
  return {
    stop() {
      stopped = true;
      unfollow();
      current.stop();
      replacement?.stop();
    },
  };
}

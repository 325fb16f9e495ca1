import { readFileSync } from "node:fs";
import { credsAuthenticator, NatsConnectionImpl, setTransportFactory, type NatsConnection } from "@nats-io/transport-node";
import { nodeResolveHost } from "@nats-io/transport-node/lib/node_transport.js";
import { DiscardPolicy, jetstream, jetstreamManager, JetStreamApiError, StorageType, type JetStreamClient, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { buckets, eventStream, inboxPrefixOf, STREAM_LEADER_ELECTED_ADVISORIES, streamLog, type Buckets } from "../protocol/subjects.ts";
import { retryingJs, retryingKv, retryTransient } from "./jetstreamRetry.ts";
import { refusal } from "./bus.ts";
import { GatheringTransport } from "./natsTransport.ts";

/** `inboxPrefix` defaults to the user's own (nats.conf lets admin and viewer read no other). */
export type NatsOptions = { url: string; user?: string; password?: string; credsFile?: string; name?: string; inboxPrefix?: string };

/**
 * Every NATS connection of the runtime, CLI and tests is made here, with writes gathered per
 * turn of the event loop (natsTransport.ts). nats.js keeps its transport factory in one
 * process-wide slot, read at every (re)connect: this is the only place that sets it, as
 * `connect` of @nats-io/transport-node would, with the gathering transport.
 */
export async function connectNats(opts: NatsOptions): Promise<NatsConnection> {
  setTransportFactory({ factory: () => new GatheringTransport(), dnsResolveFn: nodeResolveHost });
  return NatsConnectionImpl.connect({
    servers: opts.url.split(","),
    name: opts.name ?? "mcpgw",
    user: opts.user,
    pass: opts.password,
    authenticator: opts.credsFile ? credsAuthenticator(readFileSync(opts.credsFile)) : undefined,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    inboxPrefix: opts.inboxPrefix ?? inboxPrefixOf(opts.user),
    // nats.js otherwise builds two errors (stack traces included) for every request up front,
    // used only if it fails: 7% of a worker's CPU under a burst of admin adds (profiled)
    noAsyncTraces: true,
  });
}

/** A change of a connection's state that its followers hear of. */
export type ConnectionChange = "disconnect" | "reconnect";

export type ConnectionFollower = {
  /** connected now: not from a disconnect until the next reconnect, while requests would only wait for their timeout */
  connected(): boolean;
  /** resolves at the next reconnect (at once when connected), or with false after `withinMs` */
  reconnected(withinMs: number): Promise<boolean>;
  /** calls `f` (which must not throw) at every disconnect and reconnect, until the connection closes or the returned function is called */
  onChange(f: (change: ConnectionChange) => void): () => void;
  /**
   * calls `f` (which must not throw) whenever a JetStream consumer this connection reads may have
   * been lost with a NATS node: at every reconnect, and when a stream elects a new leader (the
   * server's advisory), until the returned function is called
   */
  onNodeLoss(f: () => void): () => void;
};

const followers = new WeakMap<NatsConnection, ConnectionFollower>();

/**
 * The one follower of `nc`'s status: the single reader of `nc.status()` for everyone who needs
 * to know whether the connection is up (the edge, the session store, the metrics), who
 * subscribe to it. Follows the connection until it closes.
 */
export function followConnection(nc: NatsConnection): ConnectionFollower {
  let follower = followers.get(nc);
  if (!follower) followers.set(nc, (follower = newFollower(nc)));
  return follower;
}

/** at most one node-loss signal from advisories per this long */
const ADVISORY_QUIET_MS = 1_000;

function newFollower(nc: NatsConnection): ConnectionFollower {
  let connected = true;
  const listeners = new Set<(change: ConnectionChange) => void>();
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type !== "disconnect" && s.type !== "reconnect") continue;
      connected = s.type === "reconnect";
      for (const f of listeners) f(s.type);
    }
  })();
  const isConnected = () => connected && !nc.isClosed();
  const onChange = (f: (change: ConnectionChange) => void) => {
    // a listener of its own per subscriber: the same function subscribed twice is two subscriptions
    const listener = (change: ConnectionChange) => f(change);
    listeners.add(listener);
    return () => void listeners.delete(listener);
  };
  // A consumer nats-server 2.9 placed on a node that died is silent, not closed: its client learns
  // of it only after two missed 5 s heartbeats. A new stream leader (the node's loss, 3-9 s after it)
  // and a reconnect are the signs available sooner.
  const lossListeners = new Set<() => void>();
  const nodeLost = () => {
    for (const f of lossListeners) f();
  };
  // A node loss elects several leaders within seconds: one signal per ADVISORY_QUIET_MS (the last
  // one honoured), so a burst, or a flood into the subject, costs each watch one replacement a second.
  let quietUntil = 0;
  let trailing: NodeJS.Timeout | null = null;
  const advised = () => {
    const now = performance.now();
    if (now >= quietUntil) {
      quietUntil = now + ADVISORY_QUIET_MS;
      return nodeLost();
    }
    trailing ??= setTimeout(() => {
      trailing = null;
      quietUntil = performance.now() + ADVISORY_QUIET_MS;
      nodeLost();
    }, quietUntil - now).unref();
  };
  let advisories: { unsubscribe(): void } | null = null;
  const onNodeLoss = (f: () => void) => {
    const listener = () => f();
    lossListeners.add(listener);
    // the server publishes its advisories itself: a consumer's delivery into the subject (anyone may make one) is refused
    if (!advisories && !nc.isClosed()) advisories = nc.subscribe(STREAM_LEADER_ELECTED_ADVISORIES, { callback: (err, msg) => void (!err && !refusal(msg, "message") && advised()) });
    const stop = onChange((change) => change === "reconnect" && listener());
    return () => {
      stop();
      lossListeners.delete(listener);
      if (lossListeners.size === 0) {
        advisories?.unsubscribe();
        advisories = null;
        if (trailing) clearTimeout(trailing);
        trailing = null;
      }
    };
  };
  return {
    connected: isConnected,
    onChange,
    onNodeLoss,
    reconnected(withinMs) {
      if (isConnected()) return Promise.resolve(true);
      return new Promise<boolean>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          stop();
          resolve(isConnected());
        };
        const timer = setTimeout(done, withinMs);
        const stop = onChange((change) => change === "reconnect" && done());
      });
    },
  };
}

export type Stores = {
  js: JetStreamClient;
  state: KV;
  gateways: KV;
  catalog: KV;
  sessions: KV;
  names: Buckets;
  streamName: string;
  /** the stream log: client stream events kept for resumption */
  streamLogName: string;
};

const DAY_NS = 24 * 3600 * 1e9;

/**
 * Opens (creating when missing, idempotently) the KV buckets and the event stream, each with
 * `replicas` copies; one that has fewer is raised to that count (never lowered: a worker
 * started with the default must not strip a cluster's copies). The buckets and the client it
 * returns retry through a NATS node loss (jetstreamRetry.ts); so does the opening.
 */
export async function openStores(nc: NatsConnection, prefix: string, replicas = 1, streamRetentionMs = 10 * 60_000): Promise<Stores> {
  const names = buckets(prefix);
  const kvm = new Kvm(nc);
  const jsm = await retryTransient("open JetStream", () => jetstreamManager(nc));
  const open = (bucket: string, opts: { maxValueSize?: number } = {}) =>
    retryTransient(`open ${bucket}`, async () => {
      const kv = await kvm.create(bucket, { history: 1, replicas, ...opts });
      await raiseReplicas(jsm, (await kv.status()).streamInfo.config, replicas);
      return retryingKv(kv, bucket);
    });
  const [state, gateways, catalog, sessions] = await Promise.all([
    open(names.state),
    open(names.gateways),
    open(names.catalog, { maxValueSize: 8 * 1024 * 1024 }),
    open(names.sessions),
  ]);
  await retryTransient("open the event stream", () => openEventStream(jsm, prefix, replicas));
  await retryTransient("open the stream log", () => openStreamLog(jsm, prefix, replicas, streamRetentionMs));
  return { js: retryingJs(jetstream(nc)), state, gateways, catalog, sessions, names, streamName: eventStream(prefix).name, streamLogName: streamLog(prefix).name };
}

/** Bound of the stream log's size: a quarter of nats.conf's max_memory_store. */
const STREAM_LOG_MAX_BYTES = 64 * 1024 * 1024;

/**
 * The stream log keeps every client stream event for `retentionMs` in memory (a resumed
 * stream needs minutes, not durability across a NATS restart). Its duplicate window spans
 * the retention: a copy of a stored event delivered back into `stream.>` is dropped.
 */
async function openStreamLog(jsm: JetStreamManager, prefix: string, replicas: number, retentionMs: number): Promise<void> {
  const log = streamLog(prefix);
  const ns = retentionMs * 1e6;
  const config = { subjects: log.subjects, max_age: ns, duplicate_window: ns, max_bytes: STREAM_LOG_MAX_BYTES };
  try {
    const info = await jsm.streams.info(log.name);
    if (info.config.max_age !== ns || info.config.duplicate_window !== ns || info.config.max_bytes !== STREAM_LOG_MAX_BYTES) {
      info.config = (await jsm.streams.update(log.name, { ...info.config, ...config })).config;
    }
    await raiseReplicas(jsm, info.config, replicas);
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.streams.add({ name: log.name, ...config, storage: StorageType.Memory, discard: DiscardPolicy.Old, num_replicas: replicas }).catch(async (e) => {
      await jsm.streams.info(log.name).catch(() => Promise.reject(e));
    });
  }
}

async function openEventStream(jsm: JetStreamManager, prefix: string, replicas: number): Promise<void> {
  const stream = eventStream(prefix);
  // The duplicate window spans the whole retention: a copy of a stored event that anyone
  // delivers back into the stream (a pull request's reply subject may be any subject) is
  // dropped by the stream itself, so an old event never comes round again (runtime/events.ts).
  const config = { subjects: stream.subjects, max_age: DAY_NS, duplicate_window: DAY_NS };
  try {
    const info = await jsm.streams.info(stream.name);
    if (stream.subjects.some((s) => !info.config.subjects?.includes(s)) || info.config.duplicate_window !== DAY_NS) {
      info.config = (await jsm.streams.update(stream.name, { ...info.config, ...config })).config;
    }
    await raiseReplicas(jsm, info.config, replicas);
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.streams.add({ name: stream.name, ...config, max_msgs: 1_000_000, num_replicas: replicas }).catch(async (e) => {
      // another worker created it first
      await jsm.streams.info(stream.name).catch(() => Promise.reject(e));
    });
  }
}

/** nats-server (2.9 too) scales a clustered stream's replicas by a stream update. */
async function raiseReplicas(jsm: JetStreamManager, config: StreamConfig, replicas: number): Promise<void> {
  if ((config.num_replicas ?? 1) >= replicas) return;
  await jsm.streams.update(config.name, { ...config, num_replicas: replicas });
}

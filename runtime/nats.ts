import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, JetStreamApiError, type JetStreamClient } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { buckets, eventStream, type Buckets } from "../protocol/subjects.ts";

export type NatsOptions = { url: string; user?: string; password?: string; credsFile?: string; name?: string; inboxPrefix?: string };

export async function connectNats(opts: NatsOptions): Promise<NatsConnection> {
  return connect({
    servers: opts.url.split(","),
    name: opts.name ?? "mcpgw",
    user: opts.user,
    pass: opts.password,
    authenticator: opts.credsFile ? credsAuthenticator(readFileSync(opts.credsFile)) : undefined,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    inboxPrefix: opts.inboxPrefix,
  });
}

/**
 * Whether a connection is connected now: not from a disconnect until the next reconnect,
 * while requests would only wait for their timeout. Follows it until it closes.
 */
export function followConnection(nc: NatsConnection): () => boolean {
  let connected = true;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") connected = false;
      else if (s.type === "reconnect") connected = true;
    }
  })();
  return () => connected && !nc.isClosed();
}

export type Stores = {
  js: JetStreamClient;
  state: KV;
  gateways: KV;
  catalog: KV;
  sessions: KV;
  names: Buckets;
  streamName: string;
};

const DAY_NS = 24 * 3600 * 1e9;

/** Opens (creating when missing, idempotently) the KV buckets and the event stream. */
export async function openStores(nc: NatsConnection, prefix: string): Promise<Stores> {
  const names = buckets(prefix);
  const kvm = new Kvm(nc);
  const [state, gateways, catalog, sessions] = await Promise.all([
    kvm.create(names.state, { history: 1 }),
    kvm.create(names.gateways, { history: 1 }),
    kvm.create(names.catalog, { history: 1, maxValueSize: 8 * 1024 * 1024 }),
    kvm.create(names.sessions, { history: 1 }),
  ]);
  const stream = eventStream(prefix);
  const jsm = await jetstreamManager(nc);
  // The duplicate window spans the whole retention: a copy of a stored event that anyone
  // delivers back into the stream (a pull request's reply subject may be any subject) is
  // dropped by the stream itself, so an old event never comes round again (runtime/events.ts).
  const config = { subjects: stream.subjects, max_age: DAY_NS, duplicate_window: DAY_NS };
  try {
    const info = await jsm.streams.info(stream.name);
    if (stream.subjects.some((s) => !info.config.subjects?.includes(s)) || info.config.duplicate_window !== DAY_NS) {
      await jsm.streams.update(stream.name, { ...info.config, ...config });
    }
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.streams.add({ name: stream.name, ...config, max_msgs: 1_000_000 }).catch(async (e) => {
      // another worker created it first
      await jsm.streams.info(stream.name).catch(() => Promise.reject(e));
    });
  }
  return { js: jetstream(nc), state, gateways, catalog, sessions, names, streamName: stream.name };
}

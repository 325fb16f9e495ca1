import type { Dispatcher } from "undici";
import type { NatsConnection } from "@nats-io/transport-node";
import { Registry } from "../actors/registry.ts";
import { startAdminService, type AdminService } from "./adminService.ts";
import { subjects, type Subjects } from "../protocol/subjects.ts";
import { startClassifierHost } from "./classifierHost.ts";
import type { Config } from "./config.ts";
import { AckedPublisher, ackedEvents, ackedKv } from "./jetstreamAcks.ts";
import { followGatewayRecords, type GatewayRecords } from "./gatewayRecords.ts";
import type { Logger } from "./logger.ts";
import { Refusals } from "./bus.ts";
import { countReconnects, createMetrics, type Metrics } from "./metrics.ts";
import { openStores, type Stores } from "./nats.ts";
import { sharedUpstreamAgent } from "./mcpClient.ts";
import { probeConnector, readGatewayStatus } from "./pollerEffects.ts";
import { startPollerHost } from "./pollerHost.ts";
import { serveRegistry } from "./registryService.ts";
import { SecretBox } from "./secretBox.ts";
import { gatewayStatuses, serveStatus } from "./statusService.ts";
import { startUpstreamHost, type UpstreamHost } from "./hosts/upstreamHost.ts";
import { startEdge, type Edge } from "./edge/edgeServer.ts";
import { createTracing, type Tracing } from "./tracing.ts";
import { createUpstreamCaller } from "./upstreamClient.ts";
import { CatalogCache } from "./edge/catalogCache.ts";
import { SessionStore } from "./sessionStore.ts";

/** What every host of an actor kind gets from the worker. */
export type WorkerContext = {
  config: Config;
  nc: NatsConnection;
  log: Logger;
  s: Subjects;
  stores: Stores;
  box: SecretBox;
  registry: Registry;
  /** the gateway records as this worker's one watch of them holds them (runtime/gatewayRecords.ts) */
  gatewayRecords: GatewayRecords;
  /** what clients can see (records, catalogs, health), as this worker holds it: the edge's lists, and the era an upstream connect needs */
  catalogs: CatalogCache;
  /** the client session records: one store per worker, so what the edge created or read is recalled by the actors it starts */
  sessions: SessionStore;
  /** JetStream writes acknowledged on one subscription of this worker (runtime/jetstreamAcks.ts) */
  acks: AckedPublisher;
  /** this worker's admin micro service: hosts serve their `mcpgw.admin.*` subjects as its endpoints */
  admin: AdminService;
  /** deliveries this worker refused to act on (runtime/bus.ts `refusal`) */
  refusals: Refusals;
  /** this worker's Prometheus registry and the series hosts record into */
  metrics: Metrics;
  tracing: Tracing;
  /**
   * one keep-alive HTTP agent for every upstream connection of this worker (sessions and polls
   * to gateways without TLS material): HTTP connections carry no MCP session state
   */
  upstreamAgent: Dispatcher;
};

/** A running part of a worker; stopped in reverse start order. */
export type Hosted = { stop(): Promise<void> };

export type Worker = {
  id: string;
  ctx: WorkerContext;
  stores: Stores;
  registry: Registry;
  edge: Edge;
  upstream: UpstreamHost;
  refusals: Refusals;
  stop(): Promise<void>;
};

/** Composition root of one worker: opens state, hosts every actor kind on its subjects. */
export async function startWorker(config: Config, nc: NatsConnection, log: Logger): Promise<Worker> {
  if (!config.secretKey) throw new Error("MCPGW_SECRET_KEY is required");
  const s = subjects(config.prefix);
  const stores = await openStores(nc, config.prefix, config.jsReplicas, config.streamRetention);
  const box = new SecretBox(config.secretKey);
  const workerLog = log.child({ worker: config.workerId });
  // one watch of the gateway records per worker, shared by every host that needs them
  const { records: gatewayRecords, stop: stopRecords } = await followGatewayRecords(stores.gateways, workerLog);
  // the registry's writes are acknowledged on one subscription, not a request each
  const acks = new AckedPublisher(nc);
  const registry = new Registry({
    gateways: ackedKv(stores.gateways, stores.names.gateways, acks),
    catalog: stores.catalog,
    state: stores.state,
    subjects: s,
    publish: ackedEvents(acks),
    seal: (plain, gid) => box.seal(plain, gid),
    open: (sealed, gid) => box.open(sealed, gid),
    statusOf: (gid) => readGatewayStatus(nc, s, stores.state, gid),
    statusesOf: (gids) => gatewayStatuses({ nc, s, stores }, gids),
    records: async () => {
      await gatewayRecords.caughtUp();
      return [...gatewayRecords.all()];
    },
    wrote: (stored) => gatewayRecords.wrote(stored),
  });
  const refusals = new Refusals();
  const admin = await startAdminService(nc, s, config.workerId, { log: workerLog, refusals });
  const metrics = createMetrics();
  const tracing = createTracing({ otlpEndpoint: config.otlpEndpoint, workerId: config.workerId });
  const upstreamAgent = sharedUpstreamAgent(config.outbound);
  const catalogs = new CatalogCache({ records: gatewayRecords, catalog: stores.catalog, state: stores.state }, config.edge.toolSeparator, workerLog);
  await catalogs.start();
  metrics.readGatewaysFrom(() => catalogs.summaries());
  const sessions = new SessionStore({
    kv: stores.sessions,
    js: stores.js,
    s,
    log: workerLog,
    idleTtlMs: config.edge.sessionIdleTtl,
    onSwept: (alive) => metrics.clientSessions.set(alive),
  });
  const ctx: WorkerContext = { config, nc, log: workerLog, s, stores, box, registry, gatewayRecords, catalogs, sessions, acks, admin, refusals, metrics, tracing, upstreamAgent };
  countReconnects(nc, metrics);

  // first to start, last to stop: spans of everything stopping are still exported
  const hosted: Hosted[] = [{ stop: () => tracing.shutdown() }, { stop: async () => (stopRecords(), acks.stop(), catalogs.stop()) }];
  // closed after every upstream session and poller stopped (bounded: a request an upstream never ends is cut)
  hosted.push({
    stop: async () => {
      let timer: NodeJS.Timeout | undefined;
      const closed = await Promise.race([upstreamAgent.close().then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), config.intervals.shutdownTimeout)))]);
      clearTimeout(timer);
      if (!closed) await upstreamAgent.destroy();
    },
  });
  serveRegistry(admin, registry, s);
  serveStatus(ctx);
  // Each actor kind's host is started here, in dependency order.
  hosted.push(await startPollerHost(ctx, probeConnector((sealed, gid) => box.open(sealed, gid), config.outbound, upstreamAgent)));
  // the edge calls this worker's actors in process, and places new sessions here
  const upstream = await startUpstreamHost(ctx);
  const edge = await startEdge(ctx, createUpstreamCaller(nc, s, { callTimeoutMs: config.intervals.callTimeout, maxBodyBytes: config.edge.maxBodyBytes, log: ctx.log, local: upstream.local }));
  // stopped after the upstream sessions: a call in flight then still hears why it ended
  hosted.push(edge);
  hosted.push(upstream);
  // last to start, first to stop: a clean shutdown hands the lease over before slower closes
  hosted.push(await startClassifierHost(ctx));
  // stopped first: admin requests go to the other workers while this one shuts down
  hosted.push(admin);

  await nc.flush();
  ctx.log.info({ prefix: config.prefix }, "worker started");
  return {
    id: config.workerId,
    ctx,
    stores,
    registry,
    edge,
    upstream,
    refusals,
    async stop() {
      await edge.stopAccepting();
      // calls in flight on this edge's streams finish first (their upstream sessions, here or
      // elsewhere, still run); what is left after the bound ends with its stream, resumable elsewhere.
      // Meanwhile this worker's upstream sessions take no new calls and let theirs finish, in the same bound.
      upstream.drain();
      await edge.drain(config.intervals.shutdownTimeout);
      for (const h of hosted.reverse()) {
        await h.stop().catch((err) => ctx.log.error({ err }, "error while stopping"));
      }
      await nc.flush().catch(() => {});
      ctx.log.info("worker stopped");
    },
  };
}

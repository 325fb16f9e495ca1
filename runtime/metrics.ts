// Prometheus metrics of one worker, served at `GET /metrics` on its edge port. One registry
// per worker, never prom-client's global one: several workers share a process in tests.
// Hosts record where the behaviour happens; gauges that describe the cluster are read at
// scrape time from what the worker already caches (never from KV per scrape).
import type { NatsConnection } from "@nats-io/transport-node";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { CloseCause } from "../actors/upstreamSession/machine.ts";
import { followConnection } from "./nats.ts";

/** How a forwarded client request ended (`outcome` of `mcpgw_calls_total`). */
export type CallOutcome =
  | "ok"
  /** answered with `isError: true` (a tool that ran and failed) */
  | "tool_error"
  /** the upstream's own JSON-RPC error */
  | "upstream_error"
  | "timeout"
  /** the upstream's answer exceeded the gateway's answer limit */
  | "too_large"
  /** gateway unhealthy, down, or no session could be started */
  | "unavailable"
  /** no gateway has the tool, prompt, resource or template named */
  | "not_found"
  | "cancelled"
  | "error";

/** `gateway` of a request that named nothing routable: never the client's text (labels stay bounded). */
const UNKNOWN_GATEWAY = "(unknown)";

/** One gateway as this worker's catalog cache knows it. */
export type GatewaySummary = {
  name: string;
  health: "healthy" | "unhealthy" | "unknown" | "disabled";
  /** items per list of its discovered catalog; absent before the first discovery */
  catalog?: { tools: number; prompts: number; resources: number; resourceTemplates: number };
};

const HEALTH = ["healthy", "unhealthy", "unknown", "disabled"] as const;
const SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export type Metrics = ReturnType<typeof createMetrics>;

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  let gatewaySummaries: () => GatewaySummary[] = () => [];

  const calls = new Counter({
    name: "mcpgw_calls_total",
    help: "Client requests forwarded to a gateway (tools/call, prompts/get, resources/read, completion/complete), by how they ended",
    labelNames: ["gateway", "method", "outcome"] as const,
    registers,
  });
  const callDuration = new Histogram({
    name: "mcpgw_call_duration_seconds",
    help: "Time from a client request reaching the edge to its answer",
    labelNames: ["gateway", "method"] as const,
    buckets: SECONDS_BUCKETS,
    registers,
  });
  const upstreamSessions = new Gauge({
    name: "mcpgw_upstream_sessions",
    help: "Upstream sessions hosted by this worker",
    labelNames: ["gateway"] as const,
    registers,
  });
  const upstreamSessionCreations = new Counter({
    name: "mcpgw_upstream_session_creations_total",
    help: "Upstream session actors started on this worker",
    labelNames: ["gateway"] as const,
    registers,
  });
  const upstreamSessionEvictions = new Counter({
    name: "mcpgw_upstream_session_evictions_total",
    help: "Upstream sessions closed on this worker, by reason",
    labelNames: ["gateway", "reason"] as const,
    registers,
  });
  const polls = new Counter({
    name: "mcpgw_polls_total",
    help: "Health checks and discoveries run by this worker's pollers, by the gateway's tier",
    labelNames: ["kind", "tier", "outcome"] as const,
    registers,
  });
  const pollDuration = new Histogram({
    name: "mcpgw_poll_duration_seconds",
    help: "Time of one health check or discovery, connect included",
    labelNames: ["kind", "tier"] as const,
    buckets: SECONDS_BUCKETS,
    registers,
  });
  new Gauge({
    name: "mcpgw_gateways",
    help: "Registered gateways by health, as this worker's cache sees the cluster",
    labelNames: ["health"] as const,
    registers,
    collect() {
      this.reset();
      const gateways = gatewaySummaries();
      for (const health of HEALTH) this.set({ health }, gateways.filter((g) => g.health === health).length);
    },
  });
  new Gauge({
    name: "mcpgw_catalog_items",
    help: "Items in each gateway's discovered catalog, by list",
    labelNames: ["gateway", "list"] as const,
    registers,
    collect() {
      this.reset();
      for (const g of gatewaySummaries()) {
        for (const [list, n] of Object.entries(g.catalog ?? {})) this.set({ gateway: g.name, list }, n);
      }
    },
  });
  const classifierLeader = new Gauge({
    name: "mcpgw_classifier_leader",
    help: "1 while this worker holds the classifier lease",
    registers,
  });
  const clientSessions = new Gauge({
    name: "mcpgw_client_sessions",
    help: "Client sessions in the cluster, counted by this worker's last session sweep",
    registers,
  });
  const natsReconnects = new Counter({
    name: "mcpgw_nats_reconnects_total",
    help: "Times this worker's NATS connection was re-established",
    registers,
  });
  const relayedRequests = new Counter({
    name: "mcpgw_relayed_requests_total",
    help: "Server-to-client requests (sampling, elicitation, roots, ...) relayed from an upstream to its client",
    labelNames: ["gateway", "method"] as const,
    registers,
  });
  classifierLeader.set(0);

  return {
    registry,
    polls,
    pollDuration,
    classifierLeader,
    clientSessions,
    natsReconnects,
    /** requests an upstream sent its client, relayed (upstream session actors) */
    relayedRequests,
    /** one forwarded request ended */
    call(gateway: string, method: string, outcome: CallOutcome, seconds: number): void {
      calls.inc({ gateway, method, outcome });
      callDuration.observe({ gateway, method }, seconds);
    },
    /** a request that named nothing routable (no duration: it never left the edge) */
    unrouted(method: string): void {
      calls.inc({ gateway: UNKNOWN_GATEWAY, method, outcome: "not_found" });
    },
    upstreamSessionStarted(gateway: string): void {
      upstreamSessionCreations.inc({ gateway });
      upstreamSessions.inc({ gateway });
    },
    upstreamSessionClosed(gateway: string, reason: CloseCause): void {
      upstreamSessionEvictions.inc({ gateway, reason });
      upstreamSessions.dec({ gateway });
    },
    /** where `mcpgw_gateways` and `mcpgw_catalog_items` are read from at scrape time */
    readGatewaysFrom(read: () => GatewaySummary[]): void {
      gatewaySummaries = read;
    },
  };
}

/** Counts reconnects of `nc` until it closes. */
export function countReconnects(nc: NatsConnection, metrics: Metrics): void {
  followConnection(nc).onChange((change) => change === "reconnect" && metrics.natsReconnects.inc());
}

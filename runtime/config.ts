import { randomBytes } from "node:crypto";
import { z } from "zod";
import { DENIABLE_CLASSES, type OutboundPolicy } from "../actors/outboundPolicy.ts";
import { DEFAULT_PREFIX, isSubjectToken } from "../protocol/subjects.ts";

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `1500`, `500ms`, `15s`, `5m`, `1h` → milliseconds. */
export function parseDuration(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) return null;
  return Math.round(Number(m[1]) * UNITS[m[2] ?? "ms"]!);
}

const duration = (fallback: string, min = 1) =>
  z
    .string()
    .default(fallback)
    .transform((v, ctx) => {
      const ms = parseDuration(v);
      if (ms === null) {
        ctx.addIssue({ code: "custom", message: `not a duration (use e.g. 500ms, 15s, 5m): ${JSON.stringify(v)}` });
        return z.NEVER;
      }
      if (ms < min) {
        ctx.addIssue({ code: "custom", message: `must be at least ${min} ms` });
        return z.NEVER;
      }
      return ms;
    });

const int = (fallback: number, min: number, max: number) =>
  z.coerce.number().int().min(min).max(max).default(fallback);

const list = (text: string | undefined) =>
  (text ?? "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);

/** Largest request body the edge takes, and largest result an upstream may answer with. */
export const DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024;

const blankIsUnset = (v: unknown) => (v === "" ? undefined : v);
const opt = <T extends z.ZodType>(t: T) => z.preprocess(blankIsUnset, t.optional());

export const EnvSchema = z.object({
  NATS_URL: opt(z.string()),
  NATS_USER: opt(z.string()),
  NATS_PASSWORD: opt(z.string()),
  NATS_CREDS: opt(z.string()),
  NATS_SERVER_BIN: opt(z.string()),
  MCPGW_DATA_DIR: z.preprocess(blankIsUnset, z.string().default("./data")),
  MCPGW_NATS_HOST: z.preprocess(blankIsUnset, z.string().default("127.0.0.1")),
  MCPGW_NATS_PORT: z.preprocess(blankIsUnset, int(4222, 1, 65535)),
  MCPGW_SECRET_KEY: opt(z.string().regex(/^[0-9a-fA-F]{64}$/, "must be 64 hex characters (32 bytes)")),
  MCPGW_WORKER_ID: opt(z.string().refine(isSubjectToken, "must be 1-128 of A-Z a-z 0-9 _ -")),
  MCPGW_SUBJECT_PREFIX: z.preprocess(
    blankIsUnset,
    z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, "must be 1-32 of a-z 0-9 -, starting with a letter").default(DEFAULT_PREFIX),
  ),
  MCPGW_EDGE_HOST: z.preprocess(blankIsUnset, z.string().default("127.0.0.1")),
  MCPGW_EDGE_PORT: z.preprocess(blankIsUnset, int(4444, 0, 65535)),
  MCPGW_EDGE_TOKENS: opt(z.string()),
  MCPGW_CONSOLE_TOKENS: opt(z.string()),
  MCPGW_EDGE_AUTH: z.preprocess(blankIsUnset, z.enum(["token", "none"]).default("token")),
  MCPGW_TOOL_SEPARATOR: z.preprocess(blankIsUnset, z.string().regex(/^[A-Za-z0-9_.-]{1,4}$/).default("__")),
  MCPGW_EDGE_ALLOWED_HOSTS: opt(z.string()),
  MCPGW_EDGE_ALLOWED_ORIGINS: opt(z.string()),
  MCPGW_EDGE_MAX_BODY: z.preprocess(blankIsUnset, int(DEFAULT_MAX_BODY_BYTES, 1024, 1024 * 1024 * 1024)),
  MCPGW_EDGE_SESSION_IDLE_TTL: z.preprocess(blankIsUnset, duration("30m", 1000)),
  MCPGW_EDGE_PAGE_SIZE: z.preprocess(blankIsUnset, int(500, 1, 100_000)),
  MCPGW_LIST_TTL: z.preprocess(blankIsUnset, duration("60s", 0)),
  MCPGW_HEALTH_INTERVAL: z.preprocess(blankIsUnset, duration("60s", 100)),
  MCPGW_DISCOVERY_INTERVAL: z.preprocess(blankIsUnset, duration("300s", 100)),
  MCPGW_CLASSIFICATION_INTERVAL: z.preprocess(blankIsUnset, duration("60s", 100)),
  MCPGW_LEADER_TTL: z.preprocess(blankIsUnset, duration("15s", 300)),
  MCPGW_IDLE_VALIDATION: z.preprocess(blankIsUnset, duration("60s")),
  MCPGW_PROBE_TIMEOUT: z.preprocess(blankIsUnset, duration("5s", 10)),
  MCPGW_SESSION_IDLE_TTL: z.preprocess(blankIsUnset, duration("30m")),
  MCPGW_SHUTDOWN_TIMEOUT: z.preprocess(blankIsUnset, duration("5s", 10)),
  MCPGW_CALL_TIMEOUT: z.preprocess(blankIsUnset, duration("60s", 10)),
  MCPGW_CONNECT_TIMEOUT: z.preprocess(blankIsUnset, duration("15s", 10)),
  MCPGW_USAGE_REPORT_INTERVAL: z.preprocess(blankIsUnset, duration("5s", 100)),
  MCPGW_MAX_CONCURRENT_POLLS: z.preprocess(blankIsUnset, int(16, 1, 10_000)),
  MCPGW_LIST_CHANGED_DEBOUNCE: z.preprocess(blankIsUnset, duration("2s", 0)),
  MCPGW_POLL_BACKOFF_MAX: z.preprocess(blankIsUnset, duration("10m", 100)),
  MCPGW_POLL_TIMEOUT: z.preprocess(blankIsUnset, duration("30s", 100)),
  MCPGW_POLL_OWNER_TTL: z.preprocess(blankIsUnset, duration("9s", 300)),
  MCPGW_POLL_MAX_STDIO: z.preprocess(blankIsUnset, int(32, 0, 10_000)),
  MCPGW_UNHEALTHY_THRESHOLD: z.preprocess(blankIsUnset, int(3, 1, 1000)),
  MCPGW_OUTBOUND_DENY: z.preprocess(
    blankIsUnset,
    z
      .string()
      .default("")
      .transform((v) => list(v))
      .pipe(z.array(z.enum(DENIABLE_CLASSES, `each must be one of ${DENIABLE_CLASSES.join(", ")}`))),
  ),
  MCPGW_JS_REPLICAS: z.preprocess(blankIsUnset, int(1, 1, 5)),
  MCPGW_STREAM_RETENTION: z.preprocess(blankIsUnset, duration("10m", 1000)),
  MCPGW_METRICS_TOKEN: opt(z.string()),
  MCPGW_OTLP_ENDPOINT: opt(z.url({ protocol: /^https?$/ })),
  OTEL_EXPORTER_OTLP_ENDPOINT: opt(z.url({ protocol: /^https?$/ })),
  MCPGW_LOG_LEVEL: z.preprocess(blankIsUnset, z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info")),
});

export type Config = {
  nats: { url?: string; user?: string; password?: string; credsFile?: string };
  natsServerBin?: string;
  dataDir: string;
  embeddedNats: { host: string; port: number };
  secretKey?: string;
  workerId: string;
  prefix: string;
  /** copies of every KV bucket and of the event stream (3 on a 3-node NATS cluster) */
  jsReplicas: number;
  /** how long the stream log keeps client stream events: a client may resume a stream within this */
  streamRetention: number;
  edge: {
    host: string;
    port: number;
    auth: "token" | "none";
    tokens: string[];
    toolSeparator: string;
    /** extra Host header values (host or host:port) accepted besides the bind address and loopback */
    allowedHosts: string[];
    /** Origin header values accepted besides loopback origins */
    allowedOrigins: string[];
    maxBodyBytes: number;
    /** a downstream session unused this long is closed */
    sessionIdleTtl: number;
    pageSize: number;
    /** how long a 2026-07-28 client may reuse a list or discover result (the revision's `ttlMs`) */
    listTtl: number;
  };
  /** admin credentials of the web console (never the client tokens: a console may add a stdio gateway) */
  console: { tokens: string[] };
  intervals: {
    health: number;
    discovery: number;
    classification: number;
    leaderTtl: number;
    idleValidation: number;
    /** each step of the idle probe (ping, then the lists) */
    probeTimeout: number;
    sessionIdleTtl: number;
    shutdownTimeout: number;
    callTimeout: number;
    /** a new upstream session's connect and MCP handshake (initialize), on its own bound: an upstream that never answers fails the session's first call this soon, not at the call timeout */
    connectTimeout: number;
    usageReport: number;
  };
  maxConcurrentPolls: number;
  unhealthyThreshold: number;
  poller: {
    /** a burst of upstream list_changed notices becomes one discovery after this long */
    listChangedDebounce: number;
    /** cap of an unhealthy gateway's health-check backoff */
    backoffMax: number;
    /** one health check or discovery, connect included */
    timeout: number;
    /** a worker whose heartbeat has not changed for this long is dead; its gateways move */
    ownerTtl: number;
    /** stdio children kept open between polls; beyond this, stdio gateways connect per poll */
    maxStdio: number;
  };
  /** what upstream connections may reach beyond the always-denied addresses */
  outbound: OutboundPolicy;
  /** bearer tokens that may read `/metrics`; none: loopback peers only */
  metricsTokens: string[];
  /** OTLP/HTTP base URL spans are exported to (`/v1/traces` is appended); unset: no export */
  otlpEndpoint?: string;
  logLevel: string;
};

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Reads the configuration from environment variables; a bad value throws naming the variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const r = EnvSchema.safeParse(env);
  if (!r.success) {
    const lines = r.error.issues.map((i) => `${String(i.path[0] ?? "(environment)")}: ${i.message}`);
    throw new ConfigError(`invalid configuration: ${lines.join("; ")}`);
  }
  const e = r.data;
  if (e.MCPGW_DISCOVERY_INTERVAL < 10_000 && env.MCPGW_ALLOW_SHORT_INTERVALS !== "1") {
    throw new ConfigError("invalid configuration: MCPGW_DISCOVERY_INTERVAL: must be at least 10s");
  }
  const tokens = list(e.MCPGW_EDGE_TOKENS);
  if (tokens.some((t) => t.length < 16)) throw new ConfigError("invalid configuration: MCPGW_EDGE_TOKENS: each token must be at least 16 characters");
  const consoleTokens = list(e.MCPGW_CONSOLE_TOKENS);
  if (consoleTokens.some((t) => t.length < 16)) throw new ConfigError("invalid configuration: MCPGW_CONSOLE_TOKENS: each token must be at least 16 characters");
  if (consoleTokens.some((t) => tokens.includes(t))) throw new ConfigError("invalid configuration: MCPGW_CONSOLE_TOKENS: a console token must not also be a client token");
  const metricsTokens = list(e.MCPGW_METRICS_TOKEN);
  if (metricsTokens.some((t) => t.length < 16)) throw new ConfigError("invalid configuration: MCPGW_METRICS_TOKEN: each token must be at least 16 characters");
  return {
    nats: { url: e.NATS_URL, user: e.NATS_USER, password: e.NATS_PASSWORD, credsFile: e.NATS_CREDS },
    natsServerBin: e.NATS_SERVER_BIN,
    dataDir: e.MCPGW_DATA_DIR,
    embeddedNats: { host: e.MCPGW_NATS_HOST, port: e.MCPGW_NATS_PORT },
    secretKey: e.MCPGW_SECRET_KEY,
    workerId: e.MCPGW_WORKER_ID ?? `w-${randomBytes(4).toString("hex")}`,
    prefix: e.MCPGW_SUBJECT_PREFIX,
    jsReplicas: e.MCPGW_JS_REPLICAS,
    streamRetention: e.MCPGW_STREAM_RETENTION,
    edge: {
      host: e.MCPGW_EDGE_HOST,
      port: e.MCPGW_EDGE_PORT,
      auth: e.MCPGW_EDGE_AUTH,
      tokens,
      toolSeparator: e.MCPGW_TOOL_SEPARATOR,
      allowedHosts: list(e.MCPGW_EDGE_ALLOWED_HOSTS),
      allowedOrigins: list(e.MCPGW_EDGE_ALLOWED_ORIGINS),
      maxBodyBytes: e.MCPGW_EDGE_MAX_BODY,
      sessionIdleTtl: e.MCPGW_EDGE_SESSION_IDLE_TTL,
      pageSize: e.MCPGW_EDGE_PAGE_SIZE,
      listTtl: e.MCPGW_LIST_TTL,
    },
    console: { tokens: consoleTokens },
    intervals: {
      health: e.MCPGW_HEALTH_INTERVAL,
      discovery: e.MCPGW_DISCOVERY_INTERVAL,
      classification: e.MCPGW_CLASSIFICATION_INTERVAL,
      leaderTtl: e.MCPGW_LEADER_TTL,
      idleValidation: e.MCPGW_IDLE_VALIDATION,
      probeTimeout: e.MCPGW_PROBE_TIMEOUT,
      sessionIdleTtl: e.MCPGW_SESSION_IDLE_TTL,
      shutdownTimeout: e.MCPGW_SHUTDOWN_TIMEOUT,
      callTimeout: e.MCPGW_CALL_TIMEOUT,
      connectTimeout: e.MCPGW_CONNECT_TIMEOUT,
      usageReport: e.MCPGW_USAGE_REPORT_INTERVAL,
    },
    maxConcurrentPolls: e.MCPGW_MAX_CONCURRENT_POLLS,
    unhealthyThreshold: e.MCPGW_UNHEALTHY_THRESHOLD,
    poller: {
      listChangedDebounce: e.MCPGW_LIST_CHANGED_DEBOUNCE,
      backoffMax: e.MCPGW_POLL_BACKOFF_MAX,
      timeout: e.MCPGW_POLL_TIMEOUT,
      ownerTtl: e.MCPGW_POLL_OWNER_TTL,
      maxStdio: e.MCPGW_POLL_MAX_STDIO,
    },
    outbound: { deny: [...new Set(e.MCPGW_OUTBOUND_DENY)] },
    metricsTokens,
    otlpEndpoint: e.MCPGW_OTLP_ENDPOINT ?? e.OTEL_EXPORTER_OTLP_ENDPOINT,
    logLevel: e.MCPGW_LOG_LEVEL,
  };
}

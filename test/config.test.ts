import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError, loadConfig, parseDuration } from "../runtime/config.ts";

describe("configuration", () => {
  it("parses durations in ms or with a unit", () => {
    assert.equal(parseDuration("1500"), 1500);
    assert.equal(parseDuration("500ms"), 500);
    assert.equal(parseDuration("15s"), 15_000);
    assert.equal(parseDuration("5m"), 300_000);
    assert.equal(parseDuration("1h"), 3_600_000);
    assert.equal(parseDuration("1.5s"), 1500);
    assert.equal(parseDuration("soon"), null);
    assert.equal(parseDuration("-1s"), null);
  });

  it("has the documented defaults", () => {
    const c = loadConfig({});
    assert.equal(c.prefix, "mcpgw");
    assert.equal(c.dataDir, "./data");
    assert.deepEqual([c.edge.host, c.edge.port, c.edge.auth, c.edge.toolSeparator], ["127.0.0.1", 4444, "token", "__"]);
    assert.deepEqual(c.intervals, {
      ...c.intervals,
      health: 60_000,
      discovery: 300_000,
      classification: 60_000,
      leaderTtl: 15_000,
      idleValidation: 60_000,
      probeTimeout: 5_000,
      sessionIdleTtl: 1_800_000,
      shutdownTimeout: 5_000,
      callTimeout: 60_000,
      connectTimeout: 15_000,
    });
    assert.equal(c.edge.listTtl, 60_000);
    assert.equal(loadConfig({ MCPGW_LIST_TTL: "5m" }).edge.listTtl, 300_000);
    assert.equal(c.maxConcurrentPolls, 16);
    assert.equal(c.unhealthyThreshold, 3);
    assert.match(c.workerId, /^w-[0-9a-f]{8}$/);
    assert.equal(c.nats.url, undefined);
    assert.deepEqual(c.outbound, { deny: [] });
  });

  it("reads the outbound deny list", () => {
    assert.deepEqual(loadConfig({ MCPGW_OUTBOUND_DENY: " loopback, private ,loopback" }).outbound, { deny: ["loopback", "private"] });
  });

  it("refuses a bad value naming the variable", () => {
    const bad: Array<[Record<string, string>, RegExp]> = [
      [{ MCPGW_LEADER_TTL: "soon" }, /MCPGW_LEADER_TTL: not a duration/],
      [{ MCPGW_EDGE_PORT: "70000" }, /MCPGW_EDGE_PORT/],
      [{ MCPGW_SECRET_KEY: "abc" }, /MCPGW_SECRET_KEY: must be 64 hex/],
      [{ MCPGW_SUBJECT_PREFIX: "my.prefix" }, /MCPGW_SUBJECT_PREFIX/],
      [{ MCPGW_WORKER_ID: "a b" }, /MCPGW_WORKER_ID/],
      [{ MCPGW_EDGE_AUTH: "maybe" }, /MCPGW_EDGE_AUTH/],
      [{ MCPGW_DISCOVERY_INTERVAL: "5s" }, /MCPGW_DISCOVERY_INTERVAL: must be at least 10s/],
      [{ MCPGW_MAX_CONCURRENT_POLLS: "0" }, /MCPGW_MAX_CONCURRENT_POLLS/],
      [{ MCPGW_LOG_LEVEL: "loud" }, /MCPGW_LOG_LEVEL/],
      [{ MCPGW_LIST_TTL: "a while" }, /MCPGW_LIST_TTL: not a duration/],
      [{ MCPGW_EDGE_TOKENS: "short" }, /MCPGW_EDGE_TOKENS/],
      [{ MCPGW_OUTBOUND_DENY: "loopback,metadata" }, /MCPGW_OUTBOUND_DENY: each must be one of loopback, private/],
      [{ MCPGW_METRICS_TOKEN: "short" }, /MCPGW_METRICS_TOKEN: each token must be at least 16/],
      [{ MCPGW_OTLP_ENDPOINT: "collector:4318" }, /MCPGW_OTLP_ENDPOINT/],
      [{ OTEL_EXPORTER_OTLP_ENDPOINT: "file:///tmp/spans" }, /OTEL_EXPORTER_OTLP_ENDPOINT/],
    ];
    for (const [env, message] of bad) {
      assert.throws(() => loadConfig(env), (err: unknown) => err instanceof ConfigError && message.test(err.message), JSON.stringify(env));
    }
  });

  it("metrics are open to loopback and spans stay in the process unless configured", () => {
    const c = loadConfig({});
    assert.deepEqual(c.metricsTokens, []);
    assert.equal(c.otlpEndpoint, undefined);
    assert.deepEqual(loadConfig({ MCPGW_METRICS_TOKEN: "a-metrics-token-123, another-token-4567" }).metricsTokens, ["a-metrics-token-123", "another-token-4567"]);
    assert.equal(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel:4318" }).otlpEndpoint, "http://otel:4318");
    assert.equal(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel:4318", MCPGW_OTLP_ENDPOINT: "https://mine:4318" }).otlpEndpoint, "https://mine:4318");
  });

  it("treats an empty variable as unset", () => {
    assert.equal(loadConfig({ NATS_URL: "", MCPGW_EDGE_PORT: "" }).edge.port, 4444);
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MASK, type GatewayRecord } from "../protocol/gateway.ts";
import { gatewayScrubber } from "../runtime/secretScrubber.ts";

/** "sealed" values are the clear ones prefixed: enough to see that the scrubber opens them */
const open = (sealed: string) => sealed.replace(/^sealed:/, "");
const record = (auth: GatewayRecord["auth"], extra: Partial<GatewayRecord> = {}) =>
  ({
    id: "0123456789abcdef",
    name: "scrub",
    transport: "streamable-http",
    url: "https://up.example/mcp?tenant=t-1",
    headers: {},
    auth,
    passthroughHeaders: [],
    tags: [],
    description: "",
    enabled: true,
    createdAt: "2026-01-01T00:00:00Z",
    updatedAt: "2026-01-01T00:00:00Z",
    ...extra,
  }) as GatewayRecord;

describe("gatewayScrubber", () => {
  it("masks basic auth as the pair, its base64 form and the password alone", () => {
    const scrub = gatewayScrubber(record({ type: "basic", username: "svc", password: "sealed:pw-9" }), open);
    const b64 = Buffer.from("svc:pw-9").toString("base64");
    assert.equal(scrub.text(`Basic ${b64} svc:pw-9 pw-9`), `Basic ${MASK} ${MASK} ${MASK}`);
  });

  it("masks every string and key of a JSON value, in JSON-escaped form too, and keeps its shape", () => {
    const scrub = gatewayScrubber(record({ type: "headers", headers: { "x-k": 'sealed:a"b' } }), open);
    const data = { 'a"b': [1, { deep: 'x a"b y', n: null, ok: true }], text: JSON.stringify({ k: 'a"b' }), url: "https://up.example/mcp?tenant=t-1" };
    assert.deepEqual(scrub.value(data), {
      [MASK]: [1, { deep: `x ${MASK} y`, n: null, ok: true }],
      text: `{"k":"${MASK}"}`,
      url: `https://up.example/mcp?tenant=${MASK}`,
    });
  });

  it("masks stdio environment values and the TLS key", () => {
    const scrub = gatewayScrubber(
      record({ type: "none" }, { transport: "stdio", url: undefined, stdio: { command: "x", args: [], env: { API_KEY: "sealed:env-secret" } }, tls: { key: "sealed:KEYPEM" } } as never),
      open,
    );
    assert.equal(scrub.text("env-secret KEYPEM"), `${MASK} ${MASK}`);
  });
});

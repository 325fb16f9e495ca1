import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { checkStatelessRequest, decodeHeaderValue, discoverResult, eraOf, isRejection } from "../actors/statelessRequest.ts";
import { DiscoverResultSchema, META, UnsupportedVersionDataSchema } from "../protocol/revision2026.ts";
import { PYTHON, pythonSkip } from "./helpers/python.ts";

const envelope = (version: unknown = "2026-07-28") => ({ [META.protocolVersion]: version, [META.clientCapabilities]: {} });
const headersFor = (method: string, version = "2026-07-28", extra: Record<string, string> = {}) => ({ "mcp-protocol-version": version, "mcp-method": method, ...extra });

type Case = { name: string; body: { method: string; params?: unknown }; headers: Record<string, string> };

/** Requests across every rung of the ladder; the expected code is the Python SDK server's (checked below). */
const CASES: Array<Case & { code: number | null }> = [
  { name: "a well-formed tools/list", body: { method: "tools/list", params: { _meta: envelope() } }, headers: headersFor("tools/list"), code: null },
  { name: "a well-formed tools/call", body: { method: "tools/call", params: { name: "echo", arguments: {}, _meta: envelope() } }, headers: headersFor("tools/call", "2026-07-28", { "mcp-name": "echo" }), code: null },
  { name: "a base64-wrapped Mcp-Name", body: { method: "prompts/get", params: { name: "grüße", _meta: envelope() } }, headers: headersFor("prompts/get", "2026-07-28", { "mcp-name": `=?base64?${Buffer.from("grüße").toString("base64")}?=` }), code: null },
  { name: "no _meta", body: { method: "tools/list", params: {} }, headers: headersFor("tools/list"), code: -32602 },
  { name: "no params", body: { method: "tools/list" }, headers: headersFor("tools/list"), code: -32602 },
  { name: "_meta without capabilities", body: { method: "tools/list", params: { _meta: { [META.protocolVersion]: "2026-07-28" } } }, headers: headersFor("tools/list"), code: -32602 },
  { name: "no version header", body: { method: "tools/list", params: { _meta: envelope() } }, headers: { "mcp-method": "tools/list" }, code: -32020 },
  { name: "a header version other than the body's", body: { method: "tools/list", params: { _meta: envelope() } }, headers: headersFor("tools/list", "2027-01-01"), code: -32020 },
  { name: "a method header other than the body's", body: { method: "tools/list", params: { _meta: envelope() } }, headers: headersFor("prompts/list"), code: -32020 },
  { name: "an Mcp-Name other than the tool's", body: { method: "tools/call", params: { name: "echo", _meta: envelope() } }, headers: headersFor("tools/call", "2026-07-28", { "mcp-name": "rm" }), code: -32020 },
  { name: "no Mcp-Name on tools/call", body: { method: "tools/call", params: { name: "echo", _meta: envelope() } }, headers: headersFor("tools/call"), code: -32020 },
  { name: "an unknown version, agreeing", body: { method: "tools/list", params: { _meta: envelope("2027-01-01") } }, headers: headersFor("tools/list", "2027-01-01"), code: -32022 },
  { name: "a session-era version in the envelope", body: { method: "tools/list", params: { _meta: envelope("2025-11-25") } }, headers: headersFor("tools/list", "2025-11-25"), code: -32022 },
];

describe("stateless requests: era, the envelope ladder, server/discover", () => {
  it("tells the eras apart as the Python SDK's server routes them (and a headerless envelope is told of its header)", () => {
    const call = { method: "tools/list", params: { _meta: envelope() } };
    assert.equal(eraOf({ versionHeader: "2026-07-28", sessionId: undefined, body: call }), "stateless");
    assert.equal(eraOf({ versionHeader: "2099-01-01", sessionId: undefined, body: call }), "stateless", "an unknown version is told which are served");
    assert.equal(eraOf({ versionHeader: "2025-11-25", sessionId: "s", body: call }), "session");
    assert.equal(eraOf({ versionHeader: "2025-06-18", sessionId: undefined, body: { method: "tools/list" } }), "session");
    assert.equal(eraOf({ versionHeader: undefined, sessionId: undefined, body: { method: "initialize", params: {} } }), "session");
    assert.equal(eraOf({ versionHeader: undefined, sessionId: "s", body: call }), "session");
    assert.equal(eraOf({ versionHeader: undefined, sessionId: undefined, body: call }), "stateless");
    assert.equal(eraOf({ versionHeader: undefined, sessionId: undefined, body: { method: "tools/list", params: {} } }), "session");
    assert.equal(eraOf({ versionHeader: undefined, sessionId: undefined, body: [call] }), "session", "a batch is no stateless request");
  });

  for (const c of CASES) {
    it(`${c.code === null ? "accepts" : `refuses (${c.code})`} ${c.name}`, () => {
      const r = checkStatelessRequest(c.body, c.headers);
      if (c.code === null) {
        assert.ok(!isRejection(r), JSON.stringify(r));
        assert.equal(r.version, "2026-07-28");
      } else {
        assert.ok(isRejection(r), JSON.stringify(r));
        assert.equal(r.code, c.code, r.message);
        assert.equal(r.status, 400);
      }
    });
  }

  it("names the versions served and the one asked in the unsupported-version error", () => {
    const r = checkStatelessRequest({ method: "tools/list", params: { _meta: envelope("2027-01-01") } }, headersFor("tools/list", "2027-01-01"));
    assert.ok(isRejection(r));
    assert.deepEqual(UnsupportedVersionDataSchema.parse(r.data), { supported: ["2026-07-28"], requested: "2027-01-01" });
  });

  it("decodes only canonical base64 header values", () => {
    assert.equal(decodeHeaderValue("plain"), "plain");
    assert.equal(decodeHeaderValue(`=?base64?${Buffer.from("ü").toString("base64")}?=`), "ü");
    assert.equal(decodeHeaderValue("=?base64?w7z?="), null, "missing padding is not the canonical form");
    assert.equal(decodeHeaderValue(undefined), undefined);
  });

  it("answers server/discover with the versions served, the endpoint's capabilities less tasks, and its hints", () => {
    const r = discoverResult({ capabilities: { tools: { listChanged: true }, tasks: { cancel: {} } }, serverInfo: { name: "mcpgw", version: "0.1.0" }, ttlMs: 60_000 });
    assert.ok(DiscoverResultSchema.safeParse(r).success);
    assert.deepEqual(r.supportedVersions, ["2026-07-28"]);
    assert.deepEqual(r.capabilities, { tools: { listChanged: true } });
    assert.equal(r.resultType, "complete");
    assert.equal(r.ttlMs, 60_000);
    assert.deepEqual(r._meta, { [META.serverInfo]: { name: "mcpgw", version: "0.1.0" } });
  });

  it("agrees with the Python SDK server's own ladder on every case", { skip: pythonSkip() }, () => {
    const script = [
      "import json, sys",
      "from mcp.shared.inbound import classify_inbound_request, InboundLadderRejection",
      "out = []",
      "for c in json.load(sys.stdin):",
      "    v = classify_inbound_request(c['body'], headers=c['headers'])",
      "    out.append(v.code if isinstance(v, InboundLadderRejection) else None)",
      "print(json.dumps(out))",
    ].join("\n");
    const py = spawnSync(PYTHON, ["-c", script], { input: JSON.stringify(CASES), encoding: "utf8", timeout: 120_000 });
    assert.equal(py.status, 0, py.stderr);
    const theirs = JSON.parse(py.stdout) as Array<number | null>;
    const ours = CASES.map((c) => {
      const r = checkStatelessRequest(c.body, c.headers);
      return isRejection(r) ? r.code : null;
    });
    assert.deepEqual(ours, theirs, CASES.map((c, i) => `${c.name}: ours ${ours[i]}, python ${theirs[i]}`).join("\n"));
    assert.deepEqual(theirs, CASES.map((c) => c.code), "the expected codes are the reference's");
  });
});

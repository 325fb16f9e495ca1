// Pure discovery logic: hashing, diffing, reconcile, tiers, stamps, slots; and how an upstream is listed.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { CLASSIFICATION_CLOCK_SKEW_MS } from "../protocol/classification.ts";
import { describe, it } from "node:test";
import { MAX_PAGES, listCatalog } from "../runtime/pollerEffects.ts";
import { gatewayScrubber, scrubbedError } from "../runtime/secretScrubber.ts";
import { GatewayRecordSchema, MASK } from "../protocol/gateway.ts";
import {
  canonicalJson,
  catalogHash,
  delayToSlot,
  diffCatalogs,
  lastPollAt,
  phaseOf,
  reconcile,
  slotAlreadyPolled,
  tierOf,
  type CatalogLists,
} from "../actors/discovery.ts";

const GID = "0123456789abcdef";
const lists = (over: Partial<CatalogLists> = {}): CatalogLists => ({
  tools: [
    { name: "echo", description: "echoes", inputSchema: { type: "object", properties: { text: { type: "string" } } } },
    { name: "sleep", description: "sleeps" },
  ],
  prompts: [{ name: "greet" }],
  resources: [{ uri: "fixture://info", name: "info" }],
  resourceTemplates: [{ uriTemplate: "fixture://items/{id}", name: "item" }],
  ...over,
});

describe("catalog hash", () => {
  it("is stable under key order and item order, and changes with content", () => {
    const a = lists();
    const reordered = lists({ tools: [{ description: "sleeps", name: "sleep" }, a.tools[0]!] });
    assert.equal(catalogHash(a), catalogHash(reordered));
    assert.notEqual(catalogHash(a), catalogHash(lists({ tools: [a.tools[0]!, { name: "sleep", description: "naps" }] })));
    assert.notEqual(catalogHash(a), catalogHash(lists({ prompts: [] })));
    assert.match(catalogHash(a), /^[0-9a-f]{64}$/);
  });

  it("canonical JSON sorts keys at every depth", () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } }), '{"a":{"c":null,"d":[2,{"e":0,"f":1}]},"b":1}');
  });
});

describe("catalog diff and reconcile", () => {
  it("names added, updated and removed items per list", () => {
    const before = lists();
    const after = lists({
      tools: [{ name: "echo", description: "echoes louder" }, { name: "fresh" }],
      resources: [],
    });
    const d = diffCatalogs(before, after);
    assert.deepEqual(d.added.tools, ["fresh"]);
    assert.deepEqual(d.updated.tools, ["echo"]);
    assert.deepEqual(d.removed.tools, ["sleep"]);
    assert.deepEqual(d.removed.resources, ["fixture://info"]);
    assert.deepEqual(d.added.prompts, []);
    assert.deepEqual(d.updated.resourceTemplates, []);
  });

  it("everything is added against no catalog", () => {
    const d = diffCatalogs(null, lists());
    assert.deepEqual(d.added.tools, ["echo", "sleep"]);
    assert.deepEqual(d.added.resourceTemplates, ["fixture://items/{id}"]);
  });

  it("reconcile reports no change for the same content and a full catalog otherwise", () => {
    const first = reconcile(GID, null, lists(), "2026-01-01T00:00:00.000Z");
    assert.equal(first.changed, true);
    assert.equal(first.catalog.hash, catalogHash(lists()));
    const again = reconcile(GID, first.catalog, lists(), "2026-01-02T00:00:00.000Z");
    assert.equal(again.changed, false);
    assert.equal(again.catalog.discoveredAt, "2026-01-01T00:00:00.000Z");
    const next = reconcile(GID, first.catalog, lists({ prompts: [] }), "2026-01-03T00:00:00.000Z");
    assert.equal(next.changed, true);
    assert.deepEqual(next.diff.removed.prompts, ["greet"]);
    assert.equal(next.catalog.discoveredAt, "2026-01-03T00:00:00.000Z");
  });
});

describe("tiers and stamps", () => {
  const now = Date.parse("2026-05-01T12:00:00Z");
  const cls = (validUntil: string, computedAt = "2026-05-01T11:59:00Z") => ({
    hot: [GID],
    cold: ["fedcba9876543210"],
    computedAt,
    validUntil,
    leader: "w1",
    leaseRevision: 3,
    meta: { total: 2, hotCap: 0, hotActual: 1, eligible: 1, belowCapReason: null },
  });

  it("fails open: missing, unparsable and expired classification is unclassified", () => {
    assert.equal(tierOf(cls("2026-05-01T12:05:00Z"), GID, now), "hot");
    assert.equal(tierOf(cls("2026-05-01T12:05:00Z"), "fedcba9876543210", now), "cold");
    assert.equal(tierOf(cls("2026-05-01T12:05:00Z"), "aaaaaaaaaaaaaaaa", now), "unclassified");
    assert.equal(tierOf(cls("2026-05-01T11:00:00Z"), "fedcba9876543210", now), "unclassified");
    assert.equal(tierOf(cls("not a date"), "fedcba9876543210", now), "unclassified");
    assert.equal(tierOf(undefined, GID, now), "unclassified");
    assert.equal(tierOf({ hot: "all" }, GID, now), "unclassified");
  });

  it("a classification computed in the future (leader's clock ahead) is unclassified, within a few seconds' skew it counts", () => {
    const cold = "fedcba9876543210";
    const at = (msFromNow: number) => new Date(now + msFromNow).toISOString();
    assert.equal(tierOf(cls(at(3_600_000), at(3_000_000)), cold, now), "unclassified");
    assert.equal(tierOf(cls(at(3_600_000), at(CLASSIFICATION_CLOCK_SKEW_MS + 1)), cold, now), "unclassified");
    assert.equal(tierOf(cls(at(120_000), at(CLASSIFICATION_CLOCK_SKEW_MS)), cold, now), "cold");
    assert.equal(tierOf(cls(at(120_000), at(1_000)), GID, now), "hot");
    assert.equal(tierOf(cls(at(120_000), "not a date"), cold, now), "unclassified");
  });

  it("a future or malformed stamp counts as absent", () => {
    assert.equal(lastPollAt({ at: "2026-05-01T11:59:00.000Z", nextAt: null, worker: "w" }, now), now - 60_000);
    assert.equal(lastPollAt({ at: "2026-05-01T13:00:00.000Z", nextAt: null, worker: "w" }, now), null);
    assert.equal(lastPollAt({ at: "garbage", nextAt: null, worker: "w" }, now), null);
    assert.equal(lastPollAt("2026-05-01T11:59:00.000Z", now), null);
    assert.equal(lastPollAt(undefined, now), null);
  });

  it("a slot counts as polled only within half a period", () => {
    assert.equal(slotAlreadyPolled(now - 10_000, now, 60_000), true);
    assert.equal(slotAlreadyPolled(now - 50_000, now, 60_000), false);
    assert.equal(slotAlreadyPolled(null, now, 60_000), false);
  });

  it("a poll due every third slot counts as done until half a slot before its period", () => {
    assert.equal(slotAlreadyPolled(now - 120_000, now, 180_000, 60_000), true, "two slots later: not due");
    assert.equal(slotAlreadyPolled(now - 170_000, now, 180_000, 60_000), false, "third slot: due");
  });
});

describe("slots", () => {
  it("puts each gateway at a stable phase of a shared grid", () => {
    assert.equal(phaseOf(GID), phaseOf(GID));
    const p = phaseOf(GID);
    const period = 60_000;
    const d = delayToSlot(now(), period, p);
    assert.ok(d >= 0 && d < period);
    assert.equal((now() + d) % period, Math.floor(p * period));
    assert.ok(delayToSlot(now(), period, p, period / 2) >= period / 2);
  });

  it("phases of many gateways are spread evenly", () => {
    const buckets = new Array(10).fill(0);
    for (let i = 0; i < 10_000; i++) buckets[Math.floor(phaseOf(i.toString(16).padStart(16, "0")) * 10)]++;
    for (const b of buckets) assert.ok(b > 800 && b < 1200, `bucket ${b} of a mean 1000`);
  });

  it("1,000 gateways' health checks: no second of the interval carries more than twice the mean, whatever the jitter", () => {
    // gateway ids as the registry makes them (16 hex digits), fixed here so the test is deterministic
    const gids = Array.from({ length: 1_000 }, (_, i) => createHash("sha256").update(`gateway ${i}`).digest("hex").slice(0, 16));
    const period = 10_000;
    const jitterMax = period / 20; // the poller adds up to 5% of the period to each slot (at most 2 s)
    const seconds = period / 1000;
    const mean = gids.length / seconds;
    // when each gateway falls due in the interval that starts now, before jitter
    const due = gids.map((gid) => delayToSlot(now(), period, phaseOf(gid)));
    assert.ok(due.every((d) => d >= 0 && d < period));
    for (let s = 0; s < seconds; s++) {
      const start = s * 1000;
      // due in this second, and due in the half-second before it (jitter may push those in)
      const inSecond = due.filter((d) => d >= start && d < start + 1000).length;
      const reachable = due.filter((d) => ((start - d + period) % period < jitterMax) || (d >= start && d < start + 1000)).length;
      assert.ok(inSecond <= 2 * mean, `second ${s}: ${inSecond} gateways due, mean ${mean}`);
      assert.ok(reachable <= 2 * mean, `second ${s}: up to ${reachable} gateways due with jitter, mean ${mean}`);
    }
  });
});

function now(): number {
  return 1_700_000_123_456;
}

describe("listing an upstream", () => {
  it("gives up on an upstream that hands out new cursors forever", async () => {
    let pages = 0;
    const endless = {
      getServerCapabilities: () => ({ tools: {} }),
      listTools: async (params: { cursor?: string }) => {
        pages++;
        return { tools: [{ name: `t${pages}`, inputSchema: { type: "object" } }], nextCursor: `${Number(params.cursor ?? 0) + 1}` };
      },
    };
    await assert.rejects(listCatalog(endless as never, 1_000), /more than 1000 pages/);
    assert.equal(pages, MAX_PAGES);
  });
});

describe("poll errors", () => {
  /** a sealed secret whose clear text the fake `open` below returns */
  const sealed = (clear: string) => `enc:v1:k:${Buffer.from(clear).toString("base64url")}:tag`;
  const open = (s: string) => Buffer.from(s.split(":")[3]!, "base64url").toString();
  const record = (url: string, auth: Record<string, unknown>) =>
    GatewayRecordSchema.parse({
      id: GID,
      name: "scrub",
      transport: "streamable-http",
      url,
      auth,
      tags: [],
      description: "",
      enabled: true,
      createdAt: "2026-01-01T00:00:00Z",
      updatedAt: "2026-01-01T00:00:00Z",
    });

  it("masks secrets however short, and longer ones whole", () => {
    const r = record("https://up.example/mcp", { type: "headers", headers: { "x-k": sealed("k9"), "x-long": sealed("k9-long-secret") } });
    const text = scrubbedError(new Error("refused k9 and k9-long-secret"), gatewayScrubber(r, open)).message;
    assert.equal(text, `refused ${MASK} and ${MASK}`);
  });

  it("masks query values typed into the gateway URL, raw and decoded", () => {
    const r = record("https://up.example/mcp?api_key=a%2Bb%20c&v=xyz", { type: "none" });
    const err = new Error("fetch https://up.example/mcp?api_key=a%2Bb%20c&v=xyz failed; key a+b c, param xyz");
    const text = scrubbedError(err, gatewayScrubber(r, open)).message;
    for (const leaked of ["a%2Bb%20c", "a+b c", "xyz"]) assert.ok(!text.includes(leaked), `${leaked} leaked in ${text}`);
    assert.ok(text.includes("up.example/mcp?api_key="), "the rest of the message stays readable");
  });
});

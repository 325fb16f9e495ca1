import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { evicts, evictionOnGatewayEvent, evictionOnRequest, evictionOnSessionClosed, needsEnabledCheck } from "../actors/upstreamSession/eviction.ts";
import type { GatewayEvent } from "../protocol/gateway.ts";

const gid = "0123456789abcdef";
const other = "fedcba9876543210";
const at = new Date(0).toISOString();
const updated = (changedFields: string[], connectChanged: boolean) => ({ type: "updated", gid, at, revision: 2, connectChanged, changedFields }) as unknown as GatewayEvent;

describe("upstream session eviction policy", () => {
  it("gateway removed or its connection changed: every session of that gateway, none of another", () => {
    const removed = evictionOnGatewayEvent({ type: "removed", gid, at } as unknown as GatewayEvent)!;
    assert.equal(removed.cause, "gateway_removed");
    assert.ok(evicts(removed, { sid: "a", gid }));
    assert.ok(!evicts(removed, { sid: "a", gid: other }));
    const changed = evictionOnGatewayEvent(updated(["url", "auth"], true))!;
    assert.deepEqual([changed.cause, changed.reason], ["gateway_changed", "gateway connection changed (url, auth)"]);
  });

  it("cosmetic edits keep sessions; an enabled edit closes them only when the gateway is now disabled", () => {
    assert.equal(evictionOnGatewayEvent(updated(["description", "tags"], false)), null);
    const enabledEdit = updated(["enabled"], false);
    assert.ok(needsEnabledCheck(enabledEdit));
    assert.ok(!needsEnabledCheck(updated(["description"], false)));
    assert.equal(evictionOnGatewayEvent(enabledEdit, true), null);
    assert.equal(evictionOnGatewayEvent(enabledEdit, false)?.cause, "gateway_disabled");
    assert.equal(evictionOnGatewayEvent({ type: "added", gid, at } as unknown as GatewayEvent), null);
  });

  it("a client session's end closes its sessions of every gateway, no other's", () => {
    const e = evictionOnSessionClosed({ sid: "a", reason: "idle" });
    assert.deepEqual([e.cause, e.reason], ["client_session_ended", "downstream session closed (idle)"]);
    assert.ok(evicts(e, { sid: "a", gid }) && evicts(e, { sid: "a", gid: other }));
    assert.ok(!evicts(e, { sid: "b", gid }));
  });

  it("operators evict by session, gateway or both; a drain takes everything", () => {
    const both = evictionOnRequest({ sid: "a", gid });
    assert.ok(evicts(both, { sid: "a", gid }));
    assert.ok(!evicts(both, { sid: "a", gid: other }) && !evicts(both, { sid: "b", gid }));
    assert.equal(both.cause, "evicted");
    const drain = evictionOnRequest({ all: true, reason: "drain: new CA" });
    assert.deepEqual([drain.cause, drain.reason], ["drain", "drain: new CA"]);
    assert.ok(evicts(drain, { sid: "x", gid: other }));
  });
});

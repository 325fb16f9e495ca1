// The runtime's guard against deliveries that are not requests (runtime/bus.ts `refusal`), on
// message shapes recorded from nats-server 2.9.10; the attacks themselves are in security.bus.test.ts.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { headers, type Msg } from "@nats-io/transport-node";
import { refusal } from "../runtime/bus.ts";

const msg = (reply: string, hdrs?: Record<string, string>, status?: [number, string]): Msg => {
  const h = hdrs || status ? headers(status?.[0], status?.[1]) : undefined;
  for (const [k, v] of Object.entries(hdrs ?? {})) h!.set(k, v);
  return { subject: "mcpgw.admin.gateway.remove", reply, headers: h, data: new Uint8Array() } as unknown as Msg;
};

describe("refusal", () => {
  it("accepts a request from a core inbox, the runtime's or a user's", () => {
    assert.equal(refusal(msg("_INBOX.abc.1"), "request"), null);
    assert.equal(refusal(msg("_INBOX_admin.abc.1"), "request"), null);
    assert.equal(refusal(msg("_INBOX.abc", { "Nats-Msg-Id": "e1" }), "message"), null, "an event published with a JetStream ack inbox");
    assert.equal(refusal(msg(""), "message"), null, "a plain publish");
  });

  it("refuses JetStream deliveries, statuses, stored copies and replies that are not inboxes", () => {
    assert.equal(refusal(msg("$JS.ACK.KV_mcpgw_gateways.c.1.1.1.1796027818067123485.0"), "request"), "reply_not_inbox");
    assert.equal(refusal(msg("$JS.ACK.KV_mcpgw_gateways.c.1.1.1.1796027818067123485.0"), "message"), "reply_not_inbox");
    assert.equal(refusal(msg("$JS.FC.KV_mcpgw_gateways.c.1"), "message"), "reply_not_inbox");
    assert.equal(refusal(msg("mcpgw.upstream.s.g.close"), "request"), "reply_not_inbox", "a reply subject that would make the runtime publish into itself");
    assert.equal(refusal(msg("_INBOXX.1"), "request"), "reply_not_inbox");
    assert.equal(refusal(msg("", { "Nats-Pending-Messages": "3" }, [408, "Request Timeout"]), "message"), "jetstream_status");
    assert.equal(refusal(msg("", undefined, [100, "Idle Heartbeat"]), "message"), "jetstream_status");
    assert.equal(refusal(msg("", { "Nats-Stream": "KV_mcpgw_gateways", "Nats-Sequence": "1" }), "message"), "stored_copy");
    assert.equal(refusal(msg(""), "request"), "no_reply", "a JetStream API answer sent to a request subject");
  });
});

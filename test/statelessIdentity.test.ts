import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { PartitionSchema, StatelessIdentity, statelessRecord } from "../actors/statelessIdentity.ts";
import { DownstreamSessionSchema, SessionKeySchema, sessionKey } from "../protocol/edge.ts";
import { META } from "../protocol/revision2026.ts";

const KEY = randomBytes(32).toString("hex");

describe("stateless identity: whose upstream sessions a stateless request reaches", () => {
  const id = new StatelessIdentity(KEY);

  it("gives a session key of sessionKey's form, the same for every call of one credential", () => {
    const sid = id.sessionKeyOf("token-a");
    assert.ok(SessionKeySchema.safeParse(sid).success, sid);
    assert.equal(id.sessionKeyOf("token-a"), sid, "one credential's calls reuse its upstream sessions");
    assert.equal(new StatelessIdentity(KEY).sessionKeyOf("token-a"), sid, "every worker (same MCPGW_SECRET_KEY) derives the same key");
  });

  it("never gives two credentials, or two partitions of one, the same key", () => {
    const keys = new Set<string>();
    for (const credential of ["token-a", "token-b", "", "token-a ", "Token-a"]) {
      for (const partition of [undefined, "p1", "p2"]) keys.add(id.sessionKeyOf(credential, partition));
    }
    assert.equal(keys.size, 15);
  });

  it("keys by the capabilities an upstream session declares (sampling, elicitation, roots), in any order, and by nothing else the request declares", () => {
    const none = id.sessionKeyOf("token-a");
    assert.equal(id.sessionKeyOf("token-a", undefined, { experimental: { x: {} }, tasks: {} }), none, "capabilities no upstream request needs do not divide state");
    const both = id.sessionKeyOf("token-a", undefined, { elicitation: { form: {} }, sampling: {} });
    assert.equal(id.sessionKeyOf("token-a", undefined, { sampling: {}, elicitation: { form: {} }, tasks: {} }), both);
    const keys = new Set([none, both, id.sessionKeyOf("token-a", undefined, { elicitation: { form: {} } }), id.sessionKeyOf("token-a", undefined, { elicitation: { form: {}, url: {} } }), id.sessionKeyOf("token-a", undefined, { roots: {} })]);
    assert.equal(keys.size, 5, "a session declared with other capabilities is another session");
    assert.notEqual(id.sessionKeyOf("token-b", undefined, { sampling: {} }), id.sessionKeyOf("token-a", undefined, { sampling: {} }));
  });

  it("does not collide with the session key of a session id spelled like the stateless input", () => {
    // the derivation is keyed and framed, so no Mcp-Session-Id maps onto a stateless client's key
    assert.notEqual(id.sessionKeyOf("token-a"), sessionKey("token-a"));
    assert.notEqual(id.sessionKeyOf("token-a"), sessionKey(JSON.stringify(["s", "token-a", ""])));
  });

  it("depends on the secret key: without it, no one can tie a key to a credential", () => {
    assert.notEqual(new StatelessIdentity(randomBytes(32).toString("hex")).sessionKeyOf("token-a"), id.sessionKeyOf("token-a"));
  });

  it("refuses a partition that is not a short token (it never reaches a key)", () => {
    for (const bad of ["", "a b", "x".repeat(65), "a/b", "ä"]) {
      assert.equal(PartitionSchema.safeParse(bad).success, false, bad);
      assert.throws(() => id.sessionKeyOf("token-a", bad));
    }
  });

  it("seals request state that only the key it was sealed for opens, unaltered", () => {
    const sid = id.sessionKeyOf("token-a");
    const other = id.sessionKeyOf("token-b");
    const token = id.sealState({ sid, gid: "g1", payload: { call: "n1", ids: ["r1"] } });
    assert.deepEqual(id.openState(sid, token), { sid, gid: "g1", payload: { call: "n1", ids: ["r1"] } });
    assert.equal(id.openState(other, token), null, "another credential cannot use it");
    assert.equal(new StatelessIdentity(randomBytes(32).toString("hex")).openState(sid, token), null, "another secret key did not seal it");
    const [body, tag] = token.split(".") as [string, string];
    const altered = Buffer.from(JSON.stringify([sid, "g2", { call: "n1", ids: ["r1"] }])).toString("base64url");
    assert.equal(id.openState(sid, `${altered}.${tag}`), null, "an altered body fails its tag");
    assert.equal(id.openState(sid, `${body}.`), null);
    assert.equal(id.openState(sid, "garbage"), null);
    assert.equal(id.openState(sid, `${Buffer.from("not json").toString("base64url")}.${tag}`), null);
  });

  it("builds a client session record from the request envelope, valid as a stored one, with no views", () => {
    const rec = statelessRecord({
      sid: id.sessionKeyOf("token-a"),
      owner: "a".repeat(64),
      scope: null,
      envelope: { [META.protocolVersion]: "2026-07-28", [META.clientCapabilities]: { elicitation: {} }, [META.clientInfo]: { name: "py", version: "2.3.0" }, [META.logLevel]: "info" },
      now: new Date(0),
    });
    assert.ok(DownstreamSessionSchema.safeParse(rec).success);
    assert.equal(rec.protocolVersion, "2026-07-28");
    assert.deepEqual(rec.capabilities, { elicitation: {} });
    assert.equal(rec.logLevel, "info");
    assert.equal(rec.views, undefined);
  });
});

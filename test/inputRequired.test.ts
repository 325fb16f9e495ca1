import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { answersOf, inputRequiredResult, triageServerRequests } from "../actors/inputRequired.ts";
import { StatelessIdentity } from "../actors/statelessIdentity.ts";
import { InputRequiredResultSchema, PendingCallStateSchema, type PendingCallState } from "../protocol/revision2026.ts";
import { serverRequestId, UpstreamAnswerRequestSchema } from "../protocol/upstream.ts";

const GID = "0123456789abcdef";
const elicit = { jsonrpc: "2.0" as const, id: serverRequestId(GID, "n1", 1), method: "elicitation/create", params: { message: "name?", requestedSchema: { type: "object", properties: {} } } };
const sample = { jsonrpc: "2.0" as const, id: serverRequestId(GID, "n1", 2), method: "sampling/createMessage", params: { messages: [], maxTokens: 10 } };
const roots = { jsonrpc: "2.0" as const, id: serverRequestId(GID, "n1", 3), method: "roots/list" };

describe("server→client requests for a stateless client: input_required", () => {
  it("asks the client only what its request declared the capability for; refuses the rest at once", () => {
    const { ask, refuse } = triageServerRequests([elicit, sample, roots], { elicitation: {} });
    assert.deepEqual(ask.map((r) => r.method), ["elicitation/create"]);
    assert.deepEqual(refuse.map((r) => r.id), [sample.id, roots.id]);
    for (const r of refuse) {
      assert.ok(UpstreamAnswerRequestSchema.safeParse(r).success);
      assert.equal("error" in r && r.error.code, -32601);
    }
  });

  it("builds the revision's input-required result around mcpgw's sealed state, which round-trips", () => {
    const identity = new StatelessIdentity(randomBytes(32).toString("hex"));
    const sid = identity.sessionKeyOf("token-a");
    const state: PendingCallState = { call: "r7", stream: "s1", after: "n1-4", ids: [elicit.id] };
    const token = identity.sealState({ sid, gid: GID, payload: state });
    const result = inputRequiredResult([elicit], token);
    assert.ok(InputRequiredResultSchema.safeParse(result).success);
    assert.deepEqual(Object.keys(result.inputRequests as object), [elicit.id]);
    const opened = identity.openState(sid, token);
    assert.equal(opened?.gid, GID);
    assert.deepEqual(PendingCallStateSchema.parse(opened?.payload), state);
    assert.equal(identity.openState(identity.sessionKeyOf("token-b"), token), null, "another credential cannot answer it");
  });

  it("turns the repeated call's answers into the actor's answer messages", () => {
    const state: PendingCallState = { call: "r7", stream: "s1", after: "n1-4", ids: [elicit.id, roots.id] };
    const out = answersOf({ [elicit.id]: { action: "accept", content: {} }, [roots.id]: { roots: [] } }, state, GID);
    assert.ok("answers" in out, JSON.stringify(out));
    assert.deepEqual(out.answers.map((a) => a.id), [elicit.id, roots.id]);
    for (const a of out.answers) assert.ok(UpstreamAnswerRequestSchema.safeParse(a).success);
  });

  it("refuses whole any answers that are not exactly those asked, as results, of this gateway", () => {
    const state: PendingCallState = { call: "r7", stream: "s1", after: "n1-4", ids: [elicit.id] };
    const refused = [
      answersOf(undefined, state, GID),
      answersOf([], state, GID),
      answersOf({}, state, GID),
      answersOf({ [elicit.id]: {}, [sample.id]: {} }, state, GID),
      answersOf({ [elicit.id]: "yes" }, state, GID),
      answersOf({ [elicit.id]: {} }, state, "fedcba9876543210"),
    ];
    for (const r of refused) assert.ok("code" in r && r.code === -32602, JSON.stringify(r));
  });
});

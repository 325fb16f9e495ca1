// Server→client requests for a stateless (2026-07-28) client, which has no stream to receive
// them on: the revision returns them as the call's result (`input_required`) and the client
// repeats its call with the answers. Here: which relayed requests the client is asked (the
// ones its request declared the capability for), the input-required result, and the answers
// of the repeated call as the `answer` messages of the upstream session actor.
import type { ClientBoundMessage, UpstreamAnswerRequest } from "../protocol/upstream.ts";
import { parseServerRequestId } from "../protocol/upstream.ts";
import { RESULT_TYPE, REVISION_ERROR, type PendingCallState } from "../protocol/revision2026.ts";

/** The client capability each server→client request needs. */
const CAPABILITY_OF: Readonly<Record<string, string>> = { "sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots" };

/**
 * Splits an upstream's requests into those the client is asked (its request declared the
 * capability) and those mcpgw refuses at once for it: the upstream gets "method not found",
 * as from a client without that capability.
 */
export function triageServerRequests(requests: ClientBoundMessage[], capabilities: Record<string, unknown>): { ask: ClientBoundMessage[]; refuse: UpstreamAnswerRequest[] } {
  const ask: ClientBoundMessage[] = [];
  const refuse: UpstreamAnswerRequest[] = [];
  for (const r of requests) {
    if (r.id === undefined) continue;
    const needs = CAPABILITY_OF[r.method];
    if (needs !== undefined && capabilities[needs] !== undefined) ask.push(r);
    else refuse.push({ id: r.id, error: { code: REVISION_ERROR.methodNotFound, message: `the client did not declare the capability for ${r.method}` } });
  }
  return { ask, refuse };
}

/** The call's answer while the upstream waits: its requests, keyed by their relay ids, and the sealed state of the call. */
export function inputRequiredResult(ask: ClientBoundMessage[], requestState: string): Record<string, unknown> {
  return {
    resultType: RESULT_TYPE.inputRequired,
    inputRequests: Object.fromEntries(ask.map((r) => [r.id!, { method: r.method, ...(r.params ? { params: r.params } : {}) }])),
    requestState,
  };
}

export type AnswersOutcome = { answers: UpstreamAnswerRequest[] } | { code: number; message: string };

/**
 * The answers of a repeated call (`inputResponses`) as `answer` messages for the actor of `gid`:
 * exactly the requests the state names, each a result object. Anything else is refused
 * whole (invalid params) and changes nothing.
 */
export function answersOf(inputResponses: unknown, state: PendingCallState, gid: string): AnswersOutcome {
  const bad = (message: string) => ({ code: REVISION_ERROR.invalidParams, message });
  if (typeof inputResponses !== "object" || inputResponses === null || Array.isArray(inputResponses)) return bad("inputResponses must be an object keyed by the input requests' keys");
  const given = inputResponses as Record<string, unknown>;
  const unknown = Object.keys(given).filter((k) => !state.ids.includes(k));
  if (unknown.length > 0) return bad(`inputResponses names requests this call was not asked: ${unknown.slice(0, 5).join(", ")}`);
  const missing = state.ids.filter((id) => !(id in given));
  if (missing.length > 0) return bad(`inputResponses lacks answers to: ${missing.slice(0, 5).join(", ")}`);
  const answers: UpstreamAnswerRequest[] = [];
  for (const id of state.ids) {
    if (parseServerRequestId(id)?.gid !== gid) return bad(`request ${id} is not one of this gateway's`);
    const result = given[id];
    if (typeof result !== "object" || result === null || Array.isArray(result)) return bad(`the answer to ${id} must be a result object`);
    answers.push({ id, result: result as Record<string, unknown> });
  }
  return { answers };
}

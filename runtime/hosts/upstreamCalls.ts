// The calls of one upstream session actor: each is answered exactly once, by its deadline,
// whatever the upstream does (its result or JSON-RPC error as it came, masked of the gateway's
// secrets; mcpgw's own failures naming the gateway), to its reply target (a NATS inbox, or a
// caller in this process), and on its stream when a client may need it there to resume.
import { SpanKind, type Span } from "@opentelemetry/api";
import type { z } from "zod";
import type { SessionCall } from "../../actors/upstreamSession/machine.ts";
import { fail, ok, type Envelope } from "../../protocol/envelope.ts";
import type { GatewayRecord } from "../../protocol/gateway.ts";
import type { UpstreamCallReply, UpstreamCallRequestSchema } from "../../protocol/upstream.ts";
import { encodeJson } from "../bus.ts";
import { publishReplyNoticingLoss, publishWhole } from "../largeMessages.ts";
import type { Logger } from "../logger.ts";
import { AnswerTooLargeError, UpstreamRequestError, type UpstreamConnection } from "../mcpClient.ts";
import { resultTextOf } from "../resultText.ts";
import { scrubbedError, type Scrubber } from "../secretScrubber.ts";
import { endSpan, traceHeadersOf, traceIdOf, type TraceHeaders } from "../tracing.ts";
import type { WorkerContext } from "../worker.ts";
import type { ClientChannel } from "./clientChannel.ts";

export type CallRequest = z.infer<typeof UpstreamCallRequestSchema>;

/**
 * Where a call's answer goes. `answer` gets it once, with its JSON (size-checked), and says
 * whether the client may still need it on the call's stream to resume: true (publish it now),
 * false (the client has it), or later (a promise: publish it then if true). `afterEvents`: the
 * call published stream events (progress) over NATS, which its answer must not overtake.
 */
export type CallReplyTarget = { answer(env: Envelope<UpstreamCallReply>, json: EncodedAnswer, afterEvents: boolean): boolean | Promise<boolean> };

/** An envelope's JSON as a reply target needs it: its size now (the answer limit), its bytes only for a target that sends them. */
export type EncodedAnswer = { bytes: number; data(): Uint8Array };

const utf8 = new TextEncoder();
/** `{"ok":true,"data":{"result":` … `}}` around a result's text */
const RESULT_ENVELOPE_BYTES = '{"ok":true,"data":{"result":}}'.length;

/**
 * `encodeJson(env)`, with a result the upstream's text when it came as one (runtime/resultText.ts):
 * then nothing is encoded unless the target sends bytes (an answer to this worker's edge is an object).
 */
function encodedAnswer(env: Envelope<UpstreamCallReply>): EncodedAnswer {
  const raw = env.ok && "result" in env.data && Object.keys(env.data).length === 1 ? resultTextOf(env.data.result) : undefined;
  if (raw) return { bytes: raw.bytes + RESULT_ENVELOPE_BYTES, data: () => utf8.encode(`{"ok":true,"data":{"result":${raw.text}}}`) };
  const data = encodeJson(env);
  return { bytes: data.length, data: () => data };
}

/**
 * The requester's NATS inbox (another worker, or a caller on the bus). The actor cannot know
 * what the requester's client got: the requester keeps the answer on the stream itself when it
 * said so (`answerCopy: "caller"`), and the actor then only when the reply reached no one (its
 * connection is gone); otherwise the actor keeps it there.
 */
export function natsReplyTarget(nc: WorkerContext["nc"], reply: string | undefined, answerCopy: "caller" | undefined): CallReplyTarget {
  return {
    answer: (_env, json) => {
      if (!reply) return true;
      // an answer in parts is never kept on the stream (over max_payload), so it needs no watching
      if (answerCopy === "caller" && json.bytes <= (nc.info?.max_payload ?? 0)) return publishReplyNoticingLoss(nc, reply, json.data());
      publishWhole(nc, reply, json.data());
      return true;
    },
  };
}

/** A call's own effects: its reply target, deadline, abort and span. */
type Call = {
  req: CallRequest;
  target: CallReplyTarget;
  abort: AbortController;
  timer: NodeJS.Timeout;
  settled: boolean;
  span: Span;
  /** in the call's log lines (a child logger per call would cost every call one) */
  traceId: string;
  /** progress of this call went out on its stream */
  streamEvents: boolean;
};

let callSeq = 0;

export function upstreamCalls(deps: {
  ctx: WorkerContext;
  log: Logger;
  sid: string;
  gid: string;
  record: GatewayRecord;
  scrub: Scrubber;
  channel: ClientChannel;
  /** the actor's connection, of either era: only its `request` is used */
  connection: () => Pick<UpstreamConnection, "request"> | null;
  onDone: (callId: string, transportFailed: boolean) => void;
}) {
  const { ctx, log, sid, gid, record, scrub, channel } = deps;
  const { config } = ctx;
  const label = `${record.name} (${record.id})`;
  /** an upstream's answer is held to the edge's body limit */
  const answerLimit = config.edge.maxBodyBytes;


  function settle(call: Call, env: Envelope<UpstreamCallReply>): void {
    if (call.settled) return;
    call.settled = true;
    clearTimeout(call.timer);
    const outcome = !env.ok ? env.error.code : "rpcError" in env.data ? "upstream_error" : "ok";
    endSpan(call.span, !env.ok ? env.error.message : "rpcError" in env.data ? env.data.rpcError.message : undefined);
    log.debug({ traceId: call.traceId, sid, gid, method: call.req.method, outcome }, "upstream call answered");
    let json: EncodedAnswer;
    try {
      json = encodedAnswer(env);
    } catch (err) {
      // a value JSON cannot write (nested past the stack): the upstream's, not ours
      env = fail("unavailable", `gateway ${label} answered ${call.req.method} with a value that cannot be forwarded: ${(err as Error).message}`);
      json = encodedAnswer(env);
    }
    if (json.bytes > answerLimit) {
      env = fail("too_large", `gateway ${label} answered ${call.req.method} with ${json.bytes} bytes, over the limit of ${answerLimit} bytes`);
      json = encodedAnswer(env);
    }
    const needed = call.target.answer(env, json, call.streamEvents);
    // then on the call's stream, for a client that lost it and resumes
    const { stream, requestId } = call.req;
    if (!stream) return;
    const answer = env;
    if (needed === true) channel.reply(stream, requestId, answer);
    else if (needed !== false) void needed.then((yes) => yes && channel.reply(stream, requestId, answer));
  }

  /** Sends a started call upstream and answers it, whatever happens; `onDone` when it is over. */
  async function run(c: SessionCall): Promise<void> {
    const call = callOf(c);
    let transportFailed = false;
    try {
      if (call.settled) return;
      if (call.abort.signal.aborted) return settle(call, fail("unavailable", String(call.abort.signal.reason)));
      const current = deps.connection();
      if (!current) return settle(call, fail("unavailable", `gateway ${label}: not connected`));
      const { params, progressToken } = splitProgressToken(call.req.params);
      const stream = channel.streamOf(call.req);
      const upstreamSpan = ctx.tracing.startSpan(`upstream ${call.req.method}`, { kind: SpanKind.CLIENT, parent: call.span, attributes: { "mcp.method.name": call.req.method } });
      try {
        const outcome = await current.request(
          { method: call.req.method, params },
          {
            headers: call.req.headers,
            trace: traceHeadersOf(upstreamSpan),
            signal: call.abort.signal,
            related: call.req,
            onprogress:
              progressToken === undefined
                ? undefined
                : (p) => {
                    call.streamEvents = true;
                    channel.notify(stream, { method: "notifications/progress", params: { ...p, progressToken } });
                  },
          },
        );
        // the code only: the message may echo a secret (the client's copy is scrubbed below)
        endSpan(upstreamSpan, "rpcError" in outcome ? `JSON-RPC error ${outcome.rpcError.code}` : undefined);
        // an upstream's error (JSON-RPC or tool error) goes back as it came, its echo of our secrets masked
        if ("rpcError" in outcome) return settle(call, ok({ rpcError: scrub.value(outcome.rpcError) }));
        settle(call, ok({ result: outcome.result.isError === true ? scrub.value(outcome.result) : outcome.result }));
      } catch (err) {
        endSpan(upstreamSpan, scrubbedError(err, scrub).message);
        // timed out (answered already), cancelled, or cut off by a close: the abort says which
        if (call.abort.signal.aborted) return settle(call, fail("unavailable", String(call.abort.signal.reason)));
        if (err instanceof AnswerTooLargeError) {
          return settle(call, fail("too_large", `gateway ${label} answered ${call.req.method} with more than ${err.bytesRead} bytes, over the limit of ${answerLimit} bytes`));
        }
        const reason = scrubbedError(err, scrub).message;
        // Only a failure of the current connection evicts: one replaced after a failed idle
        // probe fails its leftover calls, and must not take the fresh connection down with it.
        transportFailed = err instanceof UpstreamRequestError && err.transport && deps.connection() === current;
        if (transportFailed) log.warn({ traceId: call.traceId, sid, gid, err: reason }, "upstream transport error; the session will be recreated");
        const what = err instanceof UpstreamRequestError && err.transport ? "upstream transport error" : `invalid answer to ${call.req.method}`;
        settle(call, fail("unavailable", `gateway ${label}: ${what}: ${reason}`));
      }
    } catch (err) {
      // nothing an upstream sends may throw out of a call (an unhandled rejection ends the worker)
      log.error({ traceId: call.traceId, sid, gid, err: scrubbedError(err, scrub).message }, "upstream call failed");
      settle(call, fail("internal", "internal error; see the worker's log"));
    } finally {
      deps.onDone(c.id, transportFailed);
    }
  }

  /** A call as it arrives (`trace`: its caller's span): its deadline runs from now. */
  function receive(target: CallReplyTarget, req: CallRequest, trace: TraceHeaders): SessionCall {
    const timeoutMs = req.timeoutMs ?? config.intervals.callTimeout;
    const span = ctx.tracing.startSpan(`session ${req.method}`, {
      kind: SpanKind.SERVER,
      parent: trace,
      attributes: { "mcp.method.name": req.method, "mcpgw.gateway": record.name },
    });
    const call: Call = { req, target, abort: new AbortController(), settled: false, span, traceId: traceIdOf(span), streamEvents: false, timer: undefined as never };
    // Every call is answered by its deadline, whatever the upstream does, and its upstream
    // request is released then (the SDK forgets it and tells the upstream; its HTTP request ends).
    call.timer = setTimeout(() => {
      settle(call, fail("timeout", `gateway ${label} did not answer ${req.method} within ${timeoutMs} ms`));
      call.abort.abort(`timed out after ${timeoutMs} ms`);
    }, timeoutMs);
    return { id: String(++callSeq), requestId: req.requestId, payload: call };
  }

  const callOf = (c: SessionCall) => c.payload as Call;
  return {
    receive,
    run,
    /** answers a call that never started */
    fail: (c: SessionCall, reason: string) => settle(callOf(c), fail("unavailable", `gateway ${label}: ${reason}`)),
    /** ends a started call (its upstream request is cancelled); it is answered with `reason` */
    abort: (c: SessionCall, reason: string) => callOf(c).abort.abort(`gateway ${label}: ${reason}`),
    /** a call another actor answers: never answered here */
    forget: (c: SessionCall) => {
      callOf(c).settled = true;
      clearTimeout(callOf(c).timer);
    },
  };
}

/**
 * Takes the downstream progress token out of a request's `_meta`: the SDK puts its own
 * there, and progress is re-labelled with the downstream token on the way back.
 */
export function splitProgressToken(params: Record<string, unknown> | undefined): { params: Record<string, unknown> | undefined; progressToken: string | number | undefined } {
  const meta = params?._meta as Record<string, unknown> | undefined;
  const token = meta?.progressToken;
  if (!params || (typeof token !== "string" && typeof token !== "number")) return { params, progressToken: undefined };
  const { progressToken: _dropped, ...restMeta } = meta!;
  const { _meta: _old, ...rest } = params;
  return { params: Object.keys(restMeta).length ? { ...rest, _meta: restMeta } : rest, progressToken: token };
}

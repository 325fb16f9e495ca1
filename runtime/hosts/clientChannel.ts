// What one upstream session actor says to its client: stream events on the client's streams
// (`stream.<sid>.<streamId>`), and the requests its upstream sends the client, each waiting
// for the client's answer on the actor's `answer` op.
import { randomBytes } from "node:crypto";
import type { NatsConnection } from "@nats-io/transport-node";
import { STREAM_GET, type Subjects } from "../../protocol/subjects.ts";
import {
  parseServerRequestId,
  serverRequestId,
  StreamEventSchema,
  type ClientBoundMessage,
  type JsonRpcError,
  type UpstreamAnswerRequest,
} from "../../protocol/upstream.ts";
import { publishStreamEvent } from "../streamLog.ts";
import type { Logger } from "../logger.ts";

/** The client's JSON-RPC error answer (or mcpgw's, when the client never answered), passed to the upstream as it is. */
export class ClientAnswerError extends Error {
  readonly code: number;
  readonly data: unknown;
  constructor(e: JsonRpcError) {
    super(e.message);
    this.name = "ClientAnswerError";
    this.code = e.code;
    this.data = e.data;
  }
}

/** JSON-RPC "request timed out" (the SDK's RequestTimeout) */
const REQUEST_TIMEOUT = -32001;

type Pending = { stream: string; resolve(result: Record<string, unknown>): void; reject(err: ClientAnswerError): void };

export type ClientChannel = ReturnType<typeof clientChannel>;

export function clientChannel(deps: {
  nc: NatsConnection;
  s: Subjects;
  sid: string;
  gid: string;
  log: Logger;
  /** how long the client has to answer a request */
  answerTimeoutMs: number;
  /** a request was relayed (metrics) */
  onRelayed?: (method: string) => void;
}) {
  const { nc, s, sid, gid, log } = deps;
  /** tells this actor's requests and stream events from those of the actors before and after it on the same key */
  const nonce = randomBytes(9).toString("base64url");
  let seq = 0;
  const pending = new Map<string, Pending>();

  /** false when the event cannot travel (over max_payload) */
  function publish(streamId: string, event: Record<string, unknown>): boolean {
    const full = StreamEventSchema.parse({ uid: `${nonce}-${++seq}`, gid, ...event });
    return publishStreamEvent(nc, s, sid, streamId, full);
  }

  function notify(streamId: string, message: { method: string; params?: Record<string, unknown> | undefined }): void {
    try {
      const sent = publish(streamId, { message: { jsonrpc: "2.0", method: message.method, ...(message.params && { params: message.params }) } });
      // a notification is not worth parts (progress and logs are loss-tolerant)
      if (!sent) log.warn({ sid, gid, method: message.method }, "upstream notification over the server's max_payload not relayed");
    } catch (err) {
      log.warn({ sid, gid, method: message.method, err: (err as Error).message }, "upstream notification not relayed");
    }
  }

  return {
    nonce,
    notify,

    /** The call's final answer on its stream, for a client that resumes it; skipped when over max_payload. */
    reply(streamId: string, requestId: string, reply: unknown): void {
      try {
        if (!publish(streamId, { requestId, reply })) log.debug({ sid, gid, requestId }, "call answer over max_payload: not kept on its stream");
      } catch (err) {
        log.warn({ sid, gid, requestId, err: (err as Error).message }, "call answer not published on its stream");
      }
    },

    /**
     * Relays a request of the upstream to the client on `streamId` and waits for the answer,
     * at most `answerTimeoutMs`; `signal` aborts (the upstream cancelled it, the connection
     * closed). Either way the client is told with `notifications/cancelled`.
     */
    ask(streamId: string, req: { method: string; params?: Record<string, unknown> | undefined }, signal: AbortSignal): Promise<Record<string, unknown>> {
      const id = serverRequestId(gid, nonce, ++seq);
      const message: ClientBoundMessage = { jsonrpc: "2.0", id, method: req.method, ...(req.params && { params: req.params }) };
      return new Promise((resolve, reject) => {
        const cancel = (reason: string, error: ClientAnswerError) => {
          if (!pending.delete(id)) return;
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          notify(streamId, { method: "notifications/cancelled", params: { requestId: id, reason } });
          reject(error);
        };
        const onAbort = () => cancel("cancelled by the server", new ClientAnswerError({ code: REQUEST_TIMEOUT, message: "cancelled" }));
        const timer = setTimeout(
          () => cancel("timed out", new ClientAnswerError({ code: REQUEST_TIMEOUT, message: `the client did not answer ${req.method} within ${deps.answerTimeoutMs} ms` })),
          deps.answerTimeoutMs,
        );
        pending.set(id, {
          stream: streamId,
          resolve: (result) => {
            clearTimeout(timer);
            signal.removeEventListener("abort", onAbort);
            resolve(result);
          },
          reject: (err) => {
            clearTimeout(timer);
            signal.removeEventListener("abort", onAbort);
            reject(err);
          },
        });
        if (signal.aborted) return onAbort();
        signal.addEventListener("abort", onAbort, { once: true });
        try {
          if (!publish(streamId, { message })) throw new Error("over the server's max_payload");
          deps.onRelayed?.(req.method);
        } catch (err) {
          pending.delete(id);
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          reject(new ClientAnswerError({ code: -32603, message: `mcpgw could not relay ${req.method} to the client: ${(err as Error).message}` }));
        }
      });
    },

    /**
     * The client's answer: "answered" when it was awaited here; "stale" for an id of this
     * actor no longer awaited (answered, timed out); "foreign" for another actor's id.
     */
    answer(a: UpstreamAnswerRequest): "answered" | "stale" | "foreign" {
      const p = pending.get(a.id);
      if (!p) return parseServerRequestId(a.id)?.nonce === nonce ? "stale" : "foreign";
      pending.delete(a.id);
      if ("result" in a) p.resolve(a.result);
      else p.reject(new ClientAnswerError(a.error));
      return "answered";
    },

    /** the stream a call's related messages go to */
    streamOf: (call: { stream?: string | undefined } | undefined) => call?.stream ?? STREAM_GET,
  };
}

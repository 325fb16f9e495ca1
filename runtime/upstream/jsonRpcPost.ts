// How the gateway sends JSON-RPC to an upstream over HTTP, for every client that does (the
// session transport, a poller's kept session, the 2026-07-28 connection): one undici `dispatch`
// per HTTP exchange on the agent it is given (the worker's keep-alive agent, whose connector
// applies the outbound policy to every address, each redirect hop included), redirects followed
// only within the origin, the response bytes parsed as they arrive (JSON, or SSE), counted
// against a bound. No WHATWG fetch, web streams, or AbortSignal per request: a caller's signal
// is listened to only when it passes one, a deadline is one timer.
import { isWithinOrigin } from "@modelcontextprotocol/sdk/shared/transport.js";
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Dispatcher } from "undici";
import { parseMessage } from "../resultText.ts";

export type HttpResponse = { status: number; headers: Record<string, string | string[] | undefined> };

/** What a response body is read into: raw chunks as they come, then the end or a failure. */
export type BodySink = {
  onData(chunk: Buffer): void;
  onEnd(): void;
  onError(err: Error): void;
};

/** An exchange in flight: `abort` ends its request and response. */
export type InFlight = { abort(reason: Error): void };

export type ExchangeRequest = {
  dispatcher: Dispatcher;
  url: URL;
  method: "GET" | "POST" | "DELETE";
  headers: Record<string, string>;
  body?: string | undefined;
  /** a response that may stay quiet for long (a standalone SSE stream): no body timeout, only an abort ends it */
  quiet?: boolean;
  signal?: AbortSignal | undefined;
  /** ends the exchange, its body included, this many ms after it starts (`DeadlineError`; each redirect hop starts anew); a timer, not a signal */
  deadlineMs?: number | undefined;
  /** holds the exchange while it is in flight (to abort it from outside) */
  track?: { add(e: InFlight): unknown; delete(e: InFlight): unknown };
};

export type ExchangeHandler = {
  /** every response's headers, redirects included */
  onHeaders?(r: HttpResponse): void;
  /** the sink for a (non-redirect) response's body; none: a 2xx body is dropped, another's text kept for `error` */
  body(r: HttpResponse): BodySink | undefined;
};

/** An exchange's deadline passed: its request, or its body, was ended there. */
export class DeadlineError extends Error {
  override name = "DeadlineError";
}

const MAX_REDIRECTS = 5;
const REDIRECTS = [301, 302, 303, 307, 308];
/** how much of an error response's body is kept for its message */
const ERROR_BODY_BYTES = 4_096;

export const header = (res: HttpResponse, name: string): string | undefined => {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
};

export const mediaType = (value: string | undefined) => value?.split(";")[0]!.trim().toLowerCase();

/**
 * One HTTP exchange, redirects within the origin followed (as the SDK's transport does).
 * Resolves when the response starts, for one whose body `handler.body` takes (it is fed as it
 * arrives, until it ends or the exchange is aborted); else when the response is over, with
 * `error` set for one that is not 2xx: its text, or why a redirect was not followed.
 */
export function exchange(req: ExchangeRequest, handler: ExchangeHandler, hops = 0): Promise<HttpResponse & { error?: string }> {
  return new Promise((resolve, reject) => {
    if (req.signal?.aborted) return reject(req.signal.reason);
    new Exchange(req, handler, hops, resolve, reject).start();
  });
}

/**
 * An exchange in flight: undici's dispatch handler, the caller's signal's listener, and what
 * `track` holds to abort it. A class rather than closures: one is made per HTTP request.
 */
class Exchange implements InFlight, Dispatcher.DispatchHandler {
  #controller: Dispatcher.DispatchController | null = null;
  #abortedWith: Error | null = null;
  #res: HttpResponse | null = null;
  #sink: BodySink | undefined;
  #errorText: Buffer[] | null = null;
  #errorBytes = 0;
  #redirect: URL | null = null;
  #settled = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    readonly req: ExchangeRequest,
    readonly handler: ExchangeHandler,
    readonly hops: number,
    readonly resolve: (r: HttpResponse & { error?: string }) => void,
    readonly reject: (err: Error) => void,
  ) {}

  start(): void {
    const { req } = this;
    req.signal?.addEventListener("abort", this, { once: true });
    if (req.deadlineMs !== undefined) this.#timer = setTimeout(() => this.abort(new DeadlineError(`no end within ${req.deadlineMs} ms`)), req.deadlineMs);
    req.track?.add(this);
    req.dispatcher.dispatch(
      { origin: req.url.origin, path: req.url.pathname + req.url.search, method: req.method, headers: req.headers, body: req.body, ...(req.quiet ? { bodyTimeout: 0 } : {}) },
      this,
    );
  }

  #settle(err: Error | null, value?: HttpResponse & { error?: string }): void {
    if (this.#settled) return;
    this.#settled = true;
    if (err) this.reject(err);
    else this.resolve(value!);
  }

  /** the exchange is over: no more bytes, no more aborts */
  #over(err: Error | null): void {
    clearTimeout(this.#timer);
    this.req.track?.delete(this);
    this.req.signal?.removeEventListener("abort", this);
    if (err) this.#sink?.onError(err);
    this.#settle(err);
  }

  abort(reason: Error): void {
    if (this.#abortedWith) return;
    this.#abortedWith = reason;
    if (this.#controller) this.#controller.abort(reason);
    else this.#over(reason);
  }

  /** the caller's signal aborted */
  handleEvent(): void {
    const reason: unknown = this.req.signal!.reason;
    this.abort(reason instanceof Error ? reason : new Error(String(reason)));
  }

  onRequestStart(c: Dispatcher.DispatchController): void {
    this.#controller = c;
    if (this.#abortedWith) c.abort(this.#abortedWith);
  }

  onResponseStart(_c: Dispatcher.DispatchController, status: number, hdrs: Record<string, string | string[]>): void {
    const res: HttpResponse = { status, headers: hdrs as HttpResponse["headers"] };
    this.#res = res;
    this.handler.onHeaders?.(res);
    if (status >= 300 && status < 400) {
      this.#redirect = redirectTarget(res, this.req.method, this.req.url, this.hops);
      if (this.#redirect) return;
    }
    try {
      this.#sink = this.handler.body(res);
    } catch (err) {
      this.#settle(err as Error);
      return this.abort(err as Error);
    }
    if (this.#sink) this.#settle(null, res);
    else if (status < 200 || status >= 300) this.#errorText = [];
  }

  onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#sink) {
      try {
        this.#sink.onData(chunk);
      } catch (err) {
        this.abort(err as Error);
      }
    } else if (this.#errorText && this.#errorBytes < ERROR_BODY_BYTES) {
      this.#errorText.push(chunk);
      this.#errorBytes += chunk.length;
    }
  }

  onResponseEnd(): void {
    const r = this.#res!;
    if (this.#redirect) {
      this.#over(null);
      exchange({ ...this.req, url: this.#redirect }, this.handler, this.hops + 1).then(
        (v) => this.#settle(null, v),
        (e: Error) => this.#settle(e),
      );
      return;
    }
    if (this.#errorText) {
      const text = Buffer.concat(this.#errorText).toString("utf8").slice(0, ERROR_BODY_BYTES);
      this.#settle(null, { ...r, error: unfollowed(r, this.req.url) ?? text });
    } else this.#settle(null, r);
    this.#sink?.onEnd();
    this.#over(null);
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    this.#over(this.#abortedWith ?? err);
  }
}

/** A redirect the SDK's transport would follow: 307/308 (or any for GET), within the origin, at most 5 hops. */
function redirectTarget(res: HttpResponse, method: string, from: URL, hops: number): URL | null {
  const location = header(res, "location");
  if (!location || hops >= MAX_REDIRECTS || !REDIRECTS.includes(res.status)) return null;
  if (method !== "GET" && res.status !== 307 && res.status !== 308) return null;
  let to: URL;
  try {
    to = new URL(location, from);
  } catch {
    return null;
  }
  const addsUserinfo = (to.username || to.password) && (to.username !== from.username || to.password !== from.password);
  return !addsUserinfo && isWithinOrigin(from, to) ? to : null;
}

/** The SDK's words for a redirect left unfollowed, its target without userinfo, query or fragment. */
function unfollowed(res: HttpResponse, from: URL): string | undefined {
  const location = header(res, "location");
  if (!location || !REDIRECTS.includes(res.status)) return undefined;
  let to: URL;
  try {
    to = new URL(location, from);
  } catch {
    return undefined;
  }
  to.username = to.password = to.search = to.hash = "";
  if (to.protocol === "http:" && from.protocol === "https:") return `Redirect to plain http not followed; try ${to.href.replace(/^http:/, "https:")} instead`;
  return `Redirect to ${to.href} not followed`;
}

/** Counts a body's bytes against `limit`: past it, `over(bytes)` is thrown, which ends the exchange where it is. */
export function bounded(limit: number | undefined, over: (bytesRead: number) => Error, read: (chunk: Buffer) => void): (chunk: Buffer) => void {
  if (limit === undefined) return read;
  let bytes = 0;
  return (chunk) => {
    bytes += chunk.length;
    if (bytes > limit) throw over(bytes);
    read(chunk);
  };
}

/** An SSE body's reader: chunks in (UTF-8 split anywhere), events out. */
export function sseReader(onEvent: (event: EventSourceMessage) => void, onRetry?: (ms: number) => void): (chunk: Buffer) => void {
  const decoder = new TextDecoder();
  const parser = createParser({ onEvent, ...(onRetry ? { onRetry } : {}) });
  return (chunk) => parser.feed(decoder.decode(chunk, { stream: true }));
}

/**
 * The JSON-RPC messages of an SSE event (`message` events only), or undefined for none.
 * `answerTo`: the id of the request the stream answers (its result's text is kept: resultText.ts).
 */
export function eventMessage(event: EventSourceMessage, answerTo?: string | number): unknown {
  if (!event.data || (event.event && event.event !== "message")) return undefined;
  return answerTo === undefined ? JSON.parse(event.data) : parseMessage(event.data, Buffer.byteLength(event.data), answerTo);
}

/** The messages of a whole JSON body: one, or a batch. Throws when it is not JSON. `answerTo`: as for `eventMessage`. */
export function jsonMessages(chunks: Buffer[], answerTo?: string | number): unknown[] {
  const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
  const data: unknown = parseMessage(body.toString("utf8"), body.length, answerTo);
  return Array.isArray(data) ? data : [data];
}

type Message = { id?: unknown; method?: unknown; result?: unknown; error?: unknown };
const isAnswerTo = (m: unknown, id: string | number): m is Record<string, unknown> =>
  typeof m === "object" && m !== null && (m as Message).id === id && (m as Message).method === undefined;

export type JsonRpcPostRequest = {
  dispatcher: Dispatcher;
  url: URL;
  /** every header but content-type and accept, which are set here */
  headers: Record<string, string>;
  /** the serialized JSON-RPC request */
  body: string;
  /** its id: the answer is the response with this id */
  id: string | number;
  /** bytes of the response past which it is ended, failing with `tooLarge(bytesRead, maxBytes)` if not answered yet */
  maxBytes?: number | undefined;
  tooLarge?(bytesRead: number, limit: number): Error;
  /** ends the exchange, its body included, at this many ms: `DeadlineError` if not answered yet */
  deadlineMs?: number | undefined;
  /** ends the exchange at once, with the signal's reason if not answered yet */
  signal?: AbortSignal | undefined;
  /** every other message of the response before the answer (notifications, requests), in wire order */
  onMessage?(message: Record<string, unknown>): void;
};

export type JsonRpcReply = {
  status: number;
  /** the response's media type, lower case */
  type: string | undefined;
  /**
   * The JSON-RPC response with the request's id, whatever the status (an upstream may answer an
   * error at a 4xx); undefined when the response carried none (a bare status, a page, a stream
   * that ended without it, a body that is not JSON).
   */
  answer: Record<string, unknown> | undefined;
};

/**
 * POSTs one JSON-RPC request and reads its answer: a JSON body, or an SSE stream up to the
 * response with its id. Resolves as soon as the answer is read; the rest of the body is still
 * read to its end (within the bound and the deadline), so the socket goes back to the pool.
 * Rejects on a transport failure (the outbound policy's refusal is the connector's error), the
 * bound, the deadline or the signal, only while it has not resolved.
 */
export function postJsonRpc(req: JsonRpcPostRequest): Promise<JsonRpcReply> {
  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err: Error | null, reply?: JsonRpcReply) => {
      if (done) return;
      done = true;
      if (err) reject(err);
      else resolve(reply!);
    };
    const tooLarge = (bytes: number) => (req.tooLarge ? req.tooLarge(bytes, req.maxBytes!) : new Error(`answer over ${req.maxBytes} bytes`));
    const headers = { ...req.headers, "content-type": "application/json", accept: "application/json, text/event-stream" };
    const sinkFor = (r: HttpResponse): BodySink => {
      const type = mediaType(header(r, "content-type"));
      const reply = (answer: Record<string, unknown> | undefined) => finish(null, { status: r.status, type, answer });
      const failed = (err: Error) => void finish(err);
      if (type === "text/event-stream" && r.status >= 200 && r.status < 300) {
        let answered = false;
        const read = sseReader((event) => {
          if (answered) return; // read on only to reuse the socket
          let m: unknown;
          try {
            m = eventMessage(event, req.id);
          } catch {
            return; // an event that is not JSON is no answer; the stream goes on
          }
          if (m === undefined) return;
          if (isAnswerTo(m, req.id)) {
            answered = true;
            reply(m);
          } else if (typeof m === "object" && m !== null) req.onMessage?.(m as Record<string, unknown>);
        });
        return { onData: bounded(req.maxBytes, tooLarge, read), onEnd: () => reply(undefined), onError: failed };
      }
      // a body of another type (a status page) carries no answer: read to its end, not kept
      const isJson = type === "application/json";
      const chunks: Buffer[] = [];
      return {
        onData: bounded(req.maxBytes, tooLarge, (c) => void (isJson && chunks.push(c))),
        onEnd: () => {
          if (!isJson) return reply(undefined);
          let messages: unknown[];
          try {
            messages = jsonMessages(chunks, req.id);
          } catch {
            return reply(undefined);
          }
          let answer: Record<string, unknown> | undefined;
          for (const m of messages) {
            if (isAnswerTo(m, req.id)) answer ??= m;
            else if (!answer && typeof m === "object" && m !== null) req.onMessage?.(m as Record<string, unknown>);
          }
          // an error the upstream could not tie to the request (a malformed one) answers it too
          const only = messages.length === 1 ? (messages[0] as Message) : undefined;
          if (!answer && only?.id === null && only.error !== undefined) answer = only as Record<string, unknown>;
          reply(answer);
        },
        onError: failed,
      };
    };
    exchange(
      {
        dispatcher: req.dispatcher,
        url: req.url,
        method: "POST",
        headers,
        body: req.body,
        signal: req.signal,
        deadlineMs: req.deadlineMs,
      },
      { body: sinkFor },
    ).catch((err: Error) => finish(err)); // failed before its response started (refused, unreachable, aborted); later failures reach the sink
  });
}

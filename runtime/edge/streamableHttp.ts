// The MCP Streamable HTTP transport, server side, as the edge speaks it: bodies in, JSON or
// SSE out. No MCP semantics here (those are clientMethods.ts); no session state (KV).
import type { IncomingMessage, ServerResponse } from "node:http";
import {
  ErrorCode,
  JSONRPCMessageSchema,
  type JSONRPCErrorResponse,
  type JSONRPCMessage,
  type JSONRPCNotification,
  type JSONRPCRequest,
  type JSONRPCResultResponse,
} from "@modelcontextprotocol/sdk/types.js";
import { answerJson } from "../resultText.ts";

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly rpcCode: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Like the SDK server: a batch longer than this is refused whole. */
const MAX_BATCH = 100;

/** A refused body is read to its end and dropped when it is at most this much over the limit. */
const DRAIN_BYTES = 16 * 1024 * 1024;

/**
 * Reads a body of at most `max` bytes; a larger one is a 413. The rest of a refused body is read
 * and dropped, so the connection stays usable: a server that closes a socket with unread bytes
 * sends a reset, which can destroy its answer at the client before it is read (the client sees
 * "connection reset", not the 413). Past the drain bound the connection is cut, once `res` is sent.
 */
export function readBody(req: IncomingMessage, res: ServerResponse, max: number): Promise<Buffer> {
  const tooLarge = () => new HttpError(413, ErrorCode.InvalidRequest, `request body larger than ${max} bytes`);
  if (Number(req.headers["content-length"] ?? 0) > max) {
    drain(req, res, max + DRAIN_BYTES);
    return Promise.reject(tooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (c: Buffer) => {
      size += c.length;
      if (size <= max) return void chunks.push(c);
      req.off("data", onData);
      drain(req, res, max + DRAIN_BYTES, size);
      reject(tooLarge());
    };
    req.on("data", onData);
    // a small body is one chunk: no copy
    req.on("end", () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

/** Reads a refused body on, dropping it; past `limit` bytes in all it stops, and the connection is cut once `res` is sent. */
function drain(req: IncomingMessage, res: ServerResponse, limit: number, read = 0): void {
  let dropped = read;
  const onData = (c: Buffer) => {
    dropped += c.length;
    if (dropped <= limit) return;
    req.off("data", onData);
    req.pause();
    if (res.writableFinished) req.socket.destroy();
    else res.once("finish", () => req.socket.destroy());
  };
  req.on("data", onData);
  req.resume();
}

/** A body as JSON; a 400 parse error when it is not. */
export function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    throw new HttpError(400, ErrorCode.ParseError, "Parse error: the body is not valid JSON");
  }
}

/**
 * A request or notification as clients send nearly all of them: only the envelope's own fields,
 * an integer or string id, params an object without `_meta`. Whatever this accepts the SDK's
 * schema accepts too; anything else (answers, `_meta`, anything unusual) is the schema's to judge.
 */
function isPlainCall(m: unknown): m is JSONRPCMessage {
  if (typeof m !== "object" || m === null || Array.isArray(m)) return false;
  const o = m as Record<string, unknown>;
  if (o.jsonrpc !== "2.0" || typeof o.method !== "string") return false;
  for (const k in o) if (k !== "jsonrpc" && k !== "id" && k !== "method" && k !== "params") return false;
  if ("id" in o && typeof o.id !== "string" && !Number.isSafeInteger(o.id)) return false;
  const p = o.params;
  return p === undefined || (typeof p === "object" && p !== null && !Array.isArray(p) && !("_meta" in p));
}

/** A body (raw, or already parsed JSON) as JSON-RPC messages (one or a batch), validated by the SDK's schema. */
export function parseMessages(body: Buffer | { json: unknown }): JSONRPCMessage[] {
  const raw = Buffer.isBuffer(body) ? parseJson(body) : body.json;
  const list = Array.isArray(raw) ? raw : [raw];
  if (list.length === 0) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: empty batch");
  if (list.length > MAX_BATCH) throw new HttpError(400, ErrorCode.InvalidRequest, `Invalid Request: a batch of more than ${MAX_BATCH} messages`);
  return list.map((m) => {
    let message: JSONRPCMessage;
    if (isPlainCall(m)) message = m;
    else {
      const r = JSONRPCMessageSchema.safeParse(m);
      if (!r.success) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: not a JSON-RPC 2.0 message");
      message = r.data;
    }
    const id = (message as { id?: unknown }).id;
    if (typeof id === "string" && id.length > 120) throw new HttpError(400, ErrorCode.InvalidRequest, "Invalid Request: request id longer than 120 characters");
    return message;
  });
}

// What a message is, once parseMessages validated it (each schema of the union has its own
// fields, so a field tells them apart without parsing again)
export const isRequest = (m: JSONRPCMessage): m is JSONRPCRequest => "method" in m && "id" in m;
export const isNotification = (m: JSONRPCMessage): m is JSONRPCNotification => "method" in m && !("id" in m);
/** a client's answer to a server request: a result or an error */
export const isAnswer = (m: JSONRPCMessage): m is JSONRPCResultResponse | JSONRPCErrorResponse => !("method" in m);

/** The client takes `type` (a plain substring of Accept, as the SDK reads it). */
export function accepts(req: IncomingMessage, type: "application/json" | "text/event-stream"): boolean {
  return (req.headers.accept ?? "").includes(type);
}

export function isJsonContent(req: IncomingMessage): boolean {
  return /^application\/json\s*(;|$)/i.test(req.headers["content-type"] ?? "");
}

/** A JSON answer in one write: headers and body together, its length given (no chunked framing). */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = answerJson(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(text)), ...headers }).end(text);
}

export function rpcErrorBody(code: number, message: string, id: string | number | null = null, data?: unknown) {
  return { jsonrpc: "2.0" as const, id, error: data === undefined ? { code, message } : { code, message, data } };
}

/**
 * One SSE response stream. Each event carries an id (`<streamId>.<uid>`) so a client that
 * loses the stream can resume after the last one it saw, at any worker. Socket writes are
 * what a call costs most here: the headers go out with the first event, and the last event
 * with the end of the response, each in one write.
 */
export class SseStream {
  #closed = false;
  #written = false;

  constructor(
    private readonly res: ServerResponse,
    headers: Record<string, string>,
  ) {
    // the headers go out with the first event (or the end)
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache, no-transform", connection: "keep-alive", "x-accel-buffering": "no", ...headers });
    res.on("close", () => (this.#closed = true));
  }

  /** A stream that may have nothing to send at once still shows the client it is open, on the next turn. */
  flushSoon(): void {
    setImmediate(() => {
      if (!this.#written && !this.closed) this.res.flushHeaders();
    });
  }

  get closed(): boolean {
    return this.#closed || this.res.writableEnded;
  }

  /** An event: a JSON-RPC message, or no data (the priming event). */
  write(id: string, message?: unknown): void {
    this.#send(sseEvent(id, message));
  }

  /** A comment line: keeps a quiet stream open behind proxies and clients with a read timeout. */
  comment(): void {
    this.#send(": ping\n\n");
  }

  /** An event without an id (the stateless revision's streams do not resume). */
  message(message: unknown): void {
    this.#send(sseEvent(undefined, message));
  }

  /** Ends the stream, after its last event when there is one (in the same write). */
  end(last?: { id?: string; message: unknown }): void {
    if (this.closed) return;
    this.#closed = true;
    this.#written = true;
    if (last) this.res.end(sseEvent(last.id, last.message));
    else this.res.end();
  }

  onClose(f: () => void): void {
    this.res.on("close", f);
  }

  #send(text: string): void {
    if (this.closed) return;
    this.#written = true;
    this.res.write(text);
  }
}

/** One SSE event's text: with an id or without, a JSON-RPC message or no data (a priming event). */
function sseEvent(id: string | undefined, message: unknown): string {
  const head = id === undefined ? "" : `id: ${id}\n`;
  return message === undefined ? `${head}data: \n\n` : `${head}event: message\ndata: ${answerJson(message)}\n\n`;
}

/** true once `res` finished with everything written handed to the OS; false when it closed before (a response emits `close` after `finish` too) */
function deliveredOf(res: ServerResponse): Promise<boolean> {
  if (res.writableFinished || res.destroyed) return Promise.resolve(res.writableFinished);
  return new Promise((resolve) => res.once("close", () => resolve(res.writableFinished)));
}

/**
 * The response to a POST whose requests need an upstream. Nothing is written until there is
 * something to say, and socket writes are most of what a call costs here:
 * - the answers come first (a call answered in process or over the bus, with nothing before its
 *   answer): one JSON response, headers, body and end in one write;
 * - otherwise an SSE stream whose first event is the priming event (`primingId`), the client's
 *   point to resume from at any worker: once an event comes first (progress, a server request),
 *   or once the answer is slow in coming (`stream()`, by the edge's priming clock).
 * A JSON answer has no event id: a client whose connection breaks before it gets no resumption,
 * it gets an error (its request failed); a call slower than the priming delay streams and resumes.
 */
export class PostResponse {
  #sse: SseStream | undefined;
  #ended = false;

  constructor(
    private readonly res: ServerResponse,
    private readonly headers: Record<string, string>,
    private readonly primingId: string,
    /** the POST carried several messages: a JSON answer is an array */
    private readonly batch: boolean,
    private readonly clock: PrimingClock,
  ) {
    clock.hold(this);
  }

  get closed(): boolean {
    return this.#ended || this.res.destroyed || this.res.writableEnded;
  }

  /** Starts the SSE stream (its headers and priming event, in one write) unless it started or the response is over. */
  stream(): void {
    if (this.#sse || this.closed) return;
    this.clock.release(this);
    this.#sse = new SseStream(this.res, this.headers);
    this.#sse.write(this.primingId);
  }

  /** An event: the stream starts first. */
  write(id: string, message: unknown): void {
    this.stream();
    this.#sse?.write(id, message);
  }

  /** Ends the response after its last answer: as JSON when nothing was written yet, else its stream's last event. */
  end(last?: { id: string; message: unknown }): void {
    if (this.closed) return;
    if (!this.#sse && last) {
      this.#ended = true;
      this.clock.release(this);
      return sendJson(this.res, 200, this.batch ? [last.message] : last.message, this.headers);
    }
    this.stream();
    this.#ended = true;
    this.#sse?.end(last);
  }

  onClose(f: () => void): void {
    this.res.on("close", () => {
      this.clock.release(this);
      f();
    });
  }

  /** true once the response finished with everything written handed to the OS; false when it closed before */
  get delivered(): Promise<boolean> {
    this.#delivered ??= deliveredOf(this.res);
    return this.#delivered;
  }
  #delivered: Promise<boolean> | undefined;
}

/**
 * Streams the POST responses still held once they waited long enough: two generations, each
 * tick streams the older and ages the younger, so a response streams between one and two
 * delays after it began. One timer per edge, not one per request.
 */
export class PrimingClock {
  #young = new Set<PostResponse>();
  #old = new Set<PostResponse>();
  readonly #timer: NodeJS.Timeout;

  constructor(delayMs: number) {
    this.#timer = setInterval(() => this.#tick(), delayMs);
    this.#timer.unref();
  }

  hold(r: PostResponse): void {
    this.#young.add(r);
  }

  release(r: PostResponse): void {
    if (!this.#young.delete(r)) this.#old.delete(r);
  }

  #tick(): void {
    const due = this.#old;
    this.#old = this.#young;
    this.#young = new Set();
    for (const r of due) r.stream();
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

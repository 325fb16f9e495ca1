// The MCP connections of this worker's pollers: one per polled gateway, kept open between its
// polls, so a health check is one ping (`server/discover` for a stateless upstream) and a
// discovery its lists on a session that already exists, instead of initialize, initialized,
// ping and close each time. A timeout or a broken
// transport drops the connection (a poll that found its kept session broken tries once more on
// a new one: the upstream may only have forgotten it); so does the upstream closing it, the
// poller stopping, or the gateway's connection fields changing (its poller restarts). Stdio gateways
// keep a child process each: at most `maxStdio` are kept, least recently used first out, so
// beyond the bound a stdio gateway connects per poll.
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";
import type { GatewayRecord } from "../protocol/gateway.ts";
import type { GatewayConnector, ProbeConnection } from "./pollerEffects.ts";

type Kept = { conn: Promise<ProbeConnection>; stdio: boolean; users: number };

export class PollConnections {
  /** in least recently used first order (a use moves its entry to the end) */
  readonly #kept = new Map<string, Kept>();
  #stdio = 0;
  readonly #connect: GatewayConnector;
  readonly #maxStdio: number;

  constructor(connect: GatewayConnector, maxStdio: number) {
    this.#connect = connect;
    this.#maxStdio = maxStdio;
  }

  /** connections kept now (stdio ones among them) */
  get size(): { all: number; stdio: number } {
    return { all: this.#kept.size, stdio: this.#stdio };
  }

  /**
   * Runs `fn` on the gateway's kept connection, opened first when there is none. `keep: false`
   * (a poll outside any poller), or a stdio gateway when every kept child is busy, uses a kept
   * connection when there is one and otherwise connects for this call only.
   */
  async use<T>(record: GatewayRecord, timeoutMs: number, fn: (conn: ProbeConnection) => Promise<T>, keep = true): Promise<T> {
    const gid = record.id;
    let entry = this.#kept.get(gid);
    if (!entry && (!keep || (record.transport === "stdio" && !this.#roomForStdio()))) {
      const conn = await this.#connect(record, timeoutMs, () => {});
      try {
        return await fn(conn);
      } finally {
        void conn.close();
      }
    }
    const reused = entry !== undefined;
    if (entry) this.#kept.delete(gid);
    else entry = this.#open(record, timeoutMs);
    this.#kept.set(gid, entry);
    entry.users++;
    try {
      return await fn(await entry.conn);
    } catch (err) {
      // the upstream's own error: the session is fine
      const failure = classifyFailure(err);
      if (failure === "rpc") throw err;
      this.#forget(gid, entry);
      // a kept session the upstream forgot (it restarted, or expired it) says nothing about its
      // health: once more on a new one. A timeout is not retried (the upstream may be stuck).
      if (reused && failure === "transport") return this.use(record, timeoutMs, fn, keep);
      throw err;
    } finally {
      entry.users--;
    }
  }

  /** Closes and forgets the gateway's connection (its poller stopped, or will start over with new settings). */
  drop(gid: string): void {
    const entry = this.#kept.get(gid);
    if (entry) this.#forget(gid, entry);
  }

  async closeAll(): Promise<void> {
    const entries = [...this.#kept.values()];
    this.#kept.clear();
    this.#stdio = 0;
    await Promise.all(entries.map((e) => e.conn.then((c) => c.close(), () => {})));
  }

  #open(record: GatewayRecord, timeoutMs: number): Kept {
    const stdio = record.transport === "stdio";
    if (stdio) this.#stdio++;
    const entry: Kept = { stdio, users: 0, conn: undefined as unknown as Promise<ProbeConnection> };
    // the upstream ended the session (child exited, stream closed): the next poll connects again
    entry.conn = this.#connect(record, timeoutMs, () => this.#forget(record.id, entry));
    entry.conn.catch(() => {}); // the poll that opened it sees the failure
    return entry;
  }

  /** forgets `entry` if it is still the gateway's connection, and closes it (bounded, in the background) */
  #forget(gid: string, entry: Kept): void {
    if (this.#kept.get(gid) !== entry) return;
    this.#kept.delete(gid);
    if (entry.stdio) this.#stdio--;
    void entry.conn.then((c) => c.close(), () => {});
  }

  /** whether a new stdio child may be kept: closes least recently used idle ones to stay within the bound */
  #roomForStdio(): boolean {
    for (const [gid, e] of this.#kept) {
      if (this.#stdio < this.#maxStdio) break;
      if (e.stdio && e.users === 0) this.#forget(gid, e);
    }
    return this.#stdio < this.#maxStdio;
  }
}

/**
 * How a poll request failed, as the SDK reports it (a session's polls use the SDK client's own
 * methods; a stateless upstream's lists report its errors the same way): closed connection or
 * anything not from the protocol is the transport, the SDK's timeout (or a stateless request's
 * `AbortSignal.timeout`) is a timeout, any other JSON-RPC error is the upstream's answer.
 */
function classifyFailure(err: unknown): "transport" | "timeout" | "rpc" {
  if (err instanceof DOMException && err.name === "TimeoutError") return "timeout";
  if (err instanceof McpError) {
    if (err.code === ErrorCode.ConnectionClosed) return "transport";
    if (err.code === ErrorCode.RequestTimeout) return "timeout";
    return "rpc";
  }
  return "transport";
}

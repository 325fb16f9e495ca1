// A lean load generator for Streamable HTTP MCP endpoints: what the SDK client does for a
// `tools/call`, without its cost, so a benchmark on a small machine measures the server and not
// the client. Sessions are initialized once (initialize, notifications/initialized); then each
// session sends `tools/call` back to back over a keep-alive connection of its own (node:http),
// reads each answer to its end, JSON or SSE, and checks it is the JSON-RPC result of that call
// (same id, the echoed text). Bounded in time and in count.
import { Agent, request, type IncomingHttpHeaders } from "node:http";
import { performance } from "node:perf_hooks";

export type LeanLoadResult = {
  /** latencies of the calls, ms */
  latencies: number[];
  calls: number;
  elapsedMs: number;
  /** CPU seconds this process spent while the calls ran (the generator's own cost) */
  cpuSeconds: number;
  /** calls whose answer was not their result (an error answer, a wrong one, a failed request), and the first such */
  failures: number;
  firstFailure?: string;
};

type Reply = { status: number; headers: IncomingHttpHeaders; body: string };

const ACCEPT = "application/json, text/event-stream";

/**
 * One POST. A kept-alive connection the server closed as idle (its keep-alive timeout) while
 * the request was on its way fails before any answer: that request is sent again, once, on a
 * new connection (Node's documented `reusedSocket` case); the server never saw it.
 */
function post(agent: Agent, url: URL, headers: Record<string, string>, body: string, retry = true): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { agent, host: url.hostname, port: url.port, path: url.pathname, method: "POST", headers: { "content-type": "application/json", accept: ACCEPT, "content-length": Buffer.byteLength(body), ...headers } },
      (res) => {
        res.setEncoding("utf8");
        let text = "";
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
        res.on("error", reject);
      },
    );
    req.on("error", (err: NodeJS.ErrnoException) => {
      if (retry && req.reusedSocket && err.code === "ECONNRESET") resolve(post(agent, url, headers, body, false));
      else reject(err);
    });
    req.end(body);
  });
}

/** The JSON-RPC messages of an answer: the JSON body, or the data of each SSE event (the priming event has none). */
function messagesOf(reply: Reply): Array<Record<string, unknown>> {
  if (reply.status === 202 || reply.body === "") return [];
  if (String(reply.headers["content-type"]).startsWith("text/event-stream")) {
    const out: Array<Record<string, unknown>> = [];
    for (const event of reply.body.split("\n\n")) {
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n");
      if (data !== "") out.push(JSON.parse(data));
    }
    return out;
  }
  const json = JSON.parse(reply.body) as Record<string, unknown> | Array<Record<string, unknown>>;
  return Array.isArray(json) ? json : [json];
}

/** One initialized session: its headers for every later request. */
async function openSession(agent: Agent, url: URL): Promise<Record<string, string>> {
  const init = { jsonrpc: "2.0", id: 0, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "lean-load", version: "1.0.0" } } };
  const reply = await post(agent, url, {}, JSON.stringify(init));
  const answer = messagesOf(reply).find((m) => m.id === 0);
  if (reply.status !== 200 || !answer || !("result" in answer)) throw new Error(`initialize failed: ${reply.status} ${reply.body.slice(0, 300)}`);
  const result = answer.result as { protocolVersion: string };
  const sid = reply.headers["mcp-session-id"];
  const headers: Record<string, string> = { "mcp-protocol-version": result.protocolVersion, ...(typeof sid === "string" ? { "mcp-session-id": sid } : {}) };
  const note = await post(agent, url, headers, JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }));
  if (note.status !== 202) throw new Error(`notifications/initialized: ${note.status} ${note.body.slice(0, 300)}`);
  return headers;
}

export type LeanTarget = {
  /** the Streamable HTTP endpoint */
  url: string;
  /** the echo tool's name there; it answers `{content:[{type:"text",text}]}` with the `text` it was given */
  tool: string;
};

/** Sessions ready to call, on connections of their own. */
export async function openLeanSessions(target: LeanTarget, sessions: number): Promise<LeanSessions> {
  const url = new URL(target.url);
  const agent = new Agent({ keepAlive: true, maxSockets: sessions });
  const headers: Array<Record<string, string>> = [];
  // a few at a time: a burst of initializes is not what is measured
  for (let i = 0; i < sessions; i += 8) headers.push(...(await Promise.all(Array.from({ length: Math.min(8, sessions - i) }, () => openSession(agent, url)))));
  return new LeanSessions(agent, url, target.tool, headers);
}

export class LeanSessions {
  #nextId = 1;

  constructor(
    private readonly agent: Agent,
    private readonly url: URL,
    private readonly tool: string,
    private readonly sessions: Array<Record<string, string>>,
  ) {}

  /** One `tools/call` on session `i`, checked; its latency in ms. */
  async call(i: number): Promise<number> {
    const id = this.#nextId++;
    const text = `c${id}`;
    const t0 = performance.now();
    const reply = await post(this.agent, this.url, this.sessions[i]!, JSON.stringify({ jsonrpc: "2.0", id, method: "tools/call", params: { name: this.tool, arguments: { text } } }));
    const ms = performance.now() - t0;
    const answer = reply.status === 200 ? messagesOf(reply).find((m) => m.id === id) : undefined;
    const content = (answer?.result as { content?: Array<{ text?: string }> } | undefined)?.content;
    if (content?.[0]?.text !== text) throw new Error(`tools/call ${id}: not its result: ${reply.status} ${reply.body.slice(0, 300)}`);
    return ms;
  }

  /** Every session calls back to back until `ms` have passed or `maxCalls` calls were made in all; a failed call is counted, not thrown. */
  async run(ms: number, maxCalls = Number.POSITIVE_INFINITY): Promise<LeanLoadResult> {
    const latencies: number[] = [];
    let failures = 0;
    let firstFailure: string | undefined;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const end = t0 + ms;
    let started = 0;
    await Promise.all(
      this.sessions.map(async (_, i) => {
        while (performance.now() < end && started < maxCalls) {
          started++;
          try {
            latencies.push(await this.call(i));
          } catch (err) {
            failures++;
            firstFailure ??= String(err);
          }
        }
      }),
    );
    const elapsedMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    return { latencies, calls: latencies.length, elapsedMs, cpuSeconds: (cpu.user + cpu.system) / 1e6, failures, ...(firstFailure ? { firstFailure } : {}) };
  }

  /** Ends the sessions (DELETE where there is a session id) and the connections. */
  async close(): Promise<void> {
    await Promise.all(
      this.sessions.map(
        (h) =>
          new Promise<void>((resolve) => {
            if (!h["mcp-session-id"]) return resolve();
            const req = request({ agent: this.agent, host: this.url.hostname, port: this.url.port, path: this.url.pathname, method: "DELETE", headers: h }, (res) => {
              res.resume();
              res.on("end", resolve);
            });
            req.on("error", () => resolve());
            req.end();
          }),
      ),
    );
    this.agent.destroy();
  }
}

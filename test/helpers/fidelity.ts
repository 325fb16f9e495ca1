// The fidelity matrix: the same MCP client, with the same capabilities and handlers, connected
// to @modelcontextprotocol/server-everything directly and through mcpgw, so a case written once
// runs on every path and a difference is a failing case that names its feature and path.
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { after, before, describe } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  type ClientCapabilities,
  type CreateMessageRequest,
  type CreateMessageResult,
  type ElicitRequest,
  type ElicitResult,
  type Root,
  type ServerNotification,
} from "@modelcontextprotocol/sdk/types.js";
import { freePort, keepUntilExit, startNats, type TestNats } from "./nats.ts";
import { START_MS } from "./processes.ts";
import { until } from "./wait.ts";
import { startTestWorker, type TestWorker } from "./worker.ts";

export const EVERYTHING = createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js");
/** the gateway's name in every mcpgw system of the matrix */
export const GATEWAY = "everything";
/** hang bound of anything a case waits for (never a speed assertion) */
export const HANG_MS = 20_000;

export type ClientOptions = {
  name?: string;
  capabilities?: ClientCapabilities;
  sampling?: (req: CreateMessageRequest) => Promise<CreateMessageResult>;
  elicitation?: (req: ElicitRequest) => Promise<ElicitResult>;
  /** the roots the client answers `roots/list` with, read at each request */
  roots?: () => Root[];
};

export type Conn = {
  client: Client;
  /** every notification the client received that the SDK does not consume itself (progress, cancelled), in arrival order */
  notifications: ServerNotification[];
  /** the first notification from index `from` on that matches, waiting up to HANG_MS */
  waitForNotification(what: string, match: (n: ServerNotification) => boolean, from?: number): Promise<ServerNotification>;
  close(): Promise<void>;
};

export type Path = {
  /** e.g. "direct stdio", "mcpgw http /gateways/everything/mcp" */
  name: string;
  via: "direct" | "mcpgw";
  upstream: "http" | "stdio";
  /** direct: the upstream itself; federated: `/mcp`; gateway: `/gateways/<name>/mcp` */
  endpoint: "direct" | "federated" | "gateway";
  /** the name a client uses for the upstream's tool `name` on this path */
  tool(name: string): string;
  connect(opts?: ClientOptions): Promise<Conn>;
};

export const PATH_NAMES = [
  "direct http",
  "direct stdio",
  `mcpgw http /mcp`,
  `mcpgw http /gateways/${GATEWAY}/mcp`,
  `mcpgw stdio /mcp`,
  `mcpgw stdio /gateways/${GATEWAY}/mcp`,
] as const;

/** A client of `transport` with the options' capabilities and handlers, recording notifications. */
export async function connectWith(transport: Transport, opts: ClientOptions = {}): Promise<Conn> {
  const client = new Client({ name: opts.name ?? "fidelity", version: "1.0.0" }, { capabilities: opts.capabilities ?? {} });
  if (opts.sampling) client.setRequestHandler(CreateMessageRequestSchema, (req) => opts.sampling!(req));
  if (opts.elicitation) client.setRequestHandler(ElicitRequestSchema, (req) => opts.elicitation!(req));
  if (opts.roots) client.setRequestHandler(ListRootsRequestSchema, async () => ({ roots: opts.roots!() }));
  const notifications: ServerNotification[] = [];
  const waiters = new Set<() => void>();
  client.fallbackNotificationHandler = async (n) => {
    notifications.push(n as ServerNotification);
    for (const w of waiters) w();
  };
  await client.connect(transport);
  return {
    client,
    notifications,
    waitForNotification(what, match, from = 0) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = notifications.slice(from).find(match);
          if (found) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve(found);
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no ${what} within ${HANG_MS} ms; notifications: ${JSON.stringify(notifications.slice(from)).slice(0, 1500)}`));
        }, HANG_MS);
        waiters.add(check);
        check();
      });
    },
    close: () => client.close(),
  };
}

/**
 * `transport`, handing the client one message per event-loop turn, in order. The SDK client
 * (1.32) runs notification handlers a microtask later but settles a response at once, so a
 * progress notice read in the same chunk as its result is dropped; stdio delivers both in one
 * read when they leave back to back. The direct baseline measures what the upstream sends,
 * not that client bug (mcpgw's own upstream client has to cope with it).
 */
export function oneMessagePerTurn(transport: Transport): Transport {
  const queue: Array<() => void> = [];
  const drain = () => {
    queue.shift()?.();
    if (queue.length) setImmediate(drain);
  };
  return new Proxy(transport, {
    set(target, prop, value) {
      if (prop === "onmessage" && typeof value === "function") {
        const deliver = value as NonNullable<Transport["onmessage"]>;
        target.onmessage = (m, extra) => {
          queue.push(() => deliver(m, extra));
          if (queue.length === 1) setImmediate(drain);
        };
        return true;
      }
      return Reflect.set(target, prop, value);
    },
  });
}

/** A `fetch` that sends each request to the next of `edges` in turn: a load balancer without stickiness. */
export function roundRobin(edges: string[]): typeof fetch {
  let n = 0;
  return (input, init) => {
    const url = new URL(String(input instanceof Request ? input.url : input));
    url.host = new URL(edges[n++ % edges.length]!).host;
    return fetch(url, init);
  };
}

/** server-everything over Streamable HTTP in a process of its own, on a free loopback port. */
export async function startEverythingHttp(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const child = spawn(process.execPath, [EVERYTHING, "streamableHttp"], { env: { ...process.env, PORT: String(port) }, stdio: ["ignore", "ignore", "pipe"] });
  keepUntilExit(child);
  let err = "";
  child.stderr.on("data", (c) => (err += c));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  };
  try {
    // importing express and the SDK takes long on a loaded machine
    await until(`server-everything listening on ${port}`, () => err.includes("listening on port") || child.exitCode !== null, START_MS);
    if (child.exitCode !== null) throw new Error(`server-everything exited: ${err}`);
  } catch (e) {
    await stop();
    throw e;
  }
  return { url: `http://127.0.0.1:${port}/mcp`, stop };
}

/** One mcpgw system (its own nats-server, two workers) with server-everything registered once, as gateway `everything`. */
type System = { nats: TestNats; workers: TestWorker[]; edges: string[] };

async function startSystem(spec: Record<string, unknown>): Promise<System> {
  const nats = await startNats();
  const sys: System = { nats, workers: [], edges: [] };
  try {
    const env = { MCPGW_LIST_CHANGED_DEBOUNCE: "100ms" };
    sys.workers.push(await startTestWorker(nats, { MCPGW_WORKER_ID: "fid-w1", ...env }), await startTestWorker(nats, { MCPGW_WORKER_ID: "fid-w2", ...env }));
    await sys.workers[0]!.registry.add({ name: GATEWAY, ...spec } as never);
    sys.edges.push(...sys.workers.map((w) => w.edge.url));
    // the pollers' first discovery: the tools are listed once it is in the catalog
    const probe = await connectWith(new StreamableHTTPClientTransport(new URL(sys.edges[0]!)));
    await until(`discovery of ${JSON.stringify(spec.transport)} server-everything`, async () => (await probe.client.listTools()).tools.some((t) => t.name === `${GATEWAY}__echo`), START_MS);
    await probe.close();
    return sys;
  } catch (err) {
    await stopSystem(sys);
    throw err;
  }
}

async function stopSystem(sys: System): Promise<void> {
  await Promise.allSettled(sys.workers.map((w) => w.stop()));
  await sys.nats.stop();
}

export type Fidelity = { paths: Path[]; path(name: (typeof PATH_NAMES)[number]): Path; http: System; stdio: System; stop(): Promise<void> };

/**
 * Every path of the matrix: server-everything directly (HTTP, stdio) and through mcpgw, over an
 * HTTP and a stdio upstream, on `/mcp` and `/gateways/everything/mcp`. Each upstream transport has
 * an mcpgw system of its own (two workers, clients balanced round-robin over both edges), so a
 * federated resource URI names one upstream only.
 */
export async function startFidelity(): Promise<Fidelity> {
  const upstream = await startEverythingHttp();
  const started = await Promise.allSettled([
    startSystem({ transport: "streamable-http", url: upstream.url }),
    startSystem({ transport: "stdio", stdio: { command: process.execPath, args: [EVERYTHING, "stdio"] } }),
  ]);
  const failed = started.find((r) => r.status === "rejected");
  if (failed) {
    // leave nothing running that would keep the test process alive
    for (const r of started) if (r.status === "fulfilled") await stopSystem(r.value);
    await upstream.stop();
    throw failed.reason;
  }
  const [http, stdio] = started.map((r) => (r as PromiseFulfilledResult<System>).value) as [System, System];
  const plain = (n: string) => n;
  const prefixed = (n: string) => `${GATEWAY}__${n}`;
  const through = (sys: System, upstreamKind: "http" | "stdio", endpoint: "federated" | "gateway"): Path => {
    const path = endpoint === "federated" ? "/mcp" : `/gateways/${GATEWAY}/mcp`;
    return {
      name: `mcpgw ${upstreamKind} ${path}`,
      via: "mcpgw",
      upstream: upstreamKind,
      endpoint,
      tool: endpoint === "federated" ? prefixed : plain,
      connect: (opts) => connectWith(new StreamableHTTPClientTransport(new URL(sys.edges[0]!.replace(/\/mcp$/, path)), { fetch: roundRobin(sys.edges) }), opts),
    };
  };
  const paths: Path[] = [
    { name: "direct http", via: "direct", upstream: "http", endpoint: "direct", tool: plain, connect: (opts) => connectWith(new StreamableHTTPClientTransport(new URL(upstream.url)), opts) },
    {
      name: "direct stdio",
      via: "direct",
      upstream: "stdio",
      endpoint: "direct",
      tool: plain,
      connect: (opts) => connectWith(oneMessagePerTurn(new StdioClientTransport({ command: process.execPath, args: [EVERYTHING, "stdio"], stderr: "ignore" })), opts),
    },
    through(http, "http", "federated"),
    through(http, "http", "gateway"),
    through(stdio, "stdio", "federated"),
    through(stdio, "stdio", "gateway"),
  ];
  return {
    paths,
    path: (name) => paths.find((p) => p.name === name)!,
    http,
    stdio,
    async stop() {
      await stopSystem(http);
      await stopSystem(stdio);
      await upstream.stop();
    },
  };
}

/**
 * Whether `name` is in the client's tool list: at once, or after a `tools/list_changed` it
 * receives (what a client following the protocol does), within HANG_MS.
 */
export async function isListed(conn: Conn, name: string): Promise<boolean> {
  const end = Date.now() + HANG_MS;
  const notices = () => conn.notifications.filter((n) => n.method === "notifications/tools/list_changed").length;
  for (;;) {
    const seen = notices();
    if ((await conn.client.listTools()).tools.some((t) => t.name === name)) return true;
    // list again only after the next notice
    while (notices() === seen) {
      if (Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** The text of every content item of a tool result, joined. */
export function textOf(result: unknown): string {
  return ((result as { content?: Array<{ text?: string }> }).content ?? []).map((c) => c.text ?? "").join("\n");
}

export type Outcome = { result: unknown } | { error: { code: unknown; message: string; data: unknown } };

/** What a request came back as: its result, or its JSON-RPC error (code, message, data). */
export async function outcomeOf(p: Promise<unknown>): Promise<Outcome> {
  try {
    return { result: await p };
  } catch (err) {
    const e = err as { code?: unknown; message: string; data?: unknown };
    return { error: { code: e.code, message: e.message, data: e.data } };
  }
}

/**
 * The system every fidelity suite of this test process runs on, started by the first suite that
 * needs it and stopped after its last test: `test/relay.test.ts` imports every feature of
 * `test/relay/`, so the features share one system instead of starting one each.
 */
let shared: { system?: Promise<Fidelity> } | undefined;

/**
 * One feature's cases on every path, on the test process's shared fidelity system (a feature file
 * run alone, `node --import tsx --test test/relay/<feature>.ts`, has it to itself).
 * `fid` stands for it inside the cases (they run after it has started).
 */
export function fidelitySuite(title: string, opts: { timeout: number }, cases: (fid: Pick<Fidelity, "path">) => void): void {
  if (!shared) {
    const holder: { system?: Promise<Fidelity> } = {};
    shared = holder;
    // registered while the features are loaded, on the suite (or file) that loads them: it runs after all of them
    after(async () => {
      await holder.system?.then((fid) => fid.stop(), () => {});
    });
  }
  const holder = shared;
  // a feature's cases one after the other, whatever the file runs at once (test/relay.test.ts runs features side by side)
  describe(title, { concurrency: 1, ...opts }, () => {
    let fid: Fidelity | undefined;
    before(async () => {
      fid = await (holder.system ??= startFidelity());
    });
    cases({ path: (name) => fid!.path(name) });
  });
}

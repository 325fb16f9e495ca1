// The real effects of a gateway poller: MCP health checks and discovery against the upstream,
// catalog reconciliation in KV with its change event, poll stamps and the gateway status.
import type { KV } from "@nats-io/kv";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Dispatcher } from "undici";
import { createHash } from "node:crypto";
import { EMPTY_DIFF, reconcile, type CatalogLists } from "../actors/discovery.ts";
import { encodeValue, entryJson, getLive, isCasConflict, parseEntry } from "../actors/kvStore.ts";
import type { OutboundPolicy } from "../actors/outboundPolicy.ts";
import type { DiscoveryOutcome } from "../actors/pollScheduler.ts";
import { CatalogSchema, type Catalog, type UpstreamEra } from "../protocol/catalog.ts";
import { GatewayStatusSchema, type GatewayRecord, type GatewayStatus } from "../protocol/gateway.ts";
import { PollerStatusReplySchema } from "../protocol/poller.ts";
import { KEYS, type Subjects } from "../protocol/subjects.ts";
import type { NatsConnection } from "@nats-io/transport-node";
import { request } from "./bus.ts";
import { publishEvent } from "./events.ts";
import {
  ListPromptsResultSchema,
  ListResourcesResultSchema,
  ListResourceTemplatesResultSchema,
  ListToolsResultSchema,
  McpError,
  type ServerCapabilities,
} from "@modelcontextprotocol/sdk/types.js";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { HttpPollSession } from "./httpPollSession.ts";
import { closeWithin, isMethodNotFound, type UpstreamConnection } from "./mcpClient.ts";
import { checkStatelessUpstream, connectEitherEra, type StatelessUpstream } from "./revision2026Upstream.ts";

/**
 * A gateway's connection for its polls, in the era its upstream speaks: a health check is
 * `ping` on a session, `server/discover` on a stateless upstream (the revision has no `ping`;
 * discover is its one request that touches no state); a discovery lists the catalog.
 */
export type ProbeConnection = {
  era: UpstreamEra;
  check(signal?: AbortSignal): Promise<void>;
  /** the catalog's lists and their fingerprint; `lists` null when the fingerprint is `known` (nothing changed: not parsed) */
  list(signal?: AbortSignal, known?: string): Promise<Listed>;
  close(): Promise<void>;
  /** what the last discovery on this connection found (a fingerprint of its lists) and what reconciling it gave: see discoverOn */
  reconciled?: { fingerprint: string; outcome: DiscoveryOutcome } | undefined;
};

/**
 * What a discovery listed: a fingerprint of the lists as the upstream sent them (sha256 of their
 * JSON; comparable between two listings of one connection only), and the lists, or null when
 * the fingerprint was the one the caller knew.
 */
export type Listed = { fingerprint: string; lists: CatalogLists | null };

const fingerprintOf = (lists: unknown) => createHash("sha256").update(JSON.stringify(lists)).digest("base64");

/** Listed lists of a client whose lists come parsed (an SDK client, a stateless upstream). */
function listedOf(lists: CatalogLists, known: string | undefined): Listed {
  const fingerprint = fingerprintOf(lists);
  return { fingerprint, lists: fingerprint === known ? null : lists };
}
/** `onClosed`: the upstream ended the connection by itself */
export type GatewayConnector = (record: GatewayRecord, timeoutMs: number, onClosed: () => void) => Promise<ProbeConnection>;

/**
 * Probes use the same connection builder as upstream sessions, with no downstream headers,
 * over `dispatcher`: one keep-alive HTTP agent shared by every poll of the worker. Each new
 * connection finds the era anew (a kept one is made rarely), and discovery records it. A
 * session with a streamable-HTTP gateway on that agent is kept as data (HttpPollSession): the
 * SDK client that initialized it is let go, the session stays open upstream.
 */
export function probeConnector(open: (sealed: string, gid: string) => string, outbound: OutboundPolicy, dispatcher: Dispatcher): GatewayConnector {
  /** servers' capabilities by their JSON: thousands of gateways of a few kinds share a few objects */
  const capabilities = new Map<string, ServerCapabilities>();
  const shared = (caps: ServerCapabilities | undefined) => {
    if (!caps) return caps;
    const key = JSON.stringify(caps);
    let kept = capabilities.get(key);
    if (!kept) capabilities.set(key, (kept = caps));
    return kept;
  };
  return async (record, timeoutMs, onClosed) => {
    const c = await connectEitherEra(
      { record, open, initialHeaders: {}, timeoutMs, outbound, dispatcher, pollOnly: true, onNotification: () => {}, onClosed, onError: () => {} },
      undefined,
    );
    if (c.era === "stateless") return statelessProbe(c.conn, timeoutMs);
    if (record.transport === "streamable-http" && !record.tls) {
      const transport = c.conn.client.transport as { sessionId?: string; protocolVersion?: string } | undefined;
      const session = new HttpPollSession({
        record,
        open,
        dispatcher,
        sessionId: transport?.sessionId,
        protocolVersion: transport?.protocolVersion,
        capabilities: shared(c.conn.client.getServerCapabilities()),
      });
      return sessionProbe(session, timeoutMs);
    }
    return clientProbe(c.conn, timeoutMs);
  };
}

// Each kind of probe is built in a function of its own: closures made in one scope share its
// context, so a kept session's ping would otherwise hold the SDK client (and its transport) that
// only opened it, ten thousand of them at scale.

function sessionProbe(session: HttpPollSession, timeoutMs: number): ProbeConnection {
  return {
    era: "session",
    close: () => session.close(),
    check: async (signal) => void (await session.ping({ timeout: timeoutMs, signal })),
    list: (signal, known) => listSessionCatalog(session, timeoutMs, signal, known),
  };
}

function statelessProbe(conn: StatelessUpstream, timeoutMs: number): ProbeConnection {
  return {
    era: "stateless",
    // bounded: an upstream that ignores the polite close is forced
    close: () => closeWithin(conn, 2_000),
    check: (signal) => checkStatelessUpstream(conn, timeoutMs, signal),
    list: async (signal, known) => listedOf(await listStatelessCatalog(conn, timeoutMs, signal), known),
  };
}

function clientProbe(conn: UpstreamConnection, timeoutMs: number): ProbeConnection {
  const { client } = conn;
  return {
    era: "session",
    close: () => closeWithin(conn, 2_000),
    check: async (signal) => void (await client.ping({ timeout: timeoutMs, signal })),
    list: async (signal, known) => listedOf(await listCatalog(client, timeoutMs, signal), known),
  };
}

/** Pages of one list a discovery follows at most: an upstream handing out new cursors forever must not hold a poll slot forever. */
export const MAX_PAGES = 1_000;

/** A paginated list; "method not found" (or an unadvertised capability) is an empty list. */
export async function listAll<T>(fetchPage: (cursor?: string) => Promise<{ items: T[]; nextCursor?: string | undefined }>): Promise<T[]> {
  const out: T[] = [];
  const seen = new Set<string>();
  let cursor: string | undefined;
  try {
    do {
      const page = await fetchPage(cursor);
      out.push(...page.items);
      cursor = page.nextCursor;
      // a server that repeats a cursor would loop forever
      if (cursor !== undefined && seen.has(cursor)) throw new Error("upstream repeated a pagination cursor");
      if (cursor !== undefined) seen.add(cursor);
      if (cursor !== undefined && seen.size >= MAX_PAGES) throw new Error(`upstream list has more than ${MAX_PAGES} pages`);
    } while (cursor !== undefined);
  } catch (err) {
    if (isMethodNotFound(err)) return [];
    throw err;
  }
  return out;
}

/** What a discovery needs of an SDK `Client` (a kept HTTP poll session is listed raw instead: listSessionCatalog). */
export type PollClient = Pick<Client, "getServerCapabilities" | "listTools" | "listPrompts" | "listResources" | "listResourceTemplates">;

/** Every tool, prompt, resource and resource template the upstream offers, as it sent them. */
export async function listCatalog(client: PollClient, timeoutMs: number, signal?: AbortSignal): Promise<CatalogLists> {
  const caps = client.getServerCapabilities() ?? {};
  const opts = { timeout: timeoutMs, signal };
  const [tools, prompts, resources, resourceTemplates] = await Promise.all([
    caps.tools ? listAll((cursor) => client.listTools({ cursor }, opts).then((r) => ({ items: r.tools, nextCursor: r.nextCursor }))) : [],
    caps.prompts ? listAll((cursor) => client.listPrompts({ cursor }, opts).then((r) => ({ items: r.prompts, nextCursor: r.nextCursor }))) : [],
    caps.resources ? listAll((cursor) => client.listResources({ cursor }, opts).then((r) => ({ items: r.resources, nextCursor: r.nextCursor }))) : [],
    caps.resources
      ? listAll((cursor) => client.listResourceTemplates({ cursor }, opts).then((r) => ({ items: r.resourceTemplates, nextCursor: r.nextCursor })))
      : [],
  ]);
  return { tools, prompts, resources, resourceTemplates } as CatalogLists;
}

/** The four lists of a session: their method, the capability that announces them, the SDK's schema of a page. */
const SESSION_LISTS = [
  { list: "tools", method: "tools/list", capability: "tools", schema: ListToolsResultSchema },
  { list: "prompts", method: "prompts/list", capability: "prompts", schema: ListPromptsResultSchema },
  { list: "resources", method: "resources/list", capability: "resources", schema: ListResourcesResultSchema },
  { list: "resourceTemplates", method: "resources/templates/list", capability: "resources", schema: ListResourceTemplatesResultSchema },
] as const;

/**
 * A kept HTTP session's catalog (what listCatalog does with an SDK client), fingerprinted as the
 * upstream sent it and parsed with the SDK's schemas only when the fingerprint is not `known`:
 * most discoveries find nothing changed, and parsing every tool's schema was most of their cost.
 */
export async function listSessionCatalog(session: HttpPollSession, timeoutMs: number, signal?: AbortSignal, known?: string): Promise<Listed> {
  const caps = session.getServerCapabilities() ?? {};
  const opts = { timeout: timeoutMs, signal };
  const raw = await Promise.all(
    SESSION_LISTS.map(({ list, method, capability, schema }) =>
      caps[capability]
        ? listAll(async (cursor?: string) => {
            const page = await session.request(method, { cursor }, opts);
            const items = page[list];
            const next = page.nextCursor;
            // a page not of the list's shape fails as the schema says
            if (!Array.isArray(items) || (next !== undefined && typeof next !== "string")) throw schema.safeParse(page).error ?? new Error(`${method}: malformed page`);
            return { items: items as unknown[], nextCursor: next };
          })
        : [],
    ),
  );
  const fingerprint = fingerprintOf(raw);
  if (fingerprint === known) return { fingerprint, lists: null };
  const lists = Object.fromEntries(SESSION_LISTS.map(({ list, schema }, i) => [list, (schema.parse({ [list]: raw[i] }) as Record<string, unknown>)[list]]));
  return { fingerprint, lists: lists as CatalogLists };
}

/**
 * Every tool, prompt, resource and resource template a stateless upstream offers, as it sent
 * them (what discovery's `listCatalog` does with an SDK client), by the capabilities its
 * `server/discover` named; "method not found" is an empty list.
 */
export async function listStatelessCatalog(conn: StatelessUpstream, timeoutMs: number, signal?: AbortSignal): Promise<CatalogLists> {
  const caps = conn.discovered.capabilities;
  const list = (method: string, key: string) =>
    listAll(async (cursor?: string) => {
      const bound = AbortSignal.timeout(timeoutMs);
      const r = await conn.request({ method, params: cursor === undefined ? {} : { cursor } }, { headers: {}, signal: signal ? AbortSignal.any([signal, bound]) : bound });
      // the shape listAll knows: "method not found" as the SDK's error
      if ("rpcError" in r) throw new McpError(r.rpcError.code, r.rpcError.message, r.rpcError.data);
      const next = r.result.nextCursor;
      return { items: (r.result[key] ?? []) as Record<string, unknown>[], nextCursor: typeof next === "string" ? next : undefined };
    });
  const [tools, prompts, resources, resourceTemplates] = await Promise.all([
    caps.tools ? list("tools/list", "tools") : [],
    caps.prompts ? list("prompts/list", "prompts") : [],
    caps.resources ? list("resources/list", "resources") : [],
    caps.resources ? list("resources/templates/list", "resourceTemplates") : [],
  ]);
  return { tools, prompts, resources, resourceTemplates } as CatalogLists;
}

export type CatalogStore = { catalog: KV; js: JetStreamClient; s: Subjects; now: () => Date };

/**
 * Replaces `cat.<gid>` when the hash changed (one put: readers see the old or the new
 * catalog, never a mix) and publishes what changed. Compare-and-swap on the entry read,
 * so a concurrent refresh elsewhere cannot be overwritten with an older view.
 */
export async function reconcileCatalog(store: CatalogStore, gid: string, found: CatalogLists, era?: UpstreamEra): Promise<DiscoveryOutcome> {
  const key = KEYS.catalog(gid);
  for (let attempt = 0; ; attempt++) {
    const entry = await store.catalog.get(key);
    const current: Catalog | null = entry?.operation === "PUT" ? parseEntry(CatalogSchema, entry) : null;
    const at = store.now().toISOString();
    const r = reconcile(gid, current, found, at, era);
    const counts = { tools: found.tools.length, prompts: found.prompts.length, resources: found.resources.length };
    if (!r.write) return { changed: false, hash: r.catalog.hash, diff: r.diff, counts };
    try {
      if (entry) await store.catalog.update(key, encodeValue(r.catalog), entry.revision);
      else await store.catalog.create(key, encodeValue(r.catalog));
    } catch (err) {
      if (isCasConflict(err) && attempt < 2) continue;
      throw err;
    }
    // the era alone changed: nothing a client sees did
    if (!r.changed) return { changed: false, hash: r.catalog.hash, diff: r.diff, counts };
    await publishEvent(store.js, store.s.evt.catalogChanged(gid), { gid, hash: r.catalog.hash, at, diff: r.diff });
    return { changed: true, hash: r.catalog.hash, diff: r.diff, counts };
  }
}

/**
 * A discovery on a poller's connection: lists the upstream's catalog and reconciles it into KV.
 * Lists identical to those this connection last reconciled are no change, and cost no hash and no
 * KV read: the poller that holds the connection wrote or read the catalog then, and nobody else
 * writes it while the poller runs (a manual refresh is its; a discovery outside any poller runs
 * only where none answers; the connection is dropped when the poller stops or moves).
 */
export async function discoverOn(store: CatalogStore, gid: string, conn: ProbeConnection, signal?: AbortSignal): Promise<DiscoveryOutcome> {
  const { fingerprint, lists } = await conn.list(signal, conn.reconciled?.fingerprint);
  if (!lists) return conn.reconciled!.outcome;
  const outcome = await reconcileCatalog(store, gid, lists, conn.era);
  conn.reconciled = { fingerprint, outcome: outcome.changed ? { ...outcome, changed: false, diff: EMPTY_DIFF } : outcome };
  return outcome;
}

/** The discovery stamp (raw: the scheduler decides what it means). */
export async function readDiscoveryStamp(state: KV, gid: string): Promise<unknown> {
  const e = await getLive(state, KEYS.pollDiscovery(gid));
  return e ? entryJson(e) : undefined;
}

/** The status its poller last stored (`status.<gid>`): written when a field readers act on changed, its last success refreshed every few intervals. */
export async function readStoredStatus(state: KV, gid: string): Promise<GatewayStatus | undefined> {
  return parseEntry(GatewayStatusSchema, await getLive(state, KEYS.gatewayStatus(gid))) ?? undefined;
}

/**
 * A gateway's status for `gateway get/ls`: its poller's live status, asked at its address on
 * whichever worker polls it (last success and next check to the second); the stored one when
 * nobody polls it now or its poller does not answer in time.
 */
export async function readGatewayStatus(nc: NatsConnection, s: Subjects, state: KV, gid: string): Promise<GatewayStatus | undefined> {
  try {
    return (await request(nc, s.poller.op(gid, "status"), {}, PollerStatusReplySchema, STATUS_ASK_MS)).status;
  } catch {
    return readStoredStatus(state, gid);
  }
}

/** How long `gateway get/ls` waits for a poller's live status before it shows the stored one. */
const STATUS_ASK_MS = 2_000;

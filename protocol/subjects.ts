// The only place that spells a subject, a bucket, a stream or a KV key.
// Every id used as a subject token must pass `isSubjectToken`.

export const DEFAULT_PREFIX = "mcpgw";

const TOKEN = /^[A-Za-z0-9_-]{1,128}$/;

/** True when `s` can stand as one subject token (no `.`, `*`, `>` or whitespace). */
export function isSubjectToken(s: string): boolean {
  return TOKEN.test(s);
}

function token(s: string, what: string): string {
  if (!isSubjectToken(s)) throw new Error(`${what} is not a valid subject token: ${JSON.stringify(s)}`);
  return s;
}

export const GATEWAY_EVENT_KINDS = ["added", "updated", "removed", "list_changed"] as const;
export type GatewayEventKind = (typeof GATEWAY_EVENT_KINDS)[number];

/**
 * The last token of a stream event's subject: `message`, what the client is sent as it comes
 * (edges holding a stream subscribe to these); `answer`, a call's final answer, which the live
 * path has from the call's reply and only a resumed stream reads from the stream log.
 */
export const STREAM_EVENT_KINDS = ["message", "answer"] as const;
export type StreamEventKind = (typeof STREAM_EVENT_KINDS)[number];

export const ADMIN_GATEWAY_OPS = ["add", "update", "remove", "get", "list", "refresh"] as const;
export type AdminGatewayOp = (typeof ADMIN_GATEWAY_OPS)[number];

export const UPSTREAM_OPS = [
  "call", // one MCP request forwarded as-is: tools/call, prompts/get, resources/read, ...
  "notify", // a client notification (cancelled) forwarded to the upstream
  "close",
  "status", // liveness and snapshot of one actor (a claim's owner is alive when it answers)
  "answer", // the client's answer to a request this actor's upstream sent it (sampling, elicitation, roots)
] as const;
export type UpstreamOp = (typeof UPSTREAM_OPS)[number];

export const POLLER_OPS = [
  "refresh", // run a discovery now, answer its outcome
  "status", // the poller's live status (health, counts, last success, next check)
] as const;
export type PollerOp = (typeof POLLER_OPS)[number];

/**
 * Inbox prefixes (nats.conf lets each user subscribe only to its own): the runtime's
 * requests get their replies on `_INBOX.`, which admin and viewer cannot read.
 */
export const INBOX_PREFIX = { runtime: "_INBOX", admin: "_INBOX_admin", viewer: "_INBOX_viewer" } as const;

/** The inbox prefix a NATS user requests with; users nats.conf does not know keep NATS's default. */
export function inboxPrefixOf(user: string | undefined): string {
  return user === "admin" || user === "viewer" ? INBOX_PREFIX[user] : INBOX_PREFIX.runtime;
}

/** True when `subject` is a core request inbox (`_INBOX.…` or a per-user `_INBOX_<user>.…`). */
export function isInbox(subject: string): boolean {
  return /^_INBOX(_[A-Za-z0-9-]+)?\./.test(subject);
}

/** Queue groups: a request on these subjects is answered by exactly one worker. */
export const QUEUE = {
  registry: "mcpgw-registry",
  admin: "mcpgw-admin",
  spawn: "mcpgw-spawn",
} as const;

export type Subjects = ReturnType<typeof subjects>;

/** Builds every subject under `prefix` (default `mcpgw`). */
export function subjects(prefix: string = DEFAULT_PREFIX) {
  token(prefix, "subject prefix");
  const p = prefix;
  return {
    prefix: p,
    all: `${p}.>`,
    admin: {
      all: `${p}.admin.>`,
      /** the NATS micro service (`nats micro ls`) whose endpoints are the admin subjects */
      service: `${p}-admin`,
      /** an admin subject's endpoint name in that service: `gateway.add` → `gateway-add` */
      endpointName: (subject: string) => subject.slice(`${p}.admin.`.length).replaceAll(".", "-"),
      gateway: (op: AdminGatewayOp) => `${p}.admin.gateway.${op}`,
      sessionList: `${p}.admin.session.list`,
      sessionEvict: `${p}.admin.session.evict`,
      classificationGet: `${p}.admin.classification.get`,
      drain: `${p}.admin.drain`,
      status: `${p}.admin.status`,
      /**
       * The admin requests that only read: asking again after a timeout (the first may have
       * been lost with a NATS node) changes nothing. Every other one is repeated only when
       * nobody received it ("no responders").
       */
      readOnly: new Set([
        `${p}.admin.gateway.get`,
        `${p}.admin.gateway.list`,
        `${p}.admin.session.list`,
        `${p}.admin.classification.get`,
        `${p}.admin.status`,
      ]) as ReadonlySet<string>,
    },
    upstream: {
      /** the address of the upstream session actor for (sid, gid) */
      op: (sid: string, gid: string, op: UpstreamOp) =>
        `${p}.upstream.${token(sid, "session id")}.${token(gid, "gateway id")}.${op}`,
      /** every op of one actor, for the actor's own subscription */
      actor: (sid: string, gid: string) => `${p}.upstream.${token(sid, "session id")}.${token(gid, "gateway id")}.*`,
      /** ask any worker to host the actor for a key (queue group) */
      spawn: `${p}.internal.upstream.spawn`,
      /** per-worker fan-out: list live actors */
      snapshot: `${p}.internal.upstream.snapshot`,
      /** per-worker fan-out: evict matching actors */
      evict: `${p}.internal.upstream.evict`,
      /**
       * every upstream session actor of one client session listens here: what the client says
       * to all of its upstreams (`notifications/roots/list_changed`, `logging/setLevel`)
       */
      sessionWide: (sid: string) => `${p}.internal.session.${token(sid, "session id")}.upstreams`,
      /** every session's session-wide messages: one subscription per worker, handed to its actors of that session */
      sessionWideAll: `${p}.internal.session.*.upstreams`,
    },
    stream: {
      /**
       * One event of a client-bound SSE stream of a client session: a POST's response stream
       * (`streamId` chosen by the edge that answers the POST, carried in the call) or
       * `STREAM_GET`, the session's GET stream; `kind` is `streamEventKind` of the event. Every
       * message for the client travels here (progress, logs, list changes, server→client
       * requests) and, for resumption only, a call's final answer; the stream-log JetStream
       * stream keeps them for a bounded time, so any worker can resume a stream.
       */
      event: (sid: string, streamId: string, kind: StreamEventKind) => `${p}.stream.${token(sid, "session id")}.${token(streamId, "stream id")}.${kind}`,
      /**
       * the messages of every stream of one session (an edge holding any of them subscribes):
       * not the answers, which the live path has from the call's reply
       */
      sessionMessages: (sid: string) => `${p}.stream.${token(sid, "session id")}.*.message`,
      /** every event of every stream of one session */
      session: (sid: string) => `${p}.stream.${token(sid, "session id")}.>`,
      /** every event of one stream, answers included (resumption's consumer: one filter subject) */
      ofStream: (sid: string, streamId: string) => `${p}.stream.${token(sid, "session id")}.${token(streamId, "stream id")}.*`,
      all: `${p}.stream.>`,
    },
    edge: {
      /** a client's cancellation, for whichever worker has the request in flight */
      cancel: (sid: string) => `${p}.internal.edge.${token(sid, "session id")}.cancel`,
      cancelAll: `${p}.internal.edge.*.cancel`,
    },
    poller: {
      /** the address of a gateway's poller, on whichever worker polls it ("no responders": nobody polls it now) */
      op: (gid: string, op: PollerOp) => `${p}.poller.${token(gid, "gateway id")}.${op}`,
      actor: (gid: string) => `${p}.poller.${token(gid, "gateway id")}.*`,
      /** per-worker fan-out: the live statuses of the pollers each worker runs, for a list of gateways (one request per worker, not per gateway) */
      statuses: `${p}.internal.poller.statuses`,
    },
    evt: {
      all: `${p}.evt.>`,
      gateway: (gid: string, kind: GatewayEventKind) => `${p}.evt.gateway.${token(gid, "gateway id")}.${kind}`,
      gatewayAll: `${p}.evt.gateway.>`,
      /** every gateway's events of one kind: a follower that needs only removals is not sent every add */
      gatewayKind: (kind: GatewayEventKind) => `${p}.evt.gateway.*.${kind}`,
      catalogChanged: (gid: string) => `${p}.evt.catalog.${token(gid, "gateway id")}.changed`,
      catalogAll: `${p}.evt.catalog.>`,
      sessionClosed: (sid: string) => `${p}.evt.session.${token(sid, "session id")}.closed`,
      sessionAll: `${p}.evt.session.>`,
      usage: `${p}.evt.usage`,
    },
    /** parse `<p>.evt.gateway.<gid>.<kind>` */
    parseGatewayEvent(subject: string): { gid: string; kind: GatewayEventKind } | null {
      const parts = subject.split(".");
      if (parts.length !== 5 || parts[0] !== p || parts[1] !== "evt" || parts[2] !== "gateway") return null;
      const kind = parts[4] as GatewayEventKind;
      if (!GATEWAY_EVENT_KINDS.includes(kind)) return null;
      return { gid: parts[3]!, kind };
    },
    /** parse `<p>.internal.edge.<sid>.cancel` → sid */
    parseEdgeCancel(subject: string): string | null {
      const parts = subject.split(".");
      return parts.length === 5 && parts[0] === p && parts[2] === "edge" && parts[4] === "cancel" ? parts[3]! : null;
    },
    /** parse `<p>.internal.session.<sid>.upstreams` → sid */
    parseSessionWide(subject: string): string | null {
      const parts = subject.split(".");
      return parts.length === 5 && parts[0] === p && parts[1] === "internal" && parts[2] === "session" && parts[4] === "upstreams" ? parts[3]! : null;
    },
    /** parse `<p>.stream.<sid>.<streamId>.<kind>` */
    parseStream(subject: string): { sid: string; streamId: string; kind: StreamEventKind } | null {
      const parts = subject.split(".");
      if (parts.length !== 5 || parts[0] !== p || parts[1] !== "stream") return null;
      const kind = parts[4] as StreamEventKind;
      return STREAM_EVENT_KINDS.includes(kind) ? { sid: parts[2]!, streamId: parts[3]!, kind } : null;
    },
    /** parse `<p>.poller.<gid>.<op>`; `op` as sent (an unknown one is the poller's to refuse) */
    parsePoller(subject: string): { gid: string; op: string } | null {
      const parts = subject.split(".");
      return parts.length === 4 && parts[0] === p && parts[1] === "poller" ? { gid: parts[2]!, op: parts[3]! } : null;
    },
    /** parse `<p>.upstream.<sid>.<gid>.<op>` */
    parseUpstream(subject: string): { sid: string; gid: string; op: UpstreamOp } | null {
      const parts = subject.split(".");
      if (parts.length !== 5 || parts[0] !== p || parts[1] !== "upstream") return null;
      const op = parts[4] as UpstreamOp;
      if (!UPSTREAM_OPS.includes(op)) return null;
      return { sid: parts[2]!, gid: parts[3]!, op };
    },
  };
}

/** JetStream stream that keeps the durable events (everything under `<p>.evt.` except usage). */
export function eventStream(prefix: string = DEFAULT_PREFIX) {
  const s = subjects(prefix);
  return {
    name: `${prefix.toUpperCase().replace(/-/g, "_")}_EVENTS`,
    subjects: [s.evt.gatewayAll, s.evt.catalogAll, s.evt.sessionAll],
  };
}

/** The stream id of a client session's GET stream (POST streams get random ids). */
export const STREAM_GET = "get";

/**
 * JetStream stream that keeps client-bound stream events for resumption (`Last-Event-ID` at
 * any worker): memory storage, bounded by age and size; only the runtime may read it.
 */
export function streamLog(prefix: string = DEFAULT_PREFIX) {
  return { name: `${prefix.toUpperCase().replace(/-/g, "_")}_STREAMS`, subjects: [subjects(prefix).stream.all] };
}

/** KV bucket names; with the default prefix: mcpgw_state, mcpgw_gateways, mcpgw_catalog, mcpgw_sessions. */
export function buckets(prefix: string = DEFAULT_PREFIX) {
  return {
    state: `${prefix}_state`,
    gateways: `${prefix}_gateways`,
    catalog: `${prefix}_catalog`,
    sessions: `${prefix}_sessions`,
  } as const;
}
export type Buckets = ReturnType<typeof buckets>;

/** The subject a KV put of `key` in `bucket` is a message on (a plain publish there stores it, unacknowledged). */
export const kvSubject = (bucket: string, key: string) => `$KV.${bucket}.${key}`;

/** nats-server's advisories that a stream (its name is the last token) elected a leader; published in the stream's account */
export const STREAM_LEADER_ELECTED_ADVISORIES = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*";

export const KEYS = {
  gateway: (gid: string) => `gw.${token(gid, "gateway id")}`,
  gatewayPrefix: "gw.",
  gatewayName: (name: string) => `name.${token(name, "gateway name")}`,
  catalog: (gid: string) => `cat.${token(gid, "gateway id")}`,
  catalogPrefix: "cat.",
  leaderClassifier: "leader.classifier",
  classification: "classification",
  pollHealth: (gid: string) => `poll.${token(gid, "gateway id")}.health`,
  pollDiscovery: (gid: string) => `poll.${token(gid, "gateway id")}.discovery`,
  pollOwner: (gid: string) => `owner.${token(gid, "gateway id")}`,
  pollOwnerPrefix: "owner.",
  /** a worker's poller heartbeat: its live-worker-set membership */
  pollerWorker: (workerId: string) => `worker.${token(workerId, "worker id")}`,
  pollerWorkerPrefix: "worker.",
  /** a gateway's live status (health, counts, next poll), kept by its poller */
  gatewayStatus: (gid: string) => `status.${token(gid, "gateway id")}`,
  gatewayStatusPrefix: "status.",
  /** a gateway's cluster-wide usage, kept by the classifier leader */
  usage: (gid: string) => `usage.${token(gid, "gateway id")}`,
  usagePrefix: "usage.",
  /** ownership claim of the upstream session actor for (sid, gid) */
  upstreamClaim: (sid: string, gid: string) => `up.${token(sid, "session id")}.${token(gid, "gateway id")}`,
  upstreamClaimPrefix: "up.",
  /** (sid, gid) of an `up.<sid>.<gid>` key; null for any other key */
  parseUpstreamClaim(key: string): { sid: string; gid: string } | null {
    const parts = key.split(".");
    return parts.length === 3 && parts[0] === "up" && isSubjectToken(parts[1]!) && isSubjectToken(parts[2]!) ? { sid: parts[1]!, gid: parts[2]! } : null;
  },
  /** a downstream (edge) session record */
  downstreamSession: (sid: string) => `ds.${token(sid, "session id")}`,
  downstreamSessionPrefix: "ds.",
} as const;

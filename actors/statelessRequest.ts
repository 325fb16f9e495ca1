// How the edge tells a 2026-07-28 request from a session request, checks its envelope (the
// revision's validation ladder, first failure wins, as the Python SDK's server applies it),
// and answers `server/discover`. Pure: the HTTP layer passes the body and headers in.
import {
  ERROR_HTTP_STATUS,
  HEADER,
  isSessionVersion,
  isStatelessVersion,
  META,
  NAME_BEARING_METHODS,
  RequestEnvelopeSchema,
  RESULT_TYPE,
  REVISION_ERROR,
  STATELESS_PROTOCOL_VERSIONS,
  type CacheHints,
  type DiscoverResult,
  type RequestEnvelope,
} from "../protocol/revision2026.ts";

export type Era = "session" | "stateless";

/**
 * Which era a POST belongs to. Stateless: its `MCP-Protocol-Version` header names a version
 * that has no handshake (an unknown one too, so that it is told which versions are served),
 * or it has neither header nor `Mcp-Session-Id` and is not `initialize` yet carries the
 * revision's envelope (so that it is told the header is missing, not that a session is).
 * Everything else is a session request, served as before.
 */
export function eraOf(req: { versionHeader: string | undefined; sessionId: string | undefined; body: unknown }): Era {
  if (req.versionHeader !== undefined) return isSessionVersion(req.versionHeader) ? "session" : "stateless";
  if (req.sessionId !== undefined) return "session";
  const body = req.body as { method?: unknown; params?: { _meta?: Record<string, unknown> } } | null;
  if (typeof body !== "object" || body === null || body.method === "initialize") return "session";
  const meta = body.params?._meta;
  return typeof meta === "object" && meta !== null && META.protocolVersion in meta ? "stateless" : "session";
}

export type Rejection = { code: number; message: string; data?: unknown; status: number };
export type Accepted = { version: string; envelope: RequestEnvelope };

const reject = (code: number, message: string, data?: unknown): Rejection => ({ code, message, ...(data === undefined ? {} : { data }), status: ERROR_HTTP_STATUS[code] ?? 200 });

/** The revision's answer to a version it does not serve. */
export function unsupportedVersion(requested: string | null): Rejection {
  return reject(REVISION_ERROR.unsupportedProtocolVersion, "Unsupported protocol version", { supported: [...STATELESS_PROTOCOL_VERSIONS], requested });
}

/** Decodes a header value the client base64-wrapped (`=?base64?…?=`) because it was no plain token; null when malformed. */
export function decodeHeaderValue(value: string | undefined): string | null | undefined {
  if (value === undefined) return undefined;
  const m = /^=\?base64\?(.*)\?=$/.exec(value);
  if (!m) return value;
  const bytes = Buffer.from(m[1]!, "base64");
  if (bytes.toString("base64") !== m[1]) return null; // not canonical: never matches by accident
  const text = bytes.toString("utf8");
  return Buffer.from(text, "utf8").equals(bytes) ? text : null;
}

/**
 * The ladder for one stateless JSON-RPC request (`headers` lower-case): the envelope in
 * `params._meta` (version and capabilities) → else invalid params; `MCP-Protocol-Version`,
 * `Mcp-Method` and `Mcp-Name` agree with the body → else header mismatch; the version is one
 * served → else unsupported version, naming the versions served. The method itself is the
 * dispatch table's to judge.
 */
export function checkStatelessRequest(body: { method: string; params?: unknown }, headers: Record<string, string | undefined>): Accepted | Rejection {
  const params = (typeof body.params === "object" && body.params !== null ? body.params : {}) as Record<string, unknown>;
  const meta = params._meta;
  if (typeof meta !== "object" || meta === null) return reject(REVISION_ERROR.invalidParams, `params._meta must be an object carrying ${META.protocolVersion} and ${META.clientCapabilities}`);
  const missing = [META.protocolVersion, META.clientCapabilities].filter((k) => !(k in meta));
  if (missing.length > 0) return reject(REVISION_ERROR.invalidParams, `params._meta is missing ${missing.join(", ")}`);
  const version = (meta as Record<string, unknown>)[META.protocolVersion];
  if (headers[HEADER.protocolVersion] === undefined || headers[HEADER.protocolVersion] !== version) return reject(REVISION_ERROR.headerMismatch, `${HEADER.protocolVersion} header does not match the request's protocol version`);
  if (headers[HEADER.method] !== body.method) return reject(REVISION_ERROR.headerMismatch, `${HEADER.method} header does not match the request's method`);
  const nameKey = NAME_BEARING_METHODS[body.method];
  if (nameKey !== undefined && params[nameKey] !== undefined && decodeHeaderValue(headers[HEADER.name]) !== params[nameKey]) {
    return reject(REVISION_ERROR.headerMismatch, `${HEADER.name} header does not match the request's ${nameKey}`);
  }
  if (typeof version !== "string") return reject(REVISION_ERROR.invalidParams, "the protocol version in params._meta must be a string");
  if (!isStatelessVersion(version)) return unsupportedVersion(version);
  const envelope = RequestEnvelopeSchema.safeParse(meta);
  if (!envelope.success) return reject(REVISION_ERROR.invalidParams, `invalid params._meta: ${envelope.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return { version, envelope: envelope.data };
}

export const isRejection = (r: Accepted | Rejection): r is Rejection => "code" in r;

/**
 * mcpgw's answer to `server/discover`: the versions it serves without a session, what it offers
 * on this endpoint (`capabilities`, as the session handshake declares them, less what the
 * revision has no place for: tasks, a session-era feature here), and who it is. The same for
 * every caller of the endpoint, so it may be cached across credentials.
 */
export function discoverResult(opts: { capabilities: Record<string, unknown>; serverInfo: { name: string; version: string }; instructions?: string; ttlMs: number }): DiscoverResult {
  const { tasks: _tasks, ...capabilities } = opts.capabilities;
  return {
    supportedVersions: [...STATELESS_PROTOCOL_VERSIONS],
    capabilities,
    ...(opts.instructions ? { instructions: opts.instructions } : {}),
    resultType: RESULT_TYPE.complete,
    ttlMs: opts.ttlMs,
    cacheScope: "public",
    _meta: { [META.serverInfo]: opts.serverInfo },
  };
}

/**
 * The cache hints of a list for a stateless client. Private: a list is the catalog of the
 * gateways this credential reaches, which is not everyone's. `ttlMs`: how long a list stays
 * good, at most until the next discovery could change it.
 */
export function listCacheHints(ttlMs: number): CacheHints {
  return { ttlMs, cacheScope: "private" };
}

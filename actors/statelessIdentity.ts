// Whose upstream state a stateless (2026-07-28) request reaches. A session client's upstream
// sessions are keyed by its session (sessionKey of its Mcp-Session-Id); a stateless client has
// no session, so its upstream sessions are keyed by who it is: a keyed digest of its credential
// and of the partition it may name. Two credentials never meet on one upstream session, and
// every call of one credential (and partition) reuses the same upstream sessions, one per
// gateway, instead of paying an upstream `initialize` per call.
import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { z } from "zod";
import type { DownstreamSession } from "../protocol/edge.ts";
import type { RequestEnvelope } from "../protocol/revision2026.ts";
import { META } from "../protocol/revision2026.ts";

/**
 * The partition a stateless client may name (header `Mcpgw-Partition`): separate upstream state
 * under one credential, e.g. one per sub-agent. Not a secret and not an authority: it only
 * divides what the credential already owns.
 */
export const PartitionSchema = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, "must be 1-64 of A-Z, a-z, 0-9, '.', '_' and '-'");

/** Request state mcpgw hands a stateless client (an input-required round trip), as it comes back. */
export type SealedState = { sid: string; gid: string; payload: Record<string, unknown> };

export class StatelessIdentity {
  readonly #sessionKey: Buffer;
  readonly #stateKey: Buffer;

  /** `secretKeyHex`: MCPGW_SECRET_KEY; the same on every worker, so every worker derives the same keys. */
  constructor(secretKeyHex: string) {
    const ikm = Buffer.from(secretKeyHex, "hex");
    this.#sessionKey = Buffer.from(hkdfSync("sha256", ikm, Buffer.alloc(0), "mcpgw stateless session key", 32));
    this.#stateKey = Buffer.from(hkdfSync("sha256", ikm, Buffer.alloc(0), "mcpgw stateless request state", 32));
  }

  /**
   * The session key (`sid`) of a stateless client's upstream sessions: 32 hex digits, the form
   * `sessionKey` gives, so upstream session actors, subjects and KV keys take it unchanged.
   * `credential`: the bearer token ("" for the anonymous client of MCPGW_EDGE_AUTH=none);
   * `partition`: the client's `Mcpgw-Partition`, if any; `capabilities`: the request's, of which
   * those its upstream session declares (`relayCapabilities`) count. Keyed (HMAC under a key derived from
   * MCPGW_SECRET_KEY), so no one who lacks the secret key can tie a sid to a credential; the
   * "s" before it keeps it apart from every sessionKey input.
   */
  sessionKeyOf(credential: string, partition?: string, capabilities: Record<string, unknown> = {}): string {
    const p = partition === undefined ? "" : PartitionSchema.parse(partition);
    const profile = canonicalJson(relayCapabilities(capabilities));
    // no capability to relay: the key of the credential (and partition) alone
    const input = profile === "{}" ? ["s", credential, p] : ["s", credential, p, profile];
    return createHmac("sha256", this.#sessionKey).update(JSON.stringify(input)).digest("hex").slice(0, 32);
  }

  /**
   * A `requestState` for a stateless client: what mcpgw needs when the client repeats its request
   * with the answers to an upstream's requests (which upstream session and call). Signed and
   * bound to the session key: only the credential (and partition) it was given to can use it,
   * and no one can forge or alter it. Readable by the client: hold nothing secret in `payload`.
   */
  sealState(state: SealedState): string {
    const body = Buffer.from(JSON.stringify([state.sid, state.gid, state.payload])).toString("base64url");
    return `${body}.${this.#tag(body)}`;
  }

  /** The state sealed for `sid`, or null when it is not one this key sealed for this sid (forged, altered, another client's). */
  openState(sid: string, token: string): SealedState | null {
    const dot = token.indexOf(".");
    if (dot <= 0 || token.length > 65_536) return null;
    const body = token.slice(0, dot);
    const tag = Buffer.from(token.slice(dot + 1), "base64url");
    const expected = Buffer.from(this.#tag(body), "base64url");
    if (tag.length !== expected.length || !timingSafeEqual(tag, expected)) return null;
    try {
      const [owner, gid, payload] = JSON.parse(Buffer.from(body, "base64url").toString("utf8")) as [string, string, Record<string, unknown>];
      if (owner !== sid || typeof gid !== "string" || typeof payload !== "object" || payload === null) return null;
      return { sid: owner, gid, payload };
    } catch {
      return null;
    }
  }

  #tag(body: string): string {
    return createHmac("sha256", this.#stateKey).update(body).digest("base64url");
  }
}

/**
 * The capabilities of a stateless request that its upstream session declares upstream: those an
 * upstream's requests to the client need (sampling, elicitation, roots). An upstream session is
 * initialized once, so they are part of its key (`sessionKeyOf`): a request that declares
 * others reaches another upstream session of the same credential, never one that declared
 * more or less than it did.
 */
export function relayCapabilities(capabilities: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name of ["elicitation", "roots", "sampling"]) if (capabilities[name] !== undefined && capabilities[name] !== null) out[name] = capabilities[name];
  return out;
}

/** JSON with every object's keys sorted: equal values, equal text. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

/**
 * The client session record the edge's dispatch table reads, for one stateless request: built
 * from the request's envelope and never stored (there is no session to store). It has no views:
 * the revision wants lists that do not depend on earlier requests, so a stateless client's
 * lists always come from the shared catalog.
 */
export function statelessRecord(opts: { sid: string; owner: string; scope: string | null; envelope: RequestEnvelope; now: Date }): DownstreamSession {
  const { envelope } = opts;
  const at = opts.now.toISOString();
  return {
    sid: opts.sid,
    owner: opts.owner,
    gid: opts.scope,
    protocolVersion: envelope[META.protocolVersion],
    clientInfo: envelope[META.clientInfo] ?? { name: "unknown", version: "unknown" },
    capabilities: envelope[META.clientCapabilities],
    createdAt: at,
    lastSeenAt: at,
    ...(envelope[META.logLevel] ? { logLevel: envelope[META.logLevel] } : {}),
  };
}

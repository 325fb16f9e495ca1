import { createHash, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

const digest = (s: string) => createHash("sha256").update(s).digest();

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(header: string | undefined): string | null {
  return /^Bearer\s+(\S+)\s*$/i.exec(header ?? "")?.[1] ?? null;
}

/** Checks a presented token against every configured token in constant time. */
export function tokenMatches(token: string, tokens: Buffer[]): boolean {
  const presented = digest(token);
  let ok = false;
  // Every token is compared (no early exit), each on equal-length digests.
  for (const t of tokens) ok = timingSafeEqual(presented, t) || ok;
  return ok;
}

const OWNER_DIGESTS_MAX = 1024;

/**
 * Who owns a client session: a keyed digest of the credential that created it. The record
 * in KV (readable by `viewer`) holds the digest, never the credential; without the key,
 * derived from MCPGW_SECRET_KEY, it cannot be matched against guessed tokens.
 */
export class SessionOwners {
  readonly #key: Buffer;
  /**
   * Digests of credentials seen: an HMAC per request is measurable on the call path. Only
   * accepted credentials get here (a configured token, or "" without client auth), so it holds
   * at most those; bounded anyway.
   */
  readonly #digests = new Map<string, string>();

  constructor(secretKeyHex: string) {
    this.#key = Buffer.from(hkdfSync("sha256", Buffer.from(secretKeyHex, "hex"), Buffer.alloc(0), "mcpgw edge session owner", 32));
  }

  /** The owner digest (hex) of a credential; "" is the anonymous client of `MCPGW_EDGE_AUTH=none`. */
  of(credential: string): string {
    let owner = this.#digests.get(credential);
    if (owner === undefined) {
      owner = createHmac("sha256", this.#key).update(credential).digest("hex");
      if (this.#digests.size >= OWNER_DIGESTS_MAX) this.#digests.clear();
      this.#digests.set(credential, owner);
    }
    return owner;
  }

  /** Whether `credential` is `owner`, in constant time. */
  owns(owner: string, credential: string): boolean {
    const expected = Buffer.from(owner, "hex");
    const presented = Buffer.from(this.of(credential), "hex");
    return expected.length === presented.length && timingSafeEqual(expected, presented);
  }
}

export function tokenDigests(tokens: string[]): Buffer[] {
  return tokens.map(digest);
}

/** Whether a socket's peer is on this host: 127.0.0.0/8 or ::1, also IPv4-mapped. */
export function isLoopbackAddress(address: string | undefined): boolean {
  const v4 = address?.startsWith("::ffff:") ? address.slice(7) : address;
  return address === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4 ?? "");
}

const LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"];

/**
 * Host and Origin checks against DNS rebinding: a browser page on another site may reach a
 * loopback port, but it cannot make the Host header name our host nor hide its Origin.
 */
export class HostGuard {
  readonly #hosts: Set<string>;
  readonly #origins: Set<string>;

  constructor(opts: { bindHost: string; port: number; allowedHosts: string[]; allowedOrigins: string[] }) {
    const bind = opts.bindHost.includes(":") && !opts.bindHost.startsWith("[") ? `[${opts.bindHost}]` : opts.bindHost;
    const names = new Set([...LOOPBACK_HOSTS, ...(bind === "0.0.0.0" || bind === "[::]" ? [] : [bind])]);
    this.#hosts = new Set([...[...names].map((h) => `${h}:${opts.port}`), ...opts.allowedHosts.map((h) => h.toLowerCase())]);
    this.#origins = new Set([
      ...[...names].flatMap((h) => [`http://${h}:${opts.port}`, `https://${h}:${opts.port}`]),
      ...opts.allowedOrigins.map((o) => o.toLowerCase()),
    ]);
  }

  /** Why the request is refused, or null when its Host and Origin are acceptable. */
  refusal(req: IncomingMessage): string | null {
    const host = (req.headers.host ?? "").toLowerCase();
    if (!this.#hosts.has(host)) return `Host header not allowed: ${JSON.stringify(host.slice(0, 256))}`;
    const origin = req.headers.origin?.toLowerCase();
    if (origin !== undefined && !this.#origins.has(origin)) return `Origin not allowed: ${JSON.stringify(origin.slice(0, 256))}`;
    return null;
  }
}

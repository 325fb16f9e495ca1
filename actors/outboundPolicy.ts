// Which addresses a gateway may contact. Pure: parses an IP literal in any spelling and
// classifies it; the runtime applies it to every address it connects to, the registry to
// literal URL hosts at registration.
import ipaddr from "ipaddr.js";

/** Classes an operator may deny on top of the always-denied ones (`MCPGW_OUTBOUND_DENY`). */
export const DENIABLE_CLASSES = ["loopback", "private"] as const;
export type DeniableClass = (typeof DENIABLE_CLASSES)[number];

/** Never contacted: cloud metadata, link-local, and addresses no upstream can have. */
const ALWAYS_DENIED = ["metadata", "link-local", "unspecified", "broadcast", "multicast"] as const;

export type AddressClass = (typeof ALWAYS_DENIED)[number] | DeniableClass | "public";

export type OutboundPolicy = { deny: readonly DeniableClass[] };

/** The always-denied classes only: what registration refuses, and the default. */
export const DEFAULT_OUTBOUND_POLICY: OutboundPolicy = { deny: [] };

/** Metadata services outside link-local ranges (Alibaba Cloud; AWS over IPv6). */
const METADATA = [ipaddr.parse("100.100.100.200"), ipaddr.parse("fd00:ec2::254")];

const RANGE_CLASS: Record<string, AddressClass> = {
  linkLocal: "link-local",
  unspecified: "unspecified",
  broadcast: "broadcast",
  multicast: "multicast",
  loopback: "loopback",
  private: "private",
  carrierGradeNat: "private",
  uniqueLocal: "private",
};

type Address = ipaddr.IPv4 | ipaddr.IPv6;

/**
 * An IP literal in any spelling (integer, hex, octal, short forms; IPv6 with brackets, zone
 * or trailing dots) as an address, or null for a name.
 */
export function parseAddress(text: string): Address | null {
  let t = text.trim();
  if (t.startsWith("[") && t.endsWith("]")) t = t.slice(1, -1);
  t = t.replace(/\.+$/, "").replace(/%.*$/, "");
  return ipaddr.isValid(t) ? ipaddr.parse(t) : null;
}

/**
 * The IPv4 address an IPv6 address carries and that a connection to it reaches: IPv4-mapped
 * and -translated, IPv4-compatible, NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and 6to4.
 */
function embeddedIPv4(a: ipaddr.IPv6): ipaddr.IPv4 | null {
  const p = a.parts;
  const fromWords = (hi: number, lo: number) => new ipaddr.IPv4([hi >> 8, hi & 0xff, lo >> 8, lo & 0xff]);
  const range = a.range();
  if (range === "ipv4Mapped" || range === "rfc6145" || range === "rfc6052") return fromWords(p[6]!, p[7]!);
  if (range === "6to4") return fromWords(p[1]!, p[2]!);
  const compatible = p.slice(0, 6).every((w) => w === 0) && (p[6] !== 0 || p[7]! > 1);
  return compatible ? fromWords(p[6]!, p[7]!) : null;
}

function classOf(a: Address): AddressClass {
  if (a.kind() === "ipv6") {
    const v4 = embeddedIPv4(a as ipaddr.IPv6);
    if (v4) return classOf(v4);
  }
  if (METADATA.some((m) => m.kind() === a.kind() && m.toNormalizedString() === a.toNormalizedString())) return "metadata";
  return RANGE_CLASS[a.range()] ?? "public";
}

/** The class of an IP literal in any spelling; null for a name (it is judged by what it resolves to). */
export function classifyAddress(text: string): AddressClass | null {
  const a = parseAddress(text);
  return a ? classOf(a) : null;
}

/** Why `address` (an IP literal) may not be contacted under `policy`; null when it may, or when it is a name. */
export function outboundRefusal(address: string, policy: OutboundPolicy): string | null {
  const cls = classifyAddress(address);
  if (cls === null || cls === "public") return null;
  const denied = (ALWAYS_DENIED as readonly string[]).includes(cls) || (policy.deny as readonly string[]).includes(cls);
  return denied ? `address ${address} is not allowed (${cls})` : null;
}

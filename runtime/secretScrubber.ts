// Masks a gateway's own secret values in whatever an upstream (or a library talking to it)
// hands back: call errors, log lines, status, events. The one mechanism for every path.
import { MASK, mapGatewaySecrets, type GatewayRecord } from "../protocol/gateway.ts";

export type Scrubber = {
  /** `text` with every form of every secret masked */
  text(text: string): string;
  /** a JSON value with every string in it (keys too) masked; other values as they are */
  value<T>(value: T): T;
};

/**
 * The scrubber of one gateway's secrets: bearer token, basic `username:password` and its
 * base64 form, password, auth header values, query parameter values (of `auth` and typed
 * into the URL), TLS key, stdio environment values. Each is masked however short it is,
 * raw and in the encodings it travels in (URL, form, JSON string), longest first, so a
 * secret containing a shorter one is masked whole.
 */
export function gatewayScrubber(record: GatewayRecord, open: (sealed: string, gid: string) => string): Scrubber {
  const secrets = new Set(record.url ? urlSecrets(record.url) : []);
  try {
    const clear = mapGatewaySecrets(record, (sealed) => {
      const plain = open(sealed, record.id);
      secrets.add(plain);
      return plain;
    });
    if (clear.auth.type === "basic") {
      const pair = `${clear.auth.username}:${clear.auth.password}`;
      secrets.add(pair);
      secrets.add(Buffer.from(pair).toString("base64"));
    }
  } catch {
    // a secret that cannot be opened cannot leak either
  }
  const forms = [...secrets].flatMap((x) => [x, encodeURIComponent(x), new URLSearchParams({ x }).toString().slice(2), JSON.stringify(x).slice(1, -1)]);
  const ordered = [...new Set(forms)].filter((x) => x !== "").sort((a, b) => b.length - a.length);
  const text = (t: string) => {
    for (const form of ordered) if (t.includes(form)) t = t.split(form).join(MASK);
    return t;
  };
  const value = (v: unknown): unknown => {
    if (typeof v === "string") return text(v);
    if (Array.isArray(v)) return v.map(value);
    if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [text(k), value(x)]));
    return v;
  };
  return { text, value: <T>(v: T) => (ordered.length === 0 ? v : (value(v) as T)) };
}

/** An error's text, masked, then cut to a length fit for a status line or a log. */
export function scrubbedError(err: unknown, scrub: Scrubber): Error {
  // cut only after masking: a secret across the cut would otherwise leave a part in clear
  return new Error(scrub.text(err instanceof Error ? err.message : String(err)).slice(0, 1000));
}

/** Query parameter values of a URL, raw as typed and decoded (user info is refused at validation). */
function urlSecrets(url: string): string[] {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return [];
  }
  const raw = u.search.slice(1).split("&").map((pair) => pair.slice(pair.indexOf("=") + 1 || pair.length));
  return [...raw, ...u.searchParams.values()];
}

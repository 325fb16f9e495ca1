import { UPSTREAM_ERROR_MAX } from "../protocol/gateway.ts";

/**
 * An upstream's error as one short line, for a gateway's status or a client's error: it can be
 * a whole HTML page. Its secrets are masked before it gets here (a cut could split one).
 */
export function shortErrorText(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s+/g, " ").trim().slice(0, UPSTREAM_ERROR_MAX);
}

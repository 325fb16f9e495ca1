// The socket side of the outbound policy: every HTTP connection to an upstream (calls,
// polls, each redirect hop) is opened by this connector, which checks the address it is
// about to connect to, so a name that resolves (or rebinds) to a denied address is never
// contacted.
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions, type LookupOneOptions } from "node:dns";
import type { LookupFunction } from "node:net";
import { buildConnector } from "undici";
import { outboundRefusal, type OutboundPolicy } from "../actors/outboundPolicy.ts";

/** A connection the outbound policy refused; its message names the address. */
export class OutboundRefusedError extends Error {
  override name = "OutboundRefusedError";
  readonly code = "MCPGW_OUTBOUND_REFUSED";
}

type Resolve = (hostname: string, options: LookupAllOptions, callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

/**
 * A `lookup` for `net.connect` that fails when the name resolves to any refused address
 * (all of them are checked: with happy eyeballs the socket may try each).
 */
export function guardedLookup(policy: OutboundPolicy, resolve: Resolve = dnsLookup): LookupFunction {
  return (hostname, options: LookupOneOptions | LookupAllOptions, callback: (...args: any[]) => void) => {
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err);
      for (const { address } of addresses) {
        const refusal = outboundRefusal(address, policy);
        if (refusal) return callback(new OutboundRefusedError(`${hostname}: ${refusal}`));
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first) return callback(Object.assign(new Error(`${hostname} resolved to no address`), { code: "ENOTFOUND" }));
      callback(null, first.address, first.family);
    });
  };
}

/**
 * An undici connector that refuses before connecting: a literal host (net.connect does no
 * lookup for one) is checked here, a name on the addresses it resolves to.
 */
export function guardedConnector(policy: OutboundPolicy, options: buildConnector.BuildOptions = {}): buildConnector.connector {
  const connect = buildConnector({ ...options, lookup: guardedLookup(policy) });
  return (opts, callback) => {
    const refusal = outboundRefusal(opts.hostname, policy);
    if (refusal) callback(new OutboundRefusedError(refusal), null);
    else connect(opts, callback);
  };
}

/** The refusal behind a failed fetch (undici wraps it as the cause of "fetch failed"), if that is why it failed. */
export function outboundRefusalOf(err: unknown): OutboundRefusedError | null {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof OutboundRefusedError) return e;
  }
  return null;
}

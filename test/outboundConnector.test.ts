// The outbound guard on real connections: an upstream connection (streamable HTTP and SSE)
// never opens a socket to a refused address, whether the URL names it, a name resolves to
// it, or a redirect points at it.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Agent, fetch } from "undici";
import { DEFAULT_OUTBOUND_POLICY, type OutboundPolicy } from "../actors/outboundPolicy.ts";
import type { GatewayRecord } from "../protocol/gateway.ts";
import { connectUpstream } from "../runtime/mcpClient.ts";
import { guardedConnector, guardedLookup, outboundRefusalOf, OutboundRefusedError } from "../runtime/outboundConnector.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { gatewayRecord } from "./helpers/gateways.ts";

let fixture: FixtureHttp;
let redirector: Server;
/** every request the redirector got (it answers each with a redirect to its `to` query parameter) */
const redirected: string[] = [];

before(async () => {
  fixture = await startFixtureHttp();
  redirector = createServer((req, res) => {
    redirected.push(req.url ?? "");
    const to = new URL(req.url ?? "/", "http://x").searchParams.get("to") ?? "/";
    req.resume();
    res.writeHead(307, { location: to }).end();
  });
  await new Promise<void>((r) => redirector.listen(0, "127.0.0.1", r));
});

after(async () => {
  redirector?.closeAllConnections();
  await new Promise((r) => redirector?.close(r));
  await fixture?.close();
});

const LOOPBACK_DENIED: OutboundPolicy = { deny: ["loopback"] };

const record = (transport: "streamable-http" | "sse", url: string): GatewayRecord => gatewayRecord({ name: "guarded", transport, url });

const connect = (transport: "streamable-http" | "sse", url: string, outbound: OutboundPolicy) =>
  connectUpstream({
    record: record(transport, url),
    open: () => assert.fail("this gateway has no secrets"),
    initialHeaders: {},
    timeoutMs: 20_000,
    outbound,
    onNotification: () => {},
    onClosed: () => {},
    onError: () => {},
  });

const redirectTo = (target: string) => `http://127.0.0.1:${(redirector.address() as AddressInfo).port}/mcp?to=${encodeURIComponent(target)}`;

describe("outbound guard on upstream connections", () => {
  for (const transport of ["streamable-http", "sse"] as const) {
    const urlOf = (name: string, host = "127.0.0.1") => {
      const u = new URL(transport === "sse" ? fixture.sseUrl(name) : fixture.url(name));
      u.hostname = host;
      return u.toString();
    };

    // the SSE transport reports the reason inside its own "SSE error: …"
    it(`${transport}: a denied literal address is refused before any socket opens`, async () => {
      const name = `literal-${transport}`;
      await assert.rejects(connect(transport, urlOf(name), LOOPBACK_DENIED), /(^|: )address 127\.0\.0\.1 is not allowed \(loopback\)$/);
      assert.equal(fixture.gateway(name).stats.headers.length, 0, "the upstream got no request");
    });

    it(`${transport}: a name resolving to a denied address is refused on the address it resolves to`, async () => {
      const name = `name-${transport}`;
      await assert.rejects(connect(transport, urlOf(name, "localhost"), LOOPBACK_DENIED), /(^|: )localhost: address (127\.0\.0\.1|::1) is not allowed \(loopback\)$/);
      assert.equal(fixture.gateway(name).stats.headers.length, 0, "the upstream got no request");
    });

    it(`${transport}: loopback is allowed by default`, async () => {
      const conn = await connect(transport, urlOf(`allowed-${transport}`, "localhost"), DEFAULT_OUTBOUND_POLICY);
      await conn.client.ping();
      await conn.close();
    });

    // The SDK follows redirects only within the origin; the hop out is never made.
    it(`${transport}: a redirect to a metadata address is not followed`, async () => {
      await assert.rejects(connect(transport, redirectTo("http://169.254.169.254/latest/meta-data"), DEFAULT_OUTBOUND_POLICY), /Redirect to http:\/\/169\.254\.169\.254\/latest\/meta-data not followed/);
    });
  }
});

describe("outbound guard on redirect hops", () => {
  // What a fetch that follows redirects meets: every hop is a connection of the guarded agent.
  for (const target of ["http://169.254.169.254/latest/meta-data", "http://[::ffff:a9fe:a9fe]/", "http://2852039166/", "http://[fd00:ec2::254]/", "http://100.100.100.200/"]) {
    it(`refuses the hop to ${target}`, async () => {
      const agent = new Agent({ connect: guardedConnector(DEFAULT_OUTBOUND_POLICY) });
      const before = redirected.length;
      try {
        const err = await fetch(redirectTo(target), { dispatcher: agent, method: "POST", body: "{}" }).then(
          () => assert.fail("the redirect was followed"),
          (e: unknown) => e,
        );
        const refusal = outboundRefusalOf(err);
        assert.ok(refusal, `refused by the guard, not a failed connect: ${String((err as Error).cause ?? err)}`);
        assert.match(refusal.message, /^address \S+ is not allowed \((link-local|metadata)\)$/);
        assert.equal(redirected.length, before + 1, "the first hop was made");
      } finally {
        await agent.close();
      }
    });
  }
});

describe("guarded connector", () => {
  const connectWith = (policy: OutboundPolicy, protocol: "http:" | "https:", hostname: string) =>
    new Promise<Error | null>((resolve) =>
      guardedConnector(policy)({ hostname, host: hostname, protocol, port: "9" }, (err, socket) => {
        socket?.destroy();
        resolve(err);
      }),
    );

  it("checks TLS connections as it checks plain ones, on the resolved address", async () => {
    for (const protocol of ["http:", "https:"] as const) {
      const err = await connectWith(LOOPBACK_DENIED, protocol, "localhost");
      assert.ok(err instanceof OutboundRefusedError, `${protocol} ${String(err)}`);
      const literal = await connectWith(DEFAULT_OUTBOUND_POLICY, protocol, "169.254.169.254");
      assert.ok(literal instanceof OutboundRefusedError, `${protocol} ${String(literal)}`);
      // allowed: the connect is tried (nothing listens on port 9)
      const allowed = await connectWith(DEFAULT_OUTBOUND_POLICY, protocol, "localhost");
      assert.equal((allowed as NodeJS.ErrnoException | null)?.code, "ECONNREFUSED", `${protocol} ${String(allowed)}`);
    }
  });
});

describe("guarded lookup", () => {
  /** a resolver that answers every name with `addresses` */
  const resolvingTo = (...addresses: string[]) =>
    guardedLookup(DEFAULT_OUTBOUND_POLICY, (_host, _opts, cb) => cb(null, addresses.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }))));
  const lookup = (fn: ReturnType<typeof resolvingTo>, all: boolean) =>
    new Promise<unknown>((resolve, reject) =>
      fn("rebind.example", { all }, (err: Error | null, address: unknown, family?: number) => (err ? reject(err) : resolve(all ? address : { address, family }))),
    );

  it("refuses a name that resolves to a metadata address, whichever form is asked for", async () => {
    for (const all of [false, true]) {
      await assert.rejects(lookup(resolvingTo("169.254.169.254"), all), { message: "rebind.example: address 169.254.169.254 is not allowed (link-local)" });
      // happy eyeballs may try any of them: one refused address refuses the name
      await assert.rejects(lookup(resolvingTo("93.184.215.14", "::ffff:169.254.169.254"), all), OutboundRefusedError);
      await assert.rejects(lookup(resolvingTo("fd00:ec2::254"), all), /is not allowed \(metadata\)/);
    }
  });

  it("passes allowed addresses through in the form asked for", async () => {
    assert.deepEqual(await lookup(resolvingTo("93.184.215.14", "2606:2800::1"), false), { address: "93.184.215.14", family: 4 });
    assert.deepEqual(await lookup(resolvingTo("93.184.215.14", "2606:2800::1"), true), [
      { address: "93.184.215.14", family: 4 },
      { address: "2606:2800::1", family: 6 },
    ]);
  });
});

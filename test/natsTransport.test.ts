// The runtime's NATS transport (runtime/natsTransport.ts) against a real nats-server: what is
// published within one turn of the event loop leaves in one socket write, in order; flush()
// still waits for everything before it; a burst is written in bounded chunks; closing and
// draining lose nothing nats.js's own transport would send; a reconnected connection gathers again.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { subjects } from "../protocol/subjects.ts";
import { GatheringTransport } from "../runtime/natsTransport.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";

type Internals = { protocol: { transport: { _send(b: Uint8Array): Promise<void> } } };
const transportOf = (nc: NatsConnection) => (nc as unknown as Internals).protocol.transport;

/** Sizes of the socket writes `nc`'s current transport makes from now on. */
function recordWrites(nc: NatsConnection): number[] {
  const sizes: number[] = [];
  const transport = transportOf(nc);
  const send = transport._send.bind(transport);
  transport._send = (b) => {
    sizes.push(b.length);
    return send(b);
  };
  return sizes;
}

/** Publishes `count` messages, each from a timer of its own (one macrotask each), all due together. */
function publishFromTimers(nc: NatsConnection, subject: string, count: number, size = 8): Promise<void> {
  return new Promise((resolve) => {
    let left = count;
    for (let i = 0; i < count; i++) {
      setTimeout(() => {
        nc.publish(subject, new TextEncoder().encode(String(i).padStart(size, "0")));
        if (--left === 0) resolve();
      }, 0);
    }
  });
}

const s = subjects("mcpgw");
const subject = s.upstream.op("s1", "g1", "notify");

describe("the gathering NATS transport", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats.stop();
  });

  it("sends what is published from many timers of one turn in one write, in order", async () => {
    const pub = await nats.connect();
    const sub = await nats.connect();
    assert.ok(transportOf(pub) instanceof GatheringTransport);
    const got: string[] = [];
    sub.subscribe(subject, { callback: (_e, m) => void got.push(m.string()) });
    await sub.flush();
    const writes = recordWrites(pub);
    await publishFromTimers(pub, subject, 100);
    await pub.flush();
    // nats.js alone writes once per timer (100); the PING of flush() joins the same write or the next
    assert.ok(writes.length <= 2, `${writes.length} writes for 100 messages`);
    await until("every message at the subscriber", () => got.length === 100, 20_000);
    assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => String(i).padStart(8, "0")));
  });

  it("flush() resolves only after the server has everything published before it", async () => {
    const nc = await nats.connect();
    const got: Msg[] = [];
    nc.subscribe(subject, { callback: (_e, m) => void got.push(m) });
    await nc.flush();
    const published = publishFromTimers(nc, subject, 50);
    // flush() asked from a timer due with the publishing ones: its PING follows them on the wire
    const flushed = new Promise<number>((resolve) => setTimeout(() => void nc.flush().then(() => resolve(got.length)), 0));
    await published;
    // the server answers the PING after delivering what came before it to this same connection
    assert.equal(await flushed, 50);
  });

  it("writes a burst in chunks bounded by nats.js's flush threshold, not all at the end of the turn", async () => {
    const pub = await nats.connect();
    const sub = await nats.connect();
    let received = 0;
    sub.subscribe(subject, { callback: () => void received++ });
    await sub.flush();
    const writes = recordWrites(pub);
    await publishFromTimers(pub, subject, 200, 1024);
    await pub.flush();
    const bytes = writes.reduce((a, b) => a + b, 0);
    assert.ok(bytes > 200 * 1024);
    assert.ok(writes.length >= Math.floor(bytes / (33 * 1024)), `${writes.length} writes for ${bytes} bytes`);
    assert.ok(Math.max(...writes) < 34 * 1024, `largest write ${Math.max(...writes)} bytes`);
    await until("every message at the subscriber", () => received === 200, 20_000);
  });

  it("close() writes what nats.js had handed it, drain() everything: as nats.js's own transport", async () => {
    const sub = await nats.connect();
    const got: string[] = [];
    sub.subscribe(subject, { callback: (_e, m) => void got.push(m.string()) });
    await sub.flush();
    const closing = await nats.connect();
    closing.publish(subject, "before close");
    // nats.js flushes its buffer to the transport in a microtask: by now it has; a gathering
    // transport still holds it until the end of the turn, and close() must not drop it
    await Promise.resolve();
    await closing.close();
    const draining = await nats.connect();
    draining.publish(subject, "before drain");
    await draining.drain();
    await until("both messages", () => got.length === 2, 20_000);
    assert.deepEqual(got.sort(), ["before close", "before drain"]);
  });

  it("gathers again after a reconnect, and what is published after it arrives", async () => {
    const pub = await nats.connect();
    const sub = await nats.connect();
    const first = transportOf(pub);
    await nats.stopServer();
    await nats.restartServer();
    await until("both connections back", () => transportOf(pub) !== first && transportOf(sub) !== first && pub.info && sub.info, 30_000);
    const got: string[] = [];
    sub.subscribe(subject, { callback: (_e, m) => void got.push(m.string()) });
    await until("the subscription at the server", async () => {
      await sub.flush().catch(() => {});
      pub.publish(subject, "probe");
      await pub.flush().catch(() => {});
      return got.length > 0;
    }, 30_000);
    assert.ok(transportOf(pub) instanceof GatheringTransport);
    got.length = 0;
    const writes = recordWrites(pub);
    await publishFromTimers(pub, subject, 20);
    await pub.flush();
    assert.ok(writes.length <= 2, `${writes.length} writes for 20 messages`);
    await until("every message after the reconnect", () => got.length === 20, 20_000);
  });
});

// The one follower of a NATS connection's status (runtime/nats.ts followConnection), against a
// real nats-server taken down and brought back: what it says, who hears of it (the session
// store, the reconnect metric) and that a connection is read by one status loop only.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { createMetrics, countReconnects } from "../runtime/metrics.ts";
import { followConnection, type ConnectionChange } from "../runtime/nats.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";

/** How many readers of `nc.status()` the connection has (nats.js internals: a test may). */
const statusReaders = (nc: NatsConnection) => (nc as unknown as { protocol: { listeners: unknown[] } }).protocol.listeners.length;

describe("the connection follower", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats.stop();
  });

  it("is one per connection, read by one status loop, and tells every subscriber of an outage and its end", async () => {
    const nc = await nats.connect();
    const before = statusReaders(nc);
    const follower = followConnection(nc);
    assert.equal(followConnection(nc), follower, "the same follower for the same connection");
    const metrics = createMetrics();
    countReconnects(nc, metrics);
    const heard: ConnectionChange[] = [];
    const stop = followConnection(nc).onChange((c) => heard.push(c));
    const stopped: ConnectionChange[] = [];
    followConnection(nc).onChange((c) => stopped.push(c))();
    assert.equal(statusReaders(nc), before + 1, "one status loop for all of them");
    assert.equal(follower.connected(), true);

    await nats.stopServer();
    await until("the disconnect noticed", () => !follower.connected(), 20_000);
    const back = follower.reconnected(30_000);
    assert.equal(await follower.reconnected(1), false, "a short wait ends without a reconnect");
    await nats.restartServer();
    assert.equal(await back, true);
    assert.equal(follower.connected(), true);
    assert.deepEqual(heard, ["disconnect", "reconnect"]);
    assert.deepEqual(stopped, [], "an unsubscribed listener hears nothing");
    assert.equal((await metrics.natsReconnects.get()).values[0]?.value, 1);

    stop();
    await nc.close();
    assert.equal(follower.connected(), false, "a closed connection is not connected");
    assert.deepEqual(heard, ["disconnect", "reconnect"]);
  });
});

// Replicated state on a 3-node NATS cluster: MCPGW_JS_REPLICAS brings every bucket and the
// event stream to its count, and never lowers it. The node-loss scenario (SIGKILL of the node
// leading the state under load) is test/cluster.nodeLoss.load.test.ts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { openStores } from "../runtime/nats.ts";
import { startNatsCluster, stateStreams, type TestNatsCluster } from "./helpers/natsCluster.ts";

let cluster: TestNatsCluster;

before(async () => {
  cluster = await startNatsCluster(3);
});
after(async () => {
  await cluster?.stop();
});

describe("replicated state on a 3-node NATS cluster", () => {
  it("a bucket or stream created with 1 replica is brought to 3, and a worker with the default never lowers it", async () => {
    const nc = await cluster.connect();
    const jsm = await jetstreamManager(nc);
    const replicas = () => Promise.all(stateStreams("rtest").map(async (s) => (await jsm.streams.info(s)).config.num_replicas));
    await openStores(nc, "rtest", 1);
    assert.deepEqual(await replicas(), [1, 1, 1, 1, 1, 1]);
    await openStores(nc, "rtest", 3);
    assert.deepEqual(await replicas(), [3, 3, 3, 3, 3, 3]);
    await openStores(nc, "rtest", 1);
    assert.deepEqual(await replicas(), [3, 3, 3, 3, 3, 3]);
  });
});

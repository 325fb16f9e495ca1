// The worker's copy of the gateway records answers `caughtUp` (read-your-writes for `gateway list`)
// without waiting out a stream election: the bucket's last revision comes from its stream leader,
// which after a NATS node loss takes nats-server 2.9 4-9 s to elect. A unit test with a bucket
// status that does not answer (the whole scenario on a real cluster: cluster.nodeLoss, and the
// list row of bench/cluster.bench.ts).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { KV, KvEntry, KvStatus } from "@nats-io/kv";
import { GatewayRecords } from "../runtime/gatewayRecords.ts";
import { memoryLogger } from "./helpers/worker.ts";

const statusAt = (lastSeq: number) => ({ streamInfo: { state: { last_seq: lastSeq } } }) as unknown as KvStatus;
const nameEntry = (revision: number) => ({ key: "name.x", revision, operation: "PUT", value: new Uint8Array() }) as unknown as KvEntry;

describe("gateway records: caughtUp", () => {
  it("waits for the watch to deliver the bucket's last revision", async () => {
    const records = new GatewayRecords({ status: async () => statusAt(2) } as Pick<KV, "status">, memoryLogger().log);
    records.apply(nameEntry(1));
    const caught = records.caughtUp(20_000, 20_000);
    setTimeout(() => records.apply(nameEntry(2)), 20);
    assert.equal(await caught, true);
  });

  it("answers with what it holds when the bucket's last revision does not come (no stream leader), well before the watch's bound", async () => {
    const records = new GatewayRecords({ status: () => new Promise<KvStatus>(() => {}) } as Pick<KV, "status">, memoryLogger().log);
    records.apply(nameEntry(1));
    const started = Date.now();
    assert.equal(await records.caughtUp(20_000, 50), false);
    assert.ok(Date.now() - started < 15_000, "did not wait for the watch's bound");
  });

  it("passes on a failure to read the last revision that comes before the bound", async () => {
    const records = new GatewayRecords({ status: async () => Promise.reject(new Error("no responders")) } as Pick<KV, "status">, memoryLogger().log);
    await assert.rejects(records.caughtUp(20_000, 20_000), /no responders/);
  });
});

// The one retry of JetStream requests through a NATS node loss, on fakes that throw the
// errors nats.js throws (test/cluster.load.test.ts shows it against a real 3-node cluster).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { JetStreamApiError } from "@nats-io/jetstream";
import type { KV, KvEntry } from "@nats-io/kv";
import { errors } from "@nats-io/transport-node";
import { ProtocolError } from "../protocol/envelope.ts";
import { retryingKv, retryTransient, transience, type RetryPolicy } from "../runtime/jetstreamRetry.ts";

const quick: RetryPolicy = { budgetMs: 300, firstDelayMs: 1, maxDelayMs: 20 };
const noResponders = () => new errors.RequestError("no responders", { cause: new errors.NoRespondersError("$KV.b.k") });
const conflict = () => new JetStreamApiError({ code: 400, err_code: 10071, description: "wrong last sequence: 7" });
const unavailable = () => new JetStreamApiError({ code: 503, err_code: 10008, description: "JetStream system temporarily unavailable" });

/** fails with the given errors in turn, then answers `value` */
function flaky<T>(fails: Array<() => Error>, value: T): { op: () => Promise<T>; attempts: () => number } {
  let n = 0;
  return {
    op: async () => {
      const f = fails[n++];
      if (f) throw f();
      return value;
    },
    attempts: () => n,
  };
}

describe("retryTransient", () => {
  it("classifies: no responders and 'temporarily unavailable' nobody answered, a timeout is unknown, a conflict or bad request is not transient", () => {
    assert.equal(transience(noResponders()), "nobody-answered");
    assert.equal(transience(new Error("jetstream is not enabled", { cause: noResponders() })), "nobody-answered");
    assert.equal(transience(unavailable()), "nobody-answered");
    assert.equal(transience(new errors.TimeoutError()), "outcome-unknown");
    assert.equal(transience(conflict()), null);
    assert.equal(transience(new JetStreamApiError({ code: 400, err_code: 10003, description: "bad request" })), null);
  });

  it("repeats what failed for want of a leader until it succeeds", async () => {
    const f = flaky([noResponders, unavailable, () => new errors.TimeoutError()], 42);
    assert.equal(await retryTransient("put", f.op, quick), 42);
    assert.equal(f.attempts(), 4);
  });

  it("never repeats a conflict: it reaches the caller unchanged after one attempt", async () => {
    const f = flaky([conflict], 1);
    await assert.rejects(retryTransient("update", f.op, quick), (err) => err instanceof JetStreamApiError && err.code === 10071);
    assert.equal(f.attempts(), 1);
  });

  it("gives up after its budget as unavailable, never internal", async () => {
    const f = flaky(Array.from({ length: 1000 }, () => noResponders), 1);
    await assert.rejects(retryTransient("get mcpgw_gateways", f.op, quick), (err) => err instanceof ProtocolError && err.code === "unavailable" && /get mcpgw_gateways/.test(err.message));
    assert.ok(f.attempts() > 1);
  });
});

describe("retryingKv", () => {
  /** a bucket whose create times out once after storing, then meets its own write */
  function bucket(stored: string) {
    let creates = 0;
    const entry = { key: "k", revision: 9, operation: "PUT", value: new TextEncoder().encode(stored) } as unknown as KvEntry;
    const kv = {
      async create() {
        creates++;
        throw creates === 1 ? new errors.TimeoutError() : conflict();
      },
      async get() {
        return entry;
      },
    } as unknown as KV;
    return retryingKv(kv, "b", quick);
  }

  it("a create repeated after a timeout that finds exactly its own value succeeds with that revision", async () => {
    assert.equal(await bucket('{"worker":"w1"}').create("k", '{"worker":"w1"}'), 9);
  });

  it("a create repeated after a timeout that finds another value is a conflict", async () => {
    await assert.rejects(bucket('{"worker":"w2"}').create("k", '{"worker":"w1"}'), (err) => err instanceof JetStreamApiError && err.code === 10071);
  });
});

// The one retry of JetStream requests through a NATS node loss, on fakes that throw the
// errors nats.js throws (test/cluster.load.test.ts shows it against a real 3-node cluster);
// requests through a node loss against a real nats-server.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { JetStreamApiError } from "@nats-io/jetstream";
import type { KV, KvEntry } from "@nats-io/kv";
import { errors, type Msg } from "@nats-io/transport-node";
import { z } from "zod";
import { ProtocolError } from "../protocol/envelope.ts";
import { encodeJson } from "../runtime/bus.ts";
import { bounded, openHedged, READ_ATTEMPT_MS, readHedged, requestThroughNodeLoss, retryingKv, retryTransient, transience, type RetryPolicy } from "../runtime/jetstreamRetry.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";

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
    // the budget only stops a hang here: a loaded machine runs a 1 ms pause hundreds of ms late
    assert.equal(await retryTransient("put", f.op, { ...quick, budgetMs: 30_000 }), 42);
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

describe("readHedged (a read of a stream whose followers still believe in a dead leader: silence)", () => {
  it("asks a read nobody answers again, and uses the first answer", async () => {
    let asked = 0;
    const read = () => (++asked < 3 ? new Promise<number>(() => {}) : Promise.resolve(7));
    assert.equal(await readHedged(read, 5), 7);
    assert.equal(asked, 3);
  });

  it("asks no copy of a read that answers", async () => {
    let asked = 0;
    assert.equal(await readHedged(async () => ++asked, 50), 1);
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(asked, 1);
  });

  it("a refusal of every copy asked (no leader yet) is the answer, for retryTransient to judge", async () => {
    await assert.rejects(readHedged(() => Promise.reject(noResponders()), 5), (err) => transience(err) === "nobody-answered");
  });
});

describe("a write a new leader dropped unanswered", () => {
  it("is repeated after its attempt's bound, and a compare-and-swap that meets its own value counts as done", async () => {
    let creates = 0;
    const stored = "mine";
    const kv = {
      create() {
        creates++;
        // the first is taken but never answered; the repeat meets it
        return creates === 1 ? new Promise(() => {}) : Promise.reject(conflict());
      },
      async get() {
        return { key: "k", revision: 12, operation: "PUT", value: new TextEncoder().encode(stored) } as unknown as KvEntry;
      },
    } as unknown as KV;
    assert.equal(await bounded(() => Promise.resolve(3), 50), 3);
    await assert.rejects(bounded(() => new Promise(() => {}), 5), (err) => transience(err) === "outcome-unknown");
    assert.equal(await retryingKv(kv, "b", { ...quick, budgetMs: 30_000 }).create("k", stored), 12);
    assert.equal(creates, 2);
  });
});

describe("openHedged (a consumer creation nats-server 2.9 may never answer)", () => {
  type Opened = { id: number; stopped: boolean; stop(): void };
  /** opens consumer `i` after `delays[i]` ms (when null, once the test says `openNow(i)`), counting the attempts */
  function consumers(delays: Array<number | null>) {
    const made: Opened[] = [];
    const opens: Array<() => void> = [];
    const open = () => {
      const id = made.length;
      const it: Opened = { id, stopped: false, stop: () => void (it.stopped = true) };
      made.push(it);
      const d = delays[id];
      return new Promise<Opened>((resolve) => {
        opens[id] = () => resolve(it);
        if (d != null) setTimeout(opens[id], d);
      });
    };
    return { open, made, openNow: (i: number) => opens[i]!() };
  }
  const settle = () => new Promise((r) => setTimeout(r, 400));

  it("uses a consumer that opens before the hedge, and asks for no second one", async () => {
    const c = consumers([0, 0]);
    const it = await openHedged(c.open, 100, 2_000);
    await settle();
    assert.equal(it.id, 0);
    assert.equal(c.made.length, 1);
    assert.equal(it.stopped, false);
  });

  it("asks for a second consumer when the first does not answer, uses it, and stops the first if it opens late", async () => {
    // the first opens only after the second is in use: a fixed 300 ms could elapse, in a stalled
    // loop, before the hedge timer's second consumer opened
    const c = consumers([null, 0]);
    const it = await openHedged(c.open, 20, 2_000);
    assert.equal(it.id, 1);
    c.openNow(0);
    await settle();
    // (copies asked after it, when a loaded machine ran the hedge timers late, never open)
    assert.deepEqual(c.made.slice(0, 2).map((x) => x.stopped), [true, false], "the late first one is stopped, the one in use is not");
  });

  it("fails as timed out (outcome unknown: tried again) when neither opens in time", async () => {
    const c = consumers([null, 250]);
    await assert.rejects(openHedged(c.open, 20, 100), (err: unknown) => transience(err) === "outcome-unknown");
    await settle();
    assert.equal(c.made[1]!.stopped, true, "one that opens after the attempt gave up is stopped");
  });

  it("a refusal of both attempts is the answer (no leader yet: retryTransient's to judge)", async () => {
    let n = 0;
    const open = () => (n++, Promise.reject(unavailable()));
    await assert.rejects(openHedged(open, 20, 2_000), (err: unknown) => err instanceof JetStreamApiError && err.code === 10008);
    assert.equal(n, 1, "refused at once: no second attempt");
  });
});

describe("requestThroughNodeLoss (a real nats-server)", () => {
  let nats: TestNats;
  before(async () => {
    nats = await startNats();
  });
  after(async () => {
    await nats?.stop();
  });
  const answer = (m: Msg, data: unknown) => m.respond(encodeJson({ ok: true, data }));

  it("asks again while nobody is subscribed (a responder still moving to another node), a write included", async () => {
    const nc = await nats.connect();
    const seen: string[] = [];
    const late = setTimeout(() => nc.subscribe("nodeloss.write", { callback: (_e, m) => void (seen.push(m.string()), answer(m, "done")) }), 300);
    assert.equal(await requestThroughNodeLoss(nc, "nodeloss.write", { n: 1 }, z.string(), { timeoutMs: 10_000, readOnly: false }), "done");
    assert.deepEqual(seen, ['{"n":1}'], "received once");
    clearTimeout(late);
  });

  it("asks a read again after an attempt got no answer; a write that got none is a timeout, never sent twice", async () => {
    const nc = await nats.connect();
    const got = new Map<string, number>();
    // drops the first request of each subject, as a node that died with it would
    for (const subject of ["nodeloss.read", "nodeloss.add"]) {
      nc.subscribe(subject, {
        callback: (_e, m) => {
          const n = (got.get(subject) ?? 0) + 1;
          got.set(subject, n);
          if (n > 1) answer(m, n);
        },
      });
    }
    assert.equal(await requestThroughNodeLoss(nc, "nodeloss.read", {}, z.number(), { timeoutMs: 3 * READ_ATTEMPT_MS, readOnly: true }), 2);
    await assert.rejects(
      requestThroughNodeLoss(nc, "nodeloss.add", {}, z.number(), { timeoutMs: 2_000, readOnly: false }),
      (err) => err instanceof ProtocolError && err.code === "timeout",
    );
    assert.equal(got.get("nodeloss.add"), 1);
  });

  it("nobody at all within the budget: unavailable, saying nobody answers", async () => {
    const nc = await nats.connect();
    await assert.rejects(
      requestThroughNodeLoss(nc, "nodeloss.nobody", {}, z.unknown(), { timeoutMs: 1_000, readOnly: false }),
      (err) => err instanceof ProtocolError && err.code === "unavailable" && /nobody answers nodeloss\.nobody/.test(err.message),
    );
  });
});

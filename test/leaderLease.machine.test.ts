import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SimulatedClock, createActor, fromCallback, fromPromise, type Actor } from "xstate";
import { leaderLeaseMachine, marginOf, type LeaseEmitted } from "../actors/leaderLease.machine.ts";

const TTL = 15_000;
const TERM = TTL - marginOf(TTL); // 12 s
const INTERVAL = 60_000;

/** A tiny compare-and-swap store standing in for the two KV keys: the lease and the guarded data. */
class FakeKv {
  seq = 0;
  lease = { revision: 0, live: false };
  data = 0; // revision of the guarded key
  ops: string[] = [];
  renewFails: "no" | "transient" | "conflict" = "no";
  renewGate: Promise<void> | null = null;
  /** how many duty renewals meet a late fence: a losing follower bumps the guarded key after prepare read it */
  lateFences = 0;

  write(): number {
    return ++this.seq;
  }
  fence(revision: number): boolean {
    if (this.lease.revision !== revision) return false;
    this.data = this.write();
    this.ops.push("fence");
    return true;
  }
  cas(expected: number, who: string): number | null {
    if (this.lease.revision !== expected) return null;
    this.lease = { revision: this.write(), live: true };
    this.ops.push(who);
    return this.lease.revision;
  }
  /** another worker renews (or takes over) the lease */
  otherWrites(): number {
    this.lease = { revision: this.write(), live: true };
    return this.lease.revision;
  }
}

function start(kv: FakeKv, opts: { firstDutyAt?: number } = {}) {
  const clock = new SimulatedClock();
  const emitted: LeaseEmitted[] = [];
  const commits: Array<{ prepared: unknown; revision: number }> = [];
  const machine = leaderLeaseMachine.provide({
    actors: {
      watchLease: fromCallback(() => {}),
      fence: fromPromise(async ({ input }) => kv.fence(input.revision)),
      acquire: fromPromise(async ({ input }) => kv.cas(input.revision, "acquire")),
      renew: fromPromise(async ({ input }) => {
        if (kv.renewGate) await kv.renewGate;
        if (kv.lateFences > 0 && kv.ops.at(-1) === "prepare") {
          kv.lateFences--;
          kv.data = kv.write();
        }
        if (kv.renewFails === "transient") throw new Error("NATS unreachable");
        if (kv.renewFails === "conflict") return null;
        return kv.cas(input.revision, "renew");
      }),
      release: fromPromise(async ({ input }) => {
        kv.ops.push(`release@${input.revision}`);
        if (kv.lease.revision === input.revision) kv.lease = { revision: kv.write(), live: false };
      }),
      prepareDuty: fromPromise<unknown, void>(async () => {
        kv.ops.push("prepare");
        return { readRevision: kv.data };
      }),
      commitDuty: fromPromise(async ({ input }) => {
        // compare-and-swap at the revision prepare read, as the host's commit does
        if ((input.prepared as { readRevision: number }).readRevision !== kv.data) {
          kv.ops.push("commit refused");
          return false;
        }
        kv.data = kv.write();
        kv.ops.push("commit");
        commits.push(input);
        return true;
      }),
    },
  });
  const actor = createActor(machine, {
    clock,
    input: { ttlMs: TTL, dutyIntervalMs: INTERVAL, now: () => clock.now(), firstDutyAt: opts.firstDutyAt ?? 0 },
  });
  for (const t of ["leader", "steppedDown"] as const) actor.on(t, (e) => emitted.push(e));
  actor.start();
  return { clock, actor, emitted, commits };
}

const settle = async () => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};
const top = (actor: Actor<typeof leaderLeaseMachine>) => {
  const v = actor.getSnapshot().value;
  return typeof v === "string" ? v : Object.keys(v)[0];
};
async function advance(clock: SimulatedClock, ms: number, step = 500) {
  for (let done = 0; done < ms; done += Math.min(step, ms - done)) {
    clock.increment(Math.min(step, ms - done));
    await settle();
  }
}

describe("leader lease machine (SimulatedClock)", () => {
  it("takes over only after the revision it saw stood still for a full TTL", async () => {
    const kv = new FakeKv();
    const { clock, actor } = start(kv);
    const other = kv.otherWrites();
    actor.send({ type: "LEASE.SEEN", revision: other, live: true });
    await advance(clock, TTL - 1);
    assert.equal(top(actor), "follower");
    // the holder renews just before the TTL: the wait starts over
    actor.send({ type: "LEASE.SEEN", revision: kv.otherWrites(), live: true });
    await advance(clock, TTL - 1);
    assert.equal(top(actor), "follower");
    // the same revision seen again does not restart the wait
    actor.send({ type: "LEASE.SEEN", revision: kv.lease.revision, live: true });
    await advance(clock, 1);
    await settle();
    assert.equal(top(actor), "leader");
    assert.deepEqual(kv.ops.slice(0, 2), ["fence", "acquire"], "the guarded key is fenced before the lease is claimed");
    actor.stop();
  });

  it("never takes over before it has seen the lease at all", async () => {
    const kv = new FakeKv();
    const { clock, actor } = start(kv);
    await advance(clock, 3 * TTL, 5000);
    assert.equal(top(actor), "follower");
    assert.deepEqual(kv.ops, []);
    actor.stop();
  });

  it("takes over at once when the lease key is deleted", async () => {
    const kv = new FakeKv();
    const { actor, emitted } = start(kv);
    actor.send({ type: "LEASE.SEEN", revision: kv.otherWrites(), live: true });
    await settle();
    kv.lease = { revision: kv.write(), live: false }; // the holder released it
    actor.send({ type: "LEASE.SEEN", ...kv.lease });
    await settle();
    assert.equal(top(actor), "leader");
    assert.deepEqual(emitted[0], { type: "leader", revision: kv.lease.revision });
    actor.stop();
  });

  it("does not claim when the lease moved between the standstill and the fence", async () => {
    const kv = new FakeKv();
    const { clock, actor } = start(kv);
    actor.send({ type: "LEASE.SEEN", revision: kv.otherWrites(), live: true });
    kv.otherWrites(); // a renewal the watch has not delivered yet
    await advance(clock, TTL);
    assert.equal(top(actor), "follower");
    assert.deepEqual(kv.ops, [], "neither fenced nor claimed");
    actor.stop();
  });

  it("renews every TTL/3 and runs the duty as prepare → renew → commit at the renewed revision", async () => {
    const kv = new FakeKv();
    const { clock, actor, commits } = start(kv, { firstDutyAt: 2000 });
    actor.send({ type: "LEASE.SEEN", revision: 0, live: false });
    await settle();
    assert.equal(top(actor), "leader");
    await advance(clock, 1999);
    assert.deepEqual(kv.ops, ["fence", "acquire"], "no duty before firstDutyAt");
    const fenced = kv.data;
    await advance(clock, 1);
    assert.deepEqual(kv.ops, ["fence", "acquire", "prepare", "renew", "commit"]);
    assert.deepEqual(commits, [{ prepared: { readRevision: fenced }, revision: kv.lease.revision }]);
    await advance(clock, TTL / 3);
    assert.deepEqual(kv.ops.slice(5), ["renew"]);
    await advance(clock, INTERVAL);
    assert.equal(kv.ops.filter((o) => o === "commit").length, 2);
    assert.ok(kv.ops.filter((o) => o === "renew").length >= 2 + Math.floor(INTERVAL / (TTL / 3)) - 1);
    assert.equal(top(actor), "leader");
    actor.stop();
  });

  it("prepares again at once when a late fence refuses its commit; a second refusal waits for the next duty", async () => {
    const kv = new FakeKv();
    const { clock, actor, commits } = start(kv, { firstDutyAt: 1000 });
    actor.send({ type: "LEASE.SEEN", revision: 0, live: false });
    await settle();
    kv.lateFences = 1;
    await advance(clock, 1000);
    assert.deepEqual(kv.ops.slice(2), ["prepare", "renew", "commit refused", "prepare", "renew", "commit"], "recomputed without waiting an interval");
    assert.equal(commits.length, 1);
    assert.equal(top(actor), "leader");

    // refused twice in a row: no loop, the next duty tries again
    kv.lateFences = 2;
    const before = kv.ops.length;
    await advance(clock, INTERVAL);
    const duty = kv.ops.slice(before).filter((o) => o !== "renew");
    assert.deepEqual(duty, ["prepare", "commit refused", "prepare", "commit refused"]);
    await advance(clock, INTERVAL);
    assert.deepEqual(kv.ops.slice(before).filter((o) => o !== "renew").slice(4), ["prepare", "commit"]);
    assert.equal(commits.length, 2);
    assert.equal(top(actor), "leader");
    actor.stop();
  });

  it("steps down when renewals keep failing for the TTL minus the margin", async () => {
    const kv = new FakeKv();
    const { clock, actor, emitted } = start(kv, { firstDutyAt: Number.MAX_SAFE_INTEGER });
    actor.send({ type: "LEASE.SEEN", revision: 0, live: false });
    await settle();
    const held = kv.lease.revision;
    kv.renewFails = "transient";
    await advance(clock, TERM - 1, 250);
    assert.equal(top(actor), "leader", "still within its term");
    await advance(clock, 1);
    assert.notEqual(top(actor), "leader");
    assert.deepEqual(emitted.at(-1), { type: "steppedDown", reason: "not renewed within the TTL minus the margin", revision: held });
    assert.ok(kv.ops.includes(`release@${held}`), "releases what it may still hold");
    await settle();
    assert.equal(top(actor), "follower");
    actor.stop();
  });

  it("steps down at once when a renewal is refused (the lease was taken over)", async () => {
    const kv = new FakeKv();
    const { clock, actor, emitted } = start(kv, { firstDutyAt: Number.MAX_SAFE_INTEGER });
    actor.send({ type: "LEASE.SEEN", revision: 0, live: false });
    await settle();
    const held = kv.lease.revision;
    kv.renewFails = "conflict";
    await advance(clock, TTL / 3);
    assert.equal(top(actor), "follower");
    assert.deepEqual(emitted.at(-1), { type: "steppedDown", reason: "the lease was taken over", revision: held });
    actor.stop();
  });

  it("does not trust a renewal answered after its term: steps down, no commit", async () => {
    const kv = new FakeKv();
    const { clock, actor, emitted } = start(kv, { firstDutyAt: 1000 });
    actor.send({ type: "LEASE.SEEN", revision: 0, live: false });
    await settle();
    let open!: () => void;
    kv.renewGate = new Promise((r) => (open = r));
    await advance(clock, 1000); // duty: prepare, then the renewal hangs (a stopped process, a slow server)
    assert.deepEqual(kv.ops, ["fence", "acquire", "prepare"]);
    await advance(clock, TERM);
    open();
    await settle();
    assert.equal(kv.ops.includes("commit"), false);
    assert.equal(top(actor), "follower");
    assert.ok(emitted.some((e) => e.type === "steppedDown"));
    actor.stop();
  });

  it("releases the lease on a clean stop and ends", async () => {
    const kv = new FakeKv();
    const { actor } = start(kv, { firstDutyAt: Number.MAX_SAFE_INTEGER });
    actor.send({ type: "LEASE.SEEN", revision: 0, live: false });
    await settle();
    const held = kv.lease.revision;
    actor.send({ type: "STOP" });
    await settle();
    assert.equal(actor.getSnapshot().status, "done");
    assert.deepEqual(kv.ops.at(-1), `release@${held}`);
    assert.equal(kv.lease.live, false);
  });
});

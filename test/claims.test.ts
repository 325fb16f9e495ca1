// The claim store both keyed actor kinds use (runtime/claims.ts), on a real nats-server: two
// workers' stores race for keys, a dead holder's claim is taken over, a stale release spares
// the successor's claim, and a sweep deletes only the claims of holders that are gone. Each
// case runs on the nats.js bucket and on its writes acknowledged on one subscription
// (runtime/jetstreamAcks.ts), as the poller host claims gateways.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Claims, type ClaimsKv } from "../runtime/claims.ts";
import { AckedPublisher, ackedKv } from "../runtime/jetstreamAcks.ts";
import { openStores } from "../runtime/nats.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";

const WANTED = { exists: true, wanted: true, hosting: undefined };

for (const acked of [false, true]) describe(`claims (runtime/claims.ts) on a real nats-server, ${acked ? "writes acknowledged on one subscription" : "the nats.js bucket"}`, () => {
  let nats: TestNats;
  let kv: ClaimsKv;
  let acks: AckedPublisher | undefined;
  before(async () => {
    nats = await startNats();
    const nc = await nats.connect();
    const stores = await openStores(nc, "claims");
    acks = acked ? new AckedPublisher(nc) : undefined;
    kv = acks ? ackedKv(stores.sessions, stores.names.sessions, acks) : stores.sessions;
  });
  after(async () => {
    acks?.stop();
    await nats?.stop();
  });

  it("of two workers racing for a free key exactly one wins; the loser sees the winner, alive, and stays away", async () => {
    const alive = new Set(["a", "b"]);
    const holderAlive = (_key: string, holder: string) => alive.has(holder);
    const a = new Claims({ kv, me: "a", holderAlive });
    const b = new Claims({ kv, me: "b", holderAlive });
    const stepA = a.decide("k1", WANTED);
    const stepB = b.decide("k1", WANTED);
    assert.deepEqual([stepA, stepB], [{ type: "claim", create: true, revision: 0 }, { type: "claim", create: true, revision: 0 }]);
    const [ra, rb] = await Promise.all([a.take("k1", stepA as { create: boolean; revision: number }), b.take("k1", stepB as { create: boolean; revision: number })]);
    assert.equal([ra, rb].filter((r) => r !== null).length, 1, "one winner");
    const [winner, loser, winnerId] = ra !== null ? [a, b, "a"] : [b, a, "b"];
    assert.deepEqual(await loser.read("k1"), { holder: winnerId, revision: ra ?? rb });
    assert.deepEqual(loser.decide("k1", WANTED), { type: "stay" }, "a live holder keeps its claim");
    assert.deepEqual(winner.decide("k1", { ...WANTED, hosting: (ra ?? rb)! }), { type: "stay" });
  });

  it("takes over a dead holder's claim by compare-and-swap; the dead holder's late release changes nothing", async () => {
    const alive = new Set(["a", "b"]);
    const a = new Claims({ kv, me: "a", holderAlive: (_k: string, h: string) => alive.has(h) });
    const b = new Claims({ kv, me: "b", holderAlive: async (_k: string, h: string) => alive.has(h) });
    const ra = (await a.take("k2", { create: true, revision: 0 }))!;
    await b.read("k2");
    assert.deepEqual(await b.decide("k2", WANTED), { type: "stay" });
    alive.delete("a");
    const step = await b.decide("k2", WANTED);
    assert.deepEqual(step, { type: "claim", create: false, revision: ra });
    const rb = (await b.take("k2", step as { create: boolean; revision: number }))!;
    assert.ok(rb > ra);
    // a comes back believing it still holds the key: its compare-and-swap fails
    assert.equal(await a.take("k2", { create: false, revision: ra }), null);
    await a.release("k2", ra);
    assert.deepEqual(await b.read("k2"), { holder: "b", revision: rb }, "b's claim survived a's stale release");
    // b gives it back; the deleted key is claimed again by compare-and-swap at the delete's revision
    await b.release("k2", rb);
    const seen = await a.read("k2");
    assert.equal(seen?.holder, null);
    const again = a.decide("k2", WANTED);
    assert.deepEqual(again, { type: "claim", create: false, revision: seen!.revision });
    assert.ok((await a.take("k2", again as { create: boolean; revision: number }))! > rb);
  });

  it("a create of a key whose claim was deleted takes it, and the losing create learns who holds it", async () => {
    const e = new Claims({ kv, me: "e", holderAlive: () => true });
    const f = new Claims({ kv, me: "f", holderAlive: () => true });
    const first = (await e.take("k4", { create: true, revision: 0 }))!;
    await e.release("k4", first);
    // f never saw the delete: it asks for a create, as for a key never claimed
    const again = await f.take("k4", { create: true, revision: 0 });
    assert.ok(again !== null && again > first);
    assert.equal(await e.take("k4", { create: true, revision: 0 }), null);
    assert.deepEqual(e.seen("k4"), { holder: "f", revision: again });
  });

  it("asks whether a holder is alive only when the step depends on it", async () => {
    let asked = 0;
    const c = new Claims({ kv, me: "c", holderAlive: () => (asked++, false) });
    const d = new Claims({ kv, me: "d", holderAlive: () => true });
    const rd = (await d.take("k3", { create: true, revision: 0 }))!;
    await c.read("k3");
    assert.deepEqual(c.decide("k3", { ...WANTED, wanted: false }), { type: "stay" });
    assert.deepEqual(c.decide("k3", { ...WANTED, exists: false }), { type: "stay" });
    assert.equal(asked, 0);
    assert.deepEqual(c.decide("k3", WANTED), { type: "claim", create: false, revision: rd });
    assert.equal(asked, 1);
  });

  it("a sweep deletes the claims of holders that are gone, and keeps live and skipped ones", async () => {
    const alive = new Set(["live"]);
    const holderAlive = (_k: string, h: string) => alive.has(h);
    const of = (me: string) => new Claims({ kv, me, holderAlive });
    await of("live").take("sw.1", { create: true, revision: 0 });
    await of("dead").take("sw.2", { create: true, revision: 0 });
    await of("dead").take("sw.3", { create: true, revision: 0 });
    const sweeper = of("sweeper");
    assert.equal(await sweeper.sweep("sw.", (k) => k === "sw.3", () => false), 1);
    assert.equal((await sweeper.read("sw.1"))?.holder, "live");
    assert.equal((await sweeper.read("sw.2"))?.holder, null, "the dead holder's claim is gone");
    assert.equal((await sweeper.read("sw.3"))?.holder, "dead", "skipped");
  });
});

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Liveness, holderToJudge, mustStepDown, ownerOf, placementStep, type PlacementFacts } from "../actors/placement.ts";

const facts = (f: Partial<PlacementFacts>): PlacementFacts => ({ me: "a", exists: true, wanted: true, claim: undefined, hosting: undefined, holderAlive: true, ...f });

describe("placementStep", () => {
  it("claims a key never claimed with create, and only when this worker should host it", () => {
    assert.deepEqual(placementStep(facts({})), { type: "claim", create: true, revision: 0 });
    assert.deepEqual(placementStep(facts({ wanted: false })), { type: "stay" });
    assert.deepEqual(placementStep(facts({ exists: false })), { type: "stay" });
  });

  it("takes a deleted claim, its own old claim, or a dead holder's claim by compare-and-swap at the revision seen", () => {
    assert.deepEqual(placementStep(facts({ claim: { holder: null, revision: 7 } })), { type: "claim", create: false, revision: 7 });
    assert.deepEqual(placementStep(facts({ claim: { holder: "a", revision: 8 }, holderAlive: false })), { type: "claim", create: false, revision: 8 });
    assert.deepEqual(placementStep(facts({ claim: { holder: "a", revision: 8 }, holderAlive: true })), { type: "claim", create: false, revision: 8 });
    assert.deepEqual(placementStep(facts({ claim: { holder: "b", revision: 9 }, holderAlive: false })), { type: "claim", create: false, revision: 9 });
  });

  it("never takes a claim from a live holder, even when this worker should host the key", () => {
    assert.deepEqual(placementStep(facts({ claim: { holder: "b", revision: 9 }, holderAlive: true })), { type: "stay" });
  });

  it("keeps hosting under its claim while the key exists and is wanted here", () => {
    assert.deepEqual(placementStep(facts({ claim: { holder: "a", revision: 3 }, hosting: 3 })), { type: "stay" });
    // a watch may deliver an older entry after this worker's own claim
    assert.deepEqual(placementStep(facts({ claim: { holder: "b", revision: 2 }, hosting: 3 })), { type: "stay" });
  });

  it("gives its claim back when the key is gone or belongs elsewhere now", () => {
    assert.deepEqual(placementStep(facts({ claim: { holder: "a", revision: 3 }, hosting: 3, exists: false })), { type: "release", revision: 3 });
    assert.deepEqual(placementStep(facts({ claim: { holder: "a", revision: 3 }, hosting: 3, wanted: false })), { type: "release", revision: 3 });
  });

  it("yields to a newer claim of another worker (taken over), adopts a newer claim of its own", () => {
    assert.deepEqual(placementStep(facts({ claim: { holder: "b", revision: 5 }, hosting: 3 })), { type: "yield" });
    assert.deepEqual(placementStep(facts({ claim: { holder: null, revision: 5 }, hosting: 3 })), { type: "yield" });
    assert.deepEqual(placementStep(facts({ claim: { holder: "a", revision: 5 }, hosting: 3 })), { type: "adopt", revision: 5 });
  });
});

describe("holderToJudge", () => {
  it("names the holder only when the step depends on whether it is alive: another worker's claim on a key wanted here and not hosted", () => {
    const held = { holder: "b", revision: 4 };
    assert.equal(holderToJudge(facts({ claim: held })), "b");
    for (const f of [{ claim: undefined }, { claim: { holder: null, revision: 4 } }, { claim: { holder: "a", revision: 4 } }, { claim: held, hosting: 2 }, { claim: held, wanted: false }, { claim: held, exists: false }]) {
      const judged = facts(f);
      assert.equal(holderToJudge(judged), null, JSON.stringify(f));
      // and indeed the step is the same whatever the answer
      assert.deepEqual(placementStep({ ...judged, holderAlive: true }), placementStep({ ...judged, holderAlive: false }), JSON.stringify(f));
    }
    assert.notDeepEqual(placementStep(facts({ claim: held, holderAlive: true })), placementStep(facts({ claim: held, holderAlive: false })));
  });
});

describe("mustStepDown", () => {
  it("steps down once the heartbeat went unrenewed for more than two thirds of the TTL, when another worker could take over", () => {
    assert.equal(mustStepDown(0, 9_000, 15_000, true), false);
    assert.equal(mustStepDown(0, 10_000, 15_000, true), false);
    assert.equal(mustStepDown(0, 10_001, 15_000, true), true);
    assert.equal(mustStepDown(0, 60_000, 15_000, false), false, "nobody to make room for");
  });
});

describe("ownerOf", () => {
  it("is the same for any order of the workers, null for none, and spreads keys over workers", () => {
    const workers = ["w1", "w2", "w3"];
    const counts = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const o = ownerOf(`g${i}`, workers)!;
      assert.equal(ownerOf(`g${i}`, [...workers].reverse()), o);
      counts.set(o, (counts.get(o) ?? 0) + 1);
    }
    for (const w of workers) assert.ok(counts.get(w)! > 800, `${w} owns ${counts.get(w)} of 3000`);
    assert.equal(ownerOf("g", []), null);
  });

  it("moves only the keys of a worker that left", () => {
    const before = new Map(Array.from({ length: 1000 }, (_, i) => [`g${i}`, ownerOf(`g${i}`, ["w1", "w2", "w3"])]));
    for (const [key, owner] of before) {
      const after = ownerOf(key, ["w1", "w2"]);
      if (owner !== "w3") assert.equal(after, owner, key);
    }
  });
});

describe("Liveness", () => {
  it("counts a worker alive while its heartbeat revision changed within the TTL, on the reader's clock", () => {
    const l = new Liveness("me", 15_000);
    assert.deepEqual([...l.live(0)], ["me"]);
    l.heard("b", 1, 0);
    assert.ok(l.live(14_999).has("b"));
    // the same revision again (a watch reopened) is no sign of life
    l.heard("b", 1, 10_000);
    assert.ok(!l.live(15_000).has("b"));
    l.heard("b", 2, 15_000);
    assert.ok(l.live(29_999).has("b"));
    l.heard("b", null, 16_000);
    assert.ok(!l.live(16_000).has("b"));
  });

  it("places each key on exactly one live worker, and again when the live set changes", () => {
    const a = new Liveness("a", 1_000);
    const b = new Liveness("b", 1_000);
    a.heard("b", 1, 0);
    b.heard("a", 1, 0);
    const keys = Array.from({ length: 200 }, (_, i) => `g${i}`);
    const hereA = a.placedHere(0);
    const hereB = b.placedHere(0);
    for (const k of keys) assert.notEqual(hereA(k), hereB(k), k);
    // b stops beating: every key is a's
    const later = a.placedHere(1_000);
    assert.ok(keys.every(later));
  });

  it("hands out workers silent for ten TTLs once, with the revision to delete at", () => {
    const l = new Liveness("me", 1_000);
    l.heard("b", 4, 0);
    assert.deepEqual(l.takeLongGone(10_000), []);
    assert.deepEqual(l.takeLongGone(10_001), [{ worker: "b", revision: 4 }]);
    assert.deepEqual(l.takeLongGone(20_000), []);
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { errors } from "@nats-io/transport-node";
import { isCasConflict } from "../actors/kvStore.ts";
import { kvSubject } from "../protocol/subjects.ts";
import { transience } from "../runtime/jetstreamRetry.ts";
import { AckedPublisher, ackedEvents, ackedKv } from "../runtime/jetstreamAcks.ts";
import { openStores, type Stores } from "../runtime/nats.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";

describe("JetStream acknowledgements on one subscription", () => {
  let nats: TestNats;
  let stores: Stores;
  let acks: AckedPublisher;
  before(async () => {
    nats = await startNats();
    const nc = await nats.connect("runtime");
    stores = await openStores(nc, "acks");
    acks = new AckedPublisher(nc, 500);
  });
  after(async () => {
    acks?.stop();
    await nats?.stop();
  });

  it("creates and updates by compare-and-swap as the bucket does: a conflict changes nothing", async () => {
    const kv = ackedKv(stores.gateways, stores.names.gateways, acks);
    const r1 = await kv.create("name.a", '{"id":"1"}');
    assert.equal((await stores.gateways.get("name.a"))?.revision, r1);
    const refused = await kv.create("name.a", '{"id":"2"}').catch((e: unknown) => e);
    assert.ok(isCasConflict(refused), "a second create of one key is a conflict");
    const stale = await kv.update("name.a", '{"id":"3"}', r1 + 100).catch((e: unknown) => e);
    assert.ok(isCasConflict(stale), "an update at a revision the key is not at is a conflict");
    assert.deepEqual((await stores.gateways.get("name.a"))?.json(), { id: "1" });
    const r2 = await kv.update("name.a", '{"id":"4"}', r1);
    assert.ok(r2 > r1);
    // a deleted key keeps a marker: create takes it over (nats.js's own create)
    await stores.gateways.delete("name.a");
    const r3 = await kv.create("name.a", '{"id":"5"}');
    const e = await stores.gateways.get("name.a");
    assert.equal(e?.revision, r3);
    assert.deepEqual(e?.json(), { id: "5" });
  });

  it("many writes at once are each acknowledged with their own revision", async () => {
    const kv = ackedKv(stores.gateways, stores.names.gateways, acks);
    const revisions = await Promise.all(Array.from({ length: 200 }, (_, i) => kv.create(`gw.many${i}`, `{"i":${i}}`)));
    assert.equal(new Set(revisions).size, 200);
    for (const i of [0, 99, 199]) assert.equal((await stores.gateways.get(`gw.many${i}`))?.revision, revisions[i]);
  });

  it("events are stored with their id, so the stream drops a second copy", async () => {
    const subject = "acks.evt.gateway.abc.added";
    await ackedEvents(acks)(subject, { type: "added" });
    const jsm = await stores.js.jetstreamManager();
    const stored = await jsm.streams.getMessage(stores.streamName, { last_by_subj: subject });
    assert.ok(stored?.header.get("Nats-Msg-Id"), "an event carries its id");
    if (!stored) return;
    const again = await acks.publish(subject, new TextEncoder().encode("{}"), { msgID: stored.header.get("Nats-Msg-Id") });
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, stored.seq);
  });

  it("a subject no stream takes is 'nobody answered', an unanswered publish times out (outcome unknown)", async () => {
    const none = await acks.publish("nobody.takes.this", new Uint8Array()).catch((e: unknown) => e);
    assert.ok(none instanceof errors.NoRespondersError);
    assert.equal(transience(none), "nobody-answered");
    const nc = await nats.connect("runtime");
    nc.subscribe(kvSubject("silent", "k")); // someone receives it and never answers
    await nc.flush();
    const silent = await acks.publish(kvSubject("silent", "k"), new Uint8Array()).catch((e: unknown) => e);
    assert.ok(silent instanceof errors.TimeoutError);
    assert.equal(transience(silent), "outcome-unknown");
    await nc.close();
  });
});

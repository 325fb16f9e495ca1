// followKv against a real nats-server: a watch that ends is opened again, and stops for good when told.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { KvWatchInclude, type KV, type KvEntry } from "@nats-io/kv";
import { AckPolicy, jetstreamManager } from "@nats-io/jetstream";
import { STREAM_LEADER_ELECTED_ADVISORIES } from "../protocol/subjects.ts";
import { followKv } from "../runtime/kvWatch.ts";
import { openStores } from "../runtime/nats.ts";
import { startNats, watched, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { memoryLogger } from "./helpers/worker.ts";

describe("followKv", () => {
  let nats: TestNats;
  let kv: KV;
  before(async () => {
    nats = await startNats();
    kv = (await openStores(await nats.connect(), "kw")).state;
  });
  after(async () => nats?.stop());

  it("opens the watch again when it ends, resuming after the last entry, until stopped", async () => {
    const watches: Array<{ stop(): void }> = [];
    const seen: KvEntry[] = [];
    const { log, lines } = memoryLogger();
    const follower = await followKv(watched(kv, watches), "w.*", (e) => void seen.push(e), log, "test watch");
    const first = await kv.put("w.a", "1");
    await until("the first entry", () => seen.some((e) => e.revision === first));

    watches[0]!.stop(); // as after a lost consumer
    const second = await kv.put("w.b", "2");
    await until("an entry written after the watch ended", () => seen.some((e) => e.revision === second), 30_000);
    assert.equal(watches.length, 2, "a new watch");
    assert.ok(lines.some((l) => l.includes("test watch ended; watching again")));
    assert.equal(seen.filter((e) => e.revision === first).length, 1, "the new watch resumes after the last revision it had: nothing repeated");

    follower.stop();
    const count = watches.length;
    await kv.put("w.c", "3");
    // the stopped watch ends its loop instead of watching again (the retry pause is 1 s)
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(watches.length, count, "no watch opened after stop");
    assert.ok(!seen.some((e) => e.key === "w.c"));
  });

  it("with loadFirst, hands over every current entry before it resolves (deleted keys are absent)", async () => {
    const written = await kv.put("l.a", "1");
    await kv.put("l.b", "2");
    await kv.delete("l.b");
    // a watch that delivers updates only: what arrives before any update came from the load
    const updatesOnly = new Proxy(kv, {
      get: (target, prop) =>
        prop === "watch" ? (opts: Parameters<KV["watch"]>[0]) => target.watch({ ...opts, include: KvWatchInclude.UpdatesOnly }) : Reflect.get(target, prop, target),
    });
    const seen: KvEntry[] = [];
    const follower = await followKv(updatesOnly, "l.*", (e) => void seen.push(e), memoryLogger().log, "loading watch", { loadFirst: true });
    assert.deepEqual(seen.map((e) => [e.key, e.revision]), [["l.a", written]]);
    const later = await kv.put("l.c", "3");
    await until("an update through the watch", () => seen.some((e) => e.revision === later));
    follower.stop();
  });

  it("replaces the watch at once when the connection comes back (its consumer may have died with the server), resuming after the last entry", async () => {
    const watches: Array<{ stop(): void }> = [];
    const seen: KvEntry[] = [];
    const follower = await followKv(watched(kv, watches), "r.*", (e) => void seen.push(e), memoryLogger().log, "reconnecting watch");
    const first = await kv.put("r.a", "1");
    await until("the first entry", () => seen.some((e) => e.revision === first));
    await nats.stopServer();
    await nats.restartServer();
    await until("a replacement watch", () => watches.length === 2, 30_000);
    const second = await kv.put("r.b", "2");
    await until("an entry written after the restart", () => seen.some((e) => e.revision === second), 30_000);
    assert.deepEqual(seen.map((e) => e.revision), [first, second], "nothing repeated, nothing missed");
    follower.stop();
  });

  it("a consumer delivering into the leader-election advisory subject (a viewer can make one) replaces no watch; a plain message there does, at most once a second", async () => {
    const watches: Array<{ stop(): void }> = [];
    const follower = await followKv(watched(kv, watches), "v.*", () => {}, memoryLogger().log, "advised watch");
    const viewer = await nats.connect("viewer");
    const jsm = await jetstreamManager(viewer);
    const advisory = `${STREAM_LEADER_ELECTED_ADVISORIES.slice(0, -1)}KV_kw_state`;
    const attack = await jsm.consumers.add("KV_kw_state", { deliver_subject: advisory, filter_subject: "$KV.kw_state.v.>", ack_policy: AckPolicy.None });
    const runtime = await nats.connect();
    // a subscriber of our own sees the deliveries arrive, so their refusal is not a lost race
    let delivered = 0;
    runtime.subscribe(advisory, { callback: () => void delivered++ });
    await runtime.flush();
    for (let i = 0; i < 5; i++) await kv.put(`v.${i}`, String(i));
    await until("the consumer's deliveries", () => delivered >= 5);
    await kv.get("v.0"); // a round trip on the watched connection after the deliveries reached it
    assert.equal(watches.length, 1, "no replacement for deliveries");
    await jsm.consumers.delete("KV_kw_state", attack.name).catch(() => {});

    // the control: what the server would publish (no reply, no headers) replaces the watch, once for a burst
    for (let i = 0; i < 5; i++) runtime.publish(advisory);
    await until("a replacement", () => watches.length >= 2);
    await until("one more for the rest of the burst, a second later", () => watches.length >= 3);
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(watches.length, 3, "a burst costs two replacements, not five");
    follower.stop();
  });

  it("keeps going when the handler throws", async () => {
    const seen: string[] = [];
    const { log, lines } = memoryLogger();
    const follower = await followKv(kv, "t.*", (e) => {
      if (e.key === "t.bad") throw new Error("unreadable");
      seen.push(e.key);
    }, log, "tolerant watch");
    await kv.put("t.bad", "x");
    await kv.put("t.good", "y");
    await until("the entry after the bad one", () => seen.includes("t.good"));
    assert.ok(lines.some((l) => l.includes("tolerant watch: ignoring an entry")));
    follower.stop();
  });
});

// Least privilege on the bus (issue 9, attacks 1 and 2): each attack is performed as the
// real `admin` / `viewer` users against the project's nats.conf and a real worker, and
// shown to fail and change nothing; then what the roles may do is shown to still work.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { buckets, eventStream, KEYS, QUEUE, streamLog, subjects } from "../protocol/subjects.ts";
import { sessionKey } from "../protocol/edge.ts";
import { publishStreamEvent } from "../runtime/streamLog.ts";
import { encodeJson, request, type RefusalReason } from "../runtime/bus.ts";
import { listCatalog } from "../runtime/pollerEffects.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { connectClient, INIT, putCatalog, raw } from "./helpers/edge.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const B = buckets();
const EVENTS = eventStream().name;
const STREAM_LOG = streamLog().name;
const GATEWAYS = 7;
/** hang bound of one request or of waiting for the server's deliveries */
const BOUND_MS = 20_000;

const text = (r: unknown) => ((r as { content: Array<{ text?: string }> }).content[0]?.text ?? "");

/** Errors the server reported to a connection (permission violations arrive this way). */
function serverErrors(nc: NatsConnection): string[] {
  const out: string[] = [];
  void (async () => {
    for await (const st of nc.status()) if (st.type === "error") out.push(String((st as { error?: Error }).error?.message));
  })();
  return out;
}

describe("least privilege on the bus", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w: TestWorker;
  let runtimeJsm: JetStreamManager;
  let viewer: NatsConnection;
  let admin: NatsConnection;
  let viewerErrors: string[];
  let adminErrors: string[];
  let client: Client;
  /** the upstream session actor the client's calls live in */
  let actor: { sid: string; gid: string };
  let counterGid: string;

  const refused = (reason: RefusalReason) => w.refusals.counts[reason];
  /** waits for the worker's refusal counts to show an attack's deliveries arrived and were refused */
  const untilRefused = (what: string, done: () => boolean) =>
    until(what, done, BOUND_MS).catch((err: Error) => {
      throw new Error(`${err.message}; refusals: ${JSON.stringify(w.refusals.counts)}`);
    });
  const gatewayNames = async () => (await w.registry.records()).map((r) => r.record.name).sort();
  const allKeys = async (kv: KV) => {
    const out: string[] = [];
    for await (const k of await kv.keys()) out.push(k);
    return out.sort();
  };

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    w = await startTestWorker(nats, { MCPGW_WORKER_ID: "sec-w1", MCPGW_CALL_TIMEOUT: "10s" });
    runtimeJsm = await jetstreamManager(w.nc);
    for (let i = 1; i < GATEWAYS; i++) await w.registry.add({ name: `g${i}`, transport: "streamable-http", url: fixture.url(`g${i}`) });
    counterGid = (await w.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("counter") })).id;
    // a catalog for the edge now, rather than after the poller's first discovery
    const lister = new Client({ name: "discovery", version: "1" });
    await lister.connect(new StreamableHTTPClientTransport(new URL(fixture.url("counter"))));
    await putCatalog(w, counterGid, await listCatalog(lister, 10_000));
    await lister.close();
    // a connection-changing update: its `updated` event stays in the stream, ready to be replayed
    await w.registry.update({ id: counterGid, patch: { headers: { "x-version": "2" } } });

    client = (await connectClient(w.edge.url)).client;
    assert.equal(text(await client.callTool({ name: "counter__increment", arguments: {} })), "1");
    const [live] = w.upstream.sessions();
    assert.ok(live, "the call opened an upstream session");
    actor = { sid: live.sid, gid: live.gid };

    viewer = await nats.connect("viewer");
    admin = await nats.connect("admin");
    viewerErrors = serverErrors(viewer);
    adminErrors = serverErrors(admin);
  });

  after(async () => {
    await client?.close();
    await w?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  /** Nothing the attacks aimed at changed: every gateway, the live upstream session and its state upstream. */
  async function assertNothingChanged(): Promise<void> {
    assert.equal((await gatewayNames()).length, GATEWAYS, "every gateway is still registered");
    assert.deepEqual(
      w.upstream.sessions().map((x) => [x.sid, x.gid]),
      [[actor.sid, actor.gid]],
      "the client's upstream session is still the only one, on its key",
    );
    assert.notEqual(w.upstream.sessions()[0]!.state, "closed");
  }

  // (nats-server 2.9 pushes only to literal subscriptions or queue groups, so an actor's
  // wildcard address is attacked with a pull request's reply subject in the next test)
  it("a viewer's push consumers delivering KV entries into runtime subjects make the runtime do nothing", async () => {
    const jsm = await jetstreamManager(viewer);
    const before = refused("reply_not_inbox");
    const targets = [
      { deliver_subject: s.admin.gateway("remove"), deliver_group: QUEUE.registry, filter: `$KV.${B.gateways}.name.>`, count: GATEWAYS },
      { deliver_subject: s.admin.drain, deliver_group: QUEUE.admin, filter: `$KV.${B.gateways}.name.>`, count: GATEWAYS },
      { deliver_subject: s.upstream.spawn, deliver_group: QUEUE.spawn, filter: `$KV.${B.gateways}.gw.>`, count: GATEWAYS },
    ];
    for (const t of targets) {
      await jsm.consumers.add(`KV_${B.gateways}`, {
        deliver_subject: t.deliver_subject,
        ...(t.deliver_group ? { deliver_group: t.deliver_group } : {}),
        filter_subject: t.filter,
        ack_policy: AckPolicy.None,
        deliver_policy: DeliverPolicy.All,
      });
    }
    // the server did deliver every entry into the runtime's subjects, and the runtime refused each one
    const expected = targets.reduce((n, t) => n + t.count, 0);
    await untilRefused("the worker refused every delivery", () => refused("reply_not_inbox") - before >= expected);
    await assertNothingChanged();
    assert.equal(text(await client.callTool({ name: "counter__increment", arguments: {} })), "2", "the same upstream session still serves the client");
  });

  it("neither pull deliveries, JetStream API answers nor an admin's reply subject reach the runtime's handlers", async () => {
    const jsm = await jetstreamManager(viewer);
    for (const [name, filter] of [["pull-remove", "name.>"], ["pull-close", "name.>"], ["pull-nothing", "none.>"]]) {
      await jsm.consumers.add(`KV_${B.gateways}`, { name, filter_subject: `$KV.${B.gateways}.${filter}`, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
    }
    const status0 = refused("jetstream_status");
    const reply0 = refused("reply_not_inbox");
    const copy0 = refused("stored_copy");
    const noReply0 = refused("no_reply");
    // a pull request's reply subject: the entries go wherever the puller says, and so does a status
    const pull = (consumer: string, body: object, reply: string) => viewer.publish(`$JS.API.CONSUMER.MSG.NEXT.KV_${B.gateways}.${consumer}`, encodeJson(body), { reply });
    pull("pull-remove", { batch: GATEWAYS }, s.admin.gateway("remove"));
    pull("pull-close", { batch: GATEWAYS }, s.upstream.op(actor.sid, actor.gid, "close"));
    pull("pull-nothing", { batch: 1, expires: 100_000_000 }, s.admin.gateway("remove")); // ends in a 408 status
    // a direct get answered into the registry, an API answer into the actor's address
    viewer.publish(`$JS.API.DIRECT.GET.KV_${B.gateways}`, encodeJson({ last_by_subj: `$KV.${B.gateways}.${KEYS.gatewayName("g1")}` }), { reply: s.admin.gateway("remove") });
    viewer.publish("$JS.API.INFO", new Uint8Array(), { reply: s.upstream.op(actor.sid, actor.gid, "close") });
    // an admin's request whose reply subject is the actor's address: the runtime must not answer there
    admin.publish(s.admin.gateway("get"), encodeJson({ name: "g1" }), { reply: s.upstream.op(actor.sid, actor.gid, "close") });
    await untilRefused(
      "the worker refused each route",
      () =>
        refused("reply_not_inbox") - reply0 >= 2 * GATEWAYS + 1 &&
        refused("jetstream_status") - status0 >= 1 &&
        refused("stored_copy") - copy0 >= 1 &&
        refused("no_reply") - noReply0 >= 1,
    );
    await assertNothingChanged();
  });

  it("events the runtime did not publish, or published before, change nothing", async () => {
    const jsm = await jetstreamManager(viewer);
    const updatedSubject = s.evt.gateway(counterGid, "updated");
    const storedUpdates = async () => (await runtimeJsm.streams.info(EVENTS, { subjects_filter: updatedSubject })).state.subjects?.[updatedSubject] ?? 0;
    const updatesBefore = await storedUpdates();
    assert.ok(updatesBefore >= 1, "the connection-changing update is in the stream");
    const notRuntime0 = refused("not_a_runtime_event");

    // KV entries pushed into event subjects (the core listeners refuse them; the stream stores them under their KV subject)
    await jsm.consumers.add(`KV_${B.gateways}`, { deliver_subject: s.evt.gateway(counterGid, "removed"), filter_subject: `$KV.${B.gateways}.gw.>`, ack_policy: AckPolicy.None });
    await jsm.consumers.add(`KV_${B.gateways}`, { deliver_subject: s.evt.sessionClosed(actor.sid), filter_subject: `$KV.${B.gateways}.gw.>`, ack_policy: AckPolicy.None });
    // answers the stream stores under event subjects: a direct get and an API answer (a copy of
    // an entry written by compare-and-swap keeps its expected-sequence header, and the stream
    // refuses it; the name index entry was created at sequence 0, so its copy is stored)
    viewer.publish(`$JS.API.DIRECT.GET.KV_${B.gateways}`, encodeJson({ last_by_subj: `$KV.${B.gateways}.${KEYS.gatewayName("counter")}` }), { reply: s.evt.gateway(counterGid, "removed") });
    viewer.publish("$JS.API.INFO", new Uint8Array(), { reply: s.evt.sessionClosed(actor.sid) });
    // a replay: a pull request on the event stream whose reply subject is the event's own subject
    await jsm.consumers.add(EVENTS, { name: "replay", filter_subject: updatedSubject, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
    viewer.publish(`$JS.API.CONSUMER.MSG.NEXT.${EVENTS}.replay`, encodeJson({ batch: 1 }), { reply: updatedSubject });
    await until("the stored event was delivered back into its subject", async () => (await jsm.consumers.info(EVENTS, "replay")).delivered.consumer_seq === 1, BOUND_MS);

    // the worker's followers (upstream host: gateway and session events, poller, classifier) each refused the stored answers
    await untilRefused("the followers refused the stored answers", () => refused("not_a_runtime_event") - notRuntime0 >= 3);
    assert.equal(await storedUpdates(), updatesBefore, "the replayed event was dropped by the stream as a duplicate");
    const info = await runtimeJsm.streams.info(EVENTS);
    assert.equal(info.config.duplicate_window, info.config.max_age, "no stored event can come round again while it is kept");
    await assertNothingChanged();
    assert.equal(text(await client.callTool({ name: "counter__get_count", arguments: {} })), "2", "the upstream session was not replaced");
  });

  it("admin and viewer cannot read the runtime's replies: _INBOX.> is refused, and nothing of a reply reaches them", async () => {
    const marker = `secret-result-${Date.now()}`;
    const seen: string[] = [];
    const collect = (who: string) => (err: Error | null, m: Msg) => {
      if (!err) seen.push(`${who} ${m.subject} ${new TextDecoder().decode(m.data)}`);
    };
    const snoops = [
      viewer.subscribe("_INBOX.>", { callback: collect("viewer") }),
      admin.subscribe("_INBOX.>", { callback: collect("admin") }),
      viewer.subscribe("_INBOX_admin.>", { callback: collect("viewer") }),
      viewer.subscribe(">", { callback: collect("viewer") }),
      admin.subscribe(">", { callback: collect("admin") }),
    ];
    const allowed = [viewer.subscribe("mcpgw.evt.>", { callback: collect("viewer") }), admin.subscribe("mcpgw.evt.>", { callback: collect("admin") })];
    await Promise.all([viewer.flush(), admin.flush()]);
    const deniedTo = (errors: string[], pattern: string) => errors.some((e) => e.includes(`Subscription to "${pattern}"`));
    await until(
      "the server refused every snooping subscription",
      () => snoops.every((x) => x.isClosed()) && ["_INBOX.>", ">"].every((p) => deniedTo(viewerErrors, p) && deniedTo(adminErrors, p)),
      BOUND_MS,
    );
    assert.ok(allowed.every((x) => !x.isClosed()), "events stay readable");

    // a tool call (its reply travels runtime to runtime) and an admin request by the runtime
    assert.equal(text(await client.callTool({ name: "counter__echo", arguments: { text: marker } })), marker);
    const g = await request(w.nc, s.admin.gateway("get"), { id: counterGid }, z.object({ name: z.string() }), BOUND_MS);
    assert.equal(g.name, "counter");
    await w.nc.flush();
    assert.deepEqual(seen.filter((l) => l.includes(marker) || l.split(" ")[1]!.startsWith("_INBOX")), []);
    allowed.forEach((x) => x.unsubscribe());
  });

  it("KV writes, stream deletes and purges, and deletes of the runtime's own consumers are refused and change nothing", async () => {
    const runtimeConsumers = async (stream: string) => {
      const names: string[] = [];
      for await (const c of runtimeJsm.consumers.list(stream)) names.push(c.name);
      return names.sort();
    };
    const followers = await runtimeConsumers(EVENTS);
    const stateWatches = await runtimeConsumers(`KV_${B.state}`);
    assert.ok(followers.length >= 3 && stateWatches.length >= 1, "the worker follows events and watches state");
    const keysBefore = await allKeys(w.stores.gateways);

    for (const [who, nc] of [["viewer", viewer], ["admin", admin]] as const) {
      const kv = await new Kvm(nc).open(B.gateways);
      const jsm = await jetstreamManager(nc, { timeout: 5_000 });
      const attempts: Array<[string, () => Promise<unknown>]> = [
        ["kv put", () => kv.put(KEYS.gatewayName("g1"), "{}")],
        ["kv create", () => kv.create(KEYS.gatewayName("intruder"), "{}")],
        ["kv delete", () => kv.delete(KEYS.gatewayName("g1"))],
        ["kv purge", () => kv.purge(KEYS.gatewayName("g2"))],
        ["stream purge", () => jsm.streams.purge(`KV_${B.gateways}`)],
        ["stream delete", () => jsm.streams.delete(EVENTS)],
        ["message delete", () => jsm.streams.deleteMessage(`KV_${B.gateways}`, 1)],
        ["stream update", () => jsm.streams.update(EVENTS, { max_age: 1 })],
        ["consumer delete (event follower)", () => jsm.consumers.delete(EVENTS, followers[0]!)],
        ["consumer delete (state watch)", () => jsm.consumers.delete(`KV_${B.state}`, stateWatches[0]!)],
      ];
      for (const [what, attempt] of attempts) await assert.rejects(attempt(), /permission/i, `${who}: ${what}`);
    }
    assert.deepEqual(await allKeys(w.stores.gateways), keysBefore, "the gateway bucket is unchanged");
    const info = await runtimeJsm.streams.info(EVENTS);
    assert.notEqual(info.config.max_age, 1);
    for (const name of followers) assert.ok((await runtimeConsumers(EVENTS)).includes(name), `follower ${name} still exists`);
    for (const name of stateWatches) assert.ok((await runtimeConsumers(`KV_${B.state}`)).includes(name), `state watch ${name} still exists`);
    await assertNothingChanged();
  });

  it("the stream log (tool results) is read by no route of admin or viewer, nor written through mcpgw.stream.>; what the runtime did not publish there is never replayed", async () => {
    // a client session and one of its streams, as the runtime writes it: a secret, then the call's answer
    const init = await raw(w.edge.port, { body: INIT });
    const clientId = String(init.headers["mcp-session-id"]);
    const sid = sessionKey(clientId);
    const streamId = "attacked";
    const subject = s.stream.event(sid, streamId, "message");
    const secret = `stream-secret-${Date.now()}`;
    publishStreamEvent(w.nc, s, sid, streamId, { uid: "s1", message: { jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: secret } } });

    const seen: string[] = [];
    for (const [who, nc, errors] of [["viewer", viewer, viewerErrors], ["admin", admin, adminErrors]] as const) {
      const jsm = await jetstreamManager(nc, { timeout: 5_000 });
      await assert.rejects(jsm.consumers.add(STREAM_LOG, { ack_policy: AckPolicy.None, filter_subject: subject }), /permission/i, `${who}: ephemeral consumer`);
      await assert.rejects(jsm.consumers.add(STREAM_LOG, { name: `${who}-reader`, ack_policy: AckPolicy.None, filter_subject: subject }), /permission/i, `${who}: named consumer`);
      await assert.rejects(jsm.consumers.add(STREAM_LOG, { durable_name: `${who}-durable`, ack_policy: AckPolicy.None }), /permission/i, `${who}: durable consumer`);
      await assert.rejects(jsm.streams.getMessage(STREAM_LOG, { last_by_subj: subject }), /permission/i, `${who}: message get`);
      await assert.rejects(jsm.streams.getMessage(STREAM_LOG, { seq: 1 }), /permission/i, `${who}: message get by sequence`);
      // direct gets: the answer would come to the user's own inbox
      const inbox = `_INBOX_${who}.direct`;
      nc.subscribe(inbox, { callback: (_e, m) => void seen.push(new TextDecoder().decode(m.data)) });
      nc.publish(`$JS.API.DIRECT.GET.${STREAM_LOG}`, encodeJson({ last_by_subj: subject }), { reply: inbox });
      nc.publish(`$JS.API.DIRECT.GET.${STREAM_LOG}.${subject}`, new Uint8Array(), { reply: inbox });
      nc.publish(subject, encodeJson({ uid: `forged-${who}`, message: { jsonrpc: "2.0", method: "notifications/message", params: { level: "info", data: "forged" } } }));
      await nc.flush();
      await until(
        `${who}: the server refused the direct gets and the publish`,
        () => [`$JS.API.DIRECT.GET.${STREAM_LOG}"`, `$JS.API.DIRECT.GET.${STREAM_LOG}.${subject}"`, `Publish to "${subject}"`].every((p) => errors.some((e) => e.includes(p))),
        BOUND_MS,
      );
    }

    // deliveries the server stores in the log under the stream's subject: KV entries a
    // viewer's pull request sends there, a direct get answer of a stored event (which keeps
    // the event's own Nats-Msg-Id), a JetStream API answer
    const stored = async () => (await runtimeJsm.streams.info(STREAM_LOG, { subjects_filter: subject })).state.subjects?.[subject] ?? 0;
    const vjsm = await jetstreamManager(viewer);
    // (KV entries are written with an expected-sequence header, which their copies keep: the log refuses them)
    await vjsm.consumers.add(`KV_${B.gateways}`, { name: "into-log", filter_subject: `$KV.${B.gateways}.>`, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
    viewer.publish(`$JS.API.CONSUMER.MSG.NEXT.KV_${B.gateways}.into-log`, encodeJson({ batch: 100, no_wait: true }), { reply: subject });
    viewer.publish(`$JS.API.DIRECT.GET.${EVENTS}`, encodeJson({ seq: 1 }), { reply: subject });
    viewer.publish("$JS.API.INFO", new Uint8Array(), { reply: subject });
    await until("the consumer delivered every entry", async () => (await vjsm.consumers.info(`KV_${B.gateways}`, "into-log")).num_pending === 0, BOUND_MS);
    await until("the log stored the two answers", async () => (await stored()) >= 3, BOUND_MS);
    const attacks = (await stored()) - 1;
    publishStreamEvent(w.nc, s, sid, streamId, { uid: "s2", requestId: "n1", reply: { ok: true, data: { result: { content: [] } } } });

    const notRuntime0 = refused("not_a_runtime_event");
    const replay = await raw(w.edge.port, { method: "GET", headers: { "mcp-session-id": clientId, "last-event-id": `${streamId}.0` }, timeoutMs: BOUND_MS });
    const ids = replay.body.split("\n").filter((l) => l.startsWith("id: "));
    assert.deepEqual(ids, [`id: ${streamId}.s1`, `id: ${streamId}.s2`], "only the runtime's own events are replayed");
    assert.ok(replay.body.includes(secret), "the client itself gets its stream");
    assert.equal(refused("not_a_runtime_event") - notRuntime0, attacks, "each stored delivery was refused");
    assert.deepEqual(seen.filter((t) => t.includes(secret)), [], "nothing of the log reached admin or viewer");
    await assertNothingChanged();
  });

  it("admin still administers through mcpgw.admin.* with its own inbox prefix", async () => {
    const view = z.object({ id: z.string(), name: z.string() });
    const added = await request(admin, s.admin.gateway("add"), { name: "by-admin", transport: "streamable-http", url: fixture.url("by-admin") }, view, BOUND_MS);
    const list = await request(admin, s.admin.gateway("list"), {}, z.object({ gateways: z.array(view) }), BOUND_MS);
    assert.ok(list.gateways.some((g) => g.id === added.id));
    await request(admin, s.admin.gateway("remove"), { id: added.id }, z.object({ removed: z.literal(true) }), BOUND_MS);
    assert.equal((await gatewayNames()).includes("by-admin"), false);
  });

  it("viewer still lists, gets and watches KV state and reads the event stream", async () => {
    const kvm = new Kvm(viewer);
    const bucketNames: string[] = [];
    for await (const st of kvm.list()) bucketNames.push(st.bucket);
    assert.deepEqual(bucketNames.sort(), Object.values(B).sort());
    const kv = await kvm.open(B.gateways);
    const keys: string[] = [];
    for await (const k of await kv.keys()) keys.push(k);
    assert.ok(keys.includes(KEYS.gateway(counterGid)));
    assert.equal((await kv.get(KEYS.gateway(counterGid)))?.json<{ name: string }>().name, "counter");
    const watch = await (await kvm.open(B.state)).watch();
    for await (const e of watch) {
      assert.ok(e.key.length > 0);
      break;
    }
    watch.stop();
    const info = await (await jetstreamManager(viewer)).streams.info(EVENTS);
    assert.ok(info.state.messages > 0);
    const reader = await jetstream(viewer).consumers.get(EVENTS, { deliver_policy: DeliverPolicy.All });
    const first = await reader.next({ expires: 5_000 });
    assert.match(first?.subject ?? "", /^mcpgw\.evt\./);
  });
});

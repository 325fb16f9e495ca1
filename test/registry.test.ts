import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { jetstreamManager } from "@nats-io/jetstream";
import { AnyEnvelopeSchema, type Envelope } from "../protocol/envelope.ts";
import { buckets, eventStream, INBOX_PREFIX, KEYS, subjects, type AdminGatewayOp } from "../protocol/subjects.ts";
import { PollerStatusesReplySchema } from "../protocol/poller.ts";
import { GatewayRecordSchema } from "../protocol/gateway.ts";
import { decodeJson, encodeJson, gather } from "../runtime/bus.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const B = buckets();

async function admin(nc: NatsConnection, op: AdminGatewayOp, payload: unknown): Promise<Envelope<any>> {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : encodeJson(payload);
  const msg = await nc.request(s.admin.gateway(op), body, { timeout: 5000 });
  return AnyEnvelopeSchema.parse(decodeJson(msg.data)) as Envelope<any>;
}

function data<T = any>(env: Envelope<T>): T {
  if (!env.ok) assert.fail(`expected ok, got ${JSON.stringify(env.error)}`);
  return env.data;
}

/** Gateway-mutation events kept by the event stream. */
async function mutationEventCount(nc: NatsConnection): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(eventStream().name, { subjects_filter: s.evt.gatewayAll });
  return Object.entries(info.state.subjects ?? {})
    .filter(([subject]) => /\.(added|updated|removed)$/.test(subject))
    .reduce((n, [, count]) => n + count, 0);
}

/** Every value ever stored in the given buckets (raw stream contents, all revisions). */
async function dumpAllState(nc: NatsConnection, bucketNames: string[] = Object.values(B)): Promise<string> {
  const jsm = await jetstreamManager(nc);
  let out = "";
  for (const bucket of bucketNames) {
    const name = `KV_${bucket}`;
    const info = await jsm.streams.info(name);
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(name, { seq }).catch(() => null);
      if (m) out += `${m.subject} ${new TextDecoder().decode(m.data)}\n`;
    }
  }
  return out;
}

const HTTP_GATEWAY = { name: "weather", transport: "streamable-http", url: "https://weather.example.com/mcp" };

describe("gateway registry", () => {
  let nats: TestNats;
  let w1: TestWorker;
  let w2: TestWorker;
  let nc: NatsConnection;

  before(async () => {
    nats = await startNats();
    w1 = await startTestWorker(nats, { MCPGW_WORKER_ID: "w1" });
    w2 = await startTestWorker(nats, { MCPGW_WORKER_ID: "w2" });
    nc = await nats.connect("admin");
  });
  after(async () => {
    await w1?.stop();
    await w2?.stop();
    await nats?.stop();
  });

  it("adds, gets, lists, updates and removes a gateway", async () => {
    const added = data(await admin(nc, "add", { ...HTTP_GATEWAY, name: "crud", tags: ["a"] }));
    assert.match(added.id, /^[a-f0-9]{16}$/);
    assert.equal(added.name, "crud");
    assert.equal(added.enabled, true);
    assert.deepEqual(added.auth, { type: "none" });

    assert.deepEqual(data(await admin(nc, "get", { id: added.id })).url, HTTP_GATEWAY.url);
    assert.equal(data(await admin(nc, "get", { name: "crud" })).id, added.id);
    assert.ok(data(await admin(nc, "list", {})).gateways.some((g: any) => g.id === added.id));
    assert.equal(data(await admin(nc, "list", { tag: "zzz" })).gateways.length, 0);

    const updated = data(await admin(nc, "update", { id: added.id, patch: { description: "forecasts", name: "crud2" } }));
    assert.equal(updated.description, "forecasts");
    assert.equal(updated.name, "crud2");
    assert.ok(updated.revision > added.revision);
    assert.equal((await admin(nc, "get", { name: "crud" })).ok, false, "old name released");
    assert.equal(data(await admin(nc, "get", { name: "crud2" })).id, added.id);

    // what other actors keep about a gateway is removed with it
    const state = await new Kvm(nc).open(B.state);
    const catalogKv = await new Kvm(w1.nc).open(B.catalog);
    const runtimeState = await new Kvm(w1.nc).open(B.state);
    await runtimeState.put(KEYS.usage(added.id), JSON.stringify({ lastUsedAt: 1, uses: 1 }));
    await catalogKv.put(KEYS.catalog(added.id), "{}");
    assert.deepEqual(data(await admin(nc, "remove", { name: "crud2" })), { id: added.id, name: "crud2", removed: true });
    for (const key of [KEYS.usage(added.id), KEYS.gatewayStatus(added.id), KEYS.pollOwner(added.id), KEYS.pollHealth(added.id)]) {
      assert.notEqual((await state.get(key))?.operation ?? "absent", "PUT", `${key} removed`);
    }
    assert.notEqual((await catalogKv.get(KEYS.catalog(added.id)))?.operation ?? "absent", "PUT", "catalog removed");
    const gone = await admin(nc, "get", { id: added.id });
    assert.equal(!gone.ok && gone.error.code, "not_found");
    // the name is free again
    data(await admin(nc, "add", { ...HTTP_GATEWAY, name: "crud2" }));
  });

  it("lists in pages, in name order, each page's live statuses asked of every worker at once", async () => {
    const names = ["page-a", "page-b", "page-c", "page-d", "page-e"];
    const ids = await Promise.all(names.map(async (name) => data(await admin(nc, "add", { ...HTTP_GATEWAY, name, tags: ["paged"] })).id as string));
    // every worker answers for the pollers it runs: together, each gateway once
    const statusesOf = async () => {
      const replies = await gather(w1.nc, s.poller.statuses, { gids: ids }, PollerStatusesReplySchema, { stallMs: 1_000, maxMs: 10_000 });
      return replies.flatMap((r) => Object.keys(r.statuses).map((gid) => [gid, r.worker]));
    };
    await until("every poller started", async () => ((await statusesOf()).length === ids.length ? true : null), 30_000);
    const answered = await statusesOf();
    assert.deepEqual(answered.map(([gid]) => gid).sort(), [...ids].sort(), "each gateway's status from exactly one worker");

    const pages: string[][] = [];
    for (let after: string | undefined; ; ) {
      const page = data(await admin(nc, "list", { tag: "paged", limit: 2, ...(after && { after }) }));
      pages.push(page.gateways.map((g: any) => g.name));
      assert.ok(page.gateways.every((g: any) => g.status), "each with its status");
      if (!(after = page.next)) break;
      assert.equal(after, page.gateways.at(-1).name);
    }
    assert.deepEqual(pages, [["page-a", "page-b"], ["page-c", "page-d"], ["page-e"]]);
    assert.equal(data(await admin(nc, "list", { tag: "paged" })).next, undefined, "all in one page when they fit");

    for (const bad of [{ limit: 0 }, { limit: 1001 }, { after: "Not A Name" }]) {
      const refused = await admin(nc, "list", bad);
      assert.equal(!refused.ok && refused.error.code, "invalid_request", JSON.stringify(bad));
    }
  });

  it("refuses a duplicate name, also when adds race", async () => {
    data(await admin(nc, "add", { ...HTTP_GATEWAY, name: "dup" }));
    const again = await admin(nc, "add", { ...HTTP_GATEWAY, name: "dup" });
    assert.equal(!again.ok && again.error.code, "conflict");

    const racers = await Promise.all(Array.from({ length: 12 }, () => admin(nc, "add", { ...HTTP_GATEWAY, name: "race" })));
    assert.equal(racers.filter((r) => r.ok).length, 1);
    assert.ok(racers.every((r) => r.ok || r.error.code === "conflict"));
    const listed = data(await admin(nc, "list", {})).gateways.filter((g: any) => g.name === "race");
    assert.equal(listed.length, 1);
  });

  it("answers conflict for a stale expectedRevision", async () => {
    const g = data(await admin(nc, "add", { ...HTTP_GATEWAY, name: "cas" }));
    data(await admin(nc, "update", { id: g.id, expectedRevision: g.revision, patch: { description: "one" } }));
    const stale = await admin(nc, "update", { id: g.id, expectedRevision: g.revision, patch: { description: "two" } });
    assert.equal(!stale.ok && stale.error.code, "conflict");
    const staleRemove = await admin(nc, "remove", { id: g.id, expectedRevision: g.revision });
    assert.equal(!staleRemove.ok && staleRemove.error.code, "conflict");
    assert.equal(data(await admin(nc, "get", { id: g.id })).description, "one");
  });

  it("refuses malformed requests with field paths and changes nothing", async () => {
    const g = data(await admin(nc, "add", { ...HTTP_GATEWAY, name: "steady" }));
    // other actors (pollers, heartbeats) write their own state meanwhile; the registry's is the gateways bucket
    const beforeState = await dumpAllState(nc, [B.gateways]);
    const beforeEvents = await mutationEventCount(nc);
    const cases: Array<[AdminGatewayOp, unknown, string | null]> = [
      ["add", "{not json", null],
      ["add", { ...HTTP_GATEWAY, name: 42 }, "name"],
      ["add", { ...HTTP_GATEWAY, transport: "carrier-pigeon" }, "transport"],
      ["add", { ...HTTP_GATEWAY, name: "Bad Slug!" }, "name"],
      ["add", { ...HTTP_GATEWAY, name: "x".repeat(100_000) }, "name"],
      ["add", { ...HTTP_GATEWAY, description: "d".repeat(100_000) }, "description"],
      ["add", { ...HTTP_GATEWAY, url: "ftp://nope" }, "url"],
      ["add", { ...HTTP_GATEWAY, extra: true }, null],
      ["add", { name: "stdio-no-cmd", transport: "stdio" }, "stdio"],
      ["add", { ...HTTP_GATEWAY, auth: { type: "bearer" } }, "auth.token"],
      ["add", { ...HTTP_GATEWAY, headers: { Authorization: "x" } }, "headers"],
      ["add", [1, 2, 3], null],
      ["update", { id: g.id, patch: { url: "not a url" } }, "patch.url"],
      ["update", { id: g.id, patch: { enabled: "yes" } }, "patch.enabled"],
      ["update", { patch: {} }, "id"],
      ["remove", { id: "../../etc" }, "id"],
      ["get", {}, "id"],
    ];
    for (const [op, payload, path] of cases) {
      const r = await admin(nc, op, payload);
      assert.equal(r.ok, false, `${op} ${JSON.stringify(payload).slice(0, 80)} should be refused`);
      if (r.ok) continue;
      assert.equal(r.error.code, "invalid_request", `${op}: ${r.error.message}`);
      if (path) assert.ok(r.error.issues?.some((i) => i.path === path), `${op}: expected issue at ${path}, got ${JSON.stringify(r.error.issues)}`);
    }
    assert.equal(await dumpAllState(nc, [B.gateways]), beforeState, "gateway records unchanged");
    assert.equal(await mutationEventCount(nc), beforeEvents, "no mutation events");
    assert.ok(beforeEvents > 0, "the event count is real");
  });

  it("answers each admin request exactly once with two workers", async () => {
    const inbox = `${INBOX_PREFIX.admin}.once.${Date.now()}`; // the admin may read only its own inboxes
    const replies: string[] = [];
    const sub = nc.subscribe(inbox, { callback: (_e, m) => void replies.push(m.string()) });
    for (let i = 0; i < 10; i++) nc.publish(s.admin.gateway("list"), encodeJson({}), { reply: inbox });
    nc.publish(s.admin.gateway("add"), encodeJson({ ...HTTP_GATEWAY, name: "once" }), { reply: inbox });
    await until("an answer to each request", () => replies.length >= 11, 30_000);
    // a second answer, if any worker gave one, arrives close behind the first
    await new Promise((r) => setTimeout(r, 500));
    sub.unsubscribe();
    assert.equal(replies.length, 11);
    assert.equal(data(await admin(nc, "list", {})).gateways.filter((g: any) => g.name === "once").length, 1);
  });

  it("holds on every worker each added or updated gateway exactly as stored, also on the worker that wrote it (which holds its own copy rather than a second parse)", async () => {
    const spec = { ...HTTP_GATEWAY, name: "held", tags: ["x"], headers: { "x-team": "a" }, auth: { type: "bearer", token: "held-token" }, passthroughHeaders: ["x-trace"] };
    const added = data(await admin(nc, "add", spec));
    const updated = data(await admin(nc, "update", { id: added.id, patch: { description: "changed", auth: { type: "headers", headers: { "x-key": "k" } } } }));
    // a stdio gateway (disabled: nothing is spawned) with a sealed environment and TLS-less fields left out
    const stdio = data(await admin(nc, "add", { name: "held-stdio", transport: "stdio", stdio: { command: "node", args: ["x.js"], env: { API_KEY: "held-env" } }, enabled: false }));
    const kv = await new Kvm(nc).open(B.gateways);
    for (const { id, revision } of [updated, stdio]) {
      const stored = GatewayRecordSchema.parse((await kv.get(KEYS.gateway(id)))!.json());
      for (const w of [w1, w2]) {
        await until(`${w.id} holding revision ${revision}`, () => (w.ctx.gatewayRecords.get(id)?.revision === revision ? true : null), 20_000);
        assert.deepEqual(w.ctx.gatewayRecords.get(id)!.record, stored, `${w.id} holds what is stored`);
      }
    }
  });

  it("publishes mutation events with a correct connectChanged", async () => {
    const seen: any[] = [];
    const sub = nc.subscribe(s.evt.gatewayAll, { callback: (_e, m) => void seen.push({ subject: m.subject, ...m.json<any>() }) });
    const g = data(await admin(nc, "add", { ...HTTP_GATEWAY, name: "evts" }));
    data(await admin(nc, "update", { id: g.id, patch: { description: "cosmetic", tags: ["x"] } }));
    data(await admin(nc, "update", { id: g.id, patch: { url: "https://elsewhere.example.com/mcp" } }));
    data(await admin(nc, "update", { id: g.id, patch: { auth: { type: "bearer", token: "tok-1" } } }));
    data(await admin(nc, "update", { id: g.id, patch: { auth: { type: "bearer", token: "tok-1" } } })); // no change
    data(await admin(nc, "update", { id: g.id, patch: { auth: { type: "bearer", token: "tok-2" } } }));
    data(await admin(nc, "remove", { id: g.id }));
    const mine = () => seen.filter((e) => e.gid === g.id);
    await until("the removed event", () => mine().some((e) => e.type === "removed"), 30_000);
    sub.unsubscribe();
    assert.deepEqual(
      mine().map((e) => [e.subject, e.type, e.connectChanged, e.changedFields]),
      [
        [s.evt.gateway(g.id, "added"), "added", undefined, undefined],
        [s.evt.gateway(g.id, "updated"), "updated", false, ["description", "tags"]],
        [s.evt.gateway(g.id, "updated"), "updated", true, ["url"]],
        [s.evt.gateway(g.id, "updated"), "updated", true, ["auth"]],
        [s.evt.gateway(g.id, "updated"), "updated", true, ["auth"]],
        [s.evt.gateway(g.id, "removed"), "removed", undefined, undefined],
      ],
    );
  });

  it("keeps secrets out of KV, events, replies and logs", async () => {
    const secrets = {
      token: "tok-SECRET-bearer-0001",
      password: "pw-SECRET-basic-0002",
      header: "hv-SECRET-header-0003",
      query: "qp-SECRET-query-0004",
      key: "-----BEGIN PRIVATE KEY-----SECRET-key-0005",
      env: "env-SECRET-stdio-0006",
    };
    const events: string[] = [];
    const sub = nc.subscribe(s.evt.all, { callback: (_e, m) => void events.push(m.string()) });
    const replies: string[] = [];
    const send = async (op: AdminGatewayOp, p: unknown) => {
      const r = await admin(nc, op, p);
      replies.push(JSON.stringify(r));
      return data(r);
    };
    const a = await send("add", { ...HTTP_GATEWAY, name: "sec-bearer", auth: { type: "bearer", token: secrets.token } });
    await send("add", { ...HTTP_GATEWAY, name: "sec-basic", auth: { type: "basic", username: "bob", password: secrets.password } });
    await send("add", { ...HTTP_GATEWAY, name: "sec-headers", auth: { type: "headers", headers: { "X-Api-Key": secrets.header } } });
    await send("add", { ...HTTP_GATEWAY, name: "sec-query", auth: { type: "query", params: { api_key: secrets.query } } });
    await send("add", { ...HTTP_GATEWAY, name: "sec-tls", tls: { cert: "CERT", key: secrets.key } });
    await send("add", { name: "sec-stdio", transport: "stdio", stdio: { command: "node", args: ["x.js"], env: { API_KEY: secrets.env } } });
    await send("update", { id: a.id, patch: { description: "still secret" } });
    await send("get", { id: a.id });
    await send("list", {});
    const updated = (e: string) => e.includes(a.id) && e.includes('"updated"');
    await until("the events of those mutations", () => events.some(updated), 30_000);
    sub.unsubscribe();
    assert.equal(data(await admin(nc, "get", { id: a.id })).auth.token, "********");

    const state = await dumpAllState(nc);
    assert.match(state, /enc:v1:/, "sealed secrets are stored");
    const logs = [...w1.lines, ...w2.lines].join("\n");
    for (const [what, secret] of Object.entries(secrets)) {
      assert.ok(!state.includes(secret), `${what} in KV`);
      assert.ok(!events.join("\n").includes(secret), `${what} in events`);
      assert.ok(!replies.join("\n").includes(secret), `${what} in replies`);
      assert.ok(!logs.includes(secret), `${what} in logs`);
    }
    // the key in KV is only the gateway id and the name
    assert.ok(!/SECRET/.test(state.split("\n").map((l) => l.split(" ")[0]).join("\n")));
  });

  it("lets the viewer read state but not command or write", async () => {
    const viewer = await nats.connect("viewer");
    const kv = await new Kvm(viewer).open(B.gateways);
    const keys: string[] = [];
    for await (const k of await kv.keys()) keys.push(k);
    assert.ok(keys.some((k) => k.startsWith("gw.")), "viewer lists gateway keys");
    const entry = await kv.get(keys.find((k) => k.startsWith("gw."))!);
    assert.ok(entry?.json<any>().id);

    const errors: Error[] = [];
    (async () => {
      for await (const st of viewer.status()) if (st.type === "error") errors.push(st.error);
    })();
    await assert.rejects(viewer.request(s.admin.gateway("list"), encodeJson({}), { timeout: 1500 }));
    await assert.rejects(kv.put("gw.injected", "{}", { timeout: 1500 } as never));
    const adminKv = await new Kvm(nc).open(B.gateways);
    assert.equal(await adminKv.get("gw.injected").then((e) => e?.operation ?? null), null);
    assert.ok(errors.some((e) => /permission/i.test(e.message)), "the server reported a permissions violation");
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createInbox, type NatsConnection } from "@nats-io/transport-node";
import { inboxPrefixOf, subjects } from "../protocol/subjects.ts";
import { decodeJson, encodeJson } from "../runtime/bus.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();

type Ping = { type: string; name: string; id: string; version: string; metadata: Record<string, string> };
type Info = Ping & { endpoints: Array<{ name: string; subject: string; queue_group: string }> };
type Stats = Ping & {
  endpoints: Array<{ name: string; subject: string; num_requests: number; num_errors: number; last_error: string; processing_time: number; average_processing_time: number }>;
};

/** The inbox prefix of each connection the tests make (nats.conf lets admin and viewer read only their own). */
const inboxPrefix = new WeakMap<NatsConnection, string>();

/**
 * Every answer to one request: the `expected` ones, however late one worker answers after
 * another on a loaded machine (bounded), then whatever more comes within a second.
 */
async function all<T>(nc: NatsConnection, subject: string, payload: unknown = {}, expected = 1): Promise<T[]> {
  const out: T[] = [];
  const inbox = createInbox(inboxPrefix.get(nc));
  const sub = nc.subscribe(inbox, { callback: (_e, m) => void out.push(decodeJson(m.data) as T) });
  try {
    nc.publish(subject, encodeJson(payload), { reply: inbox });
    await until(`${expected} answers to ${subject}`, () => out.length >= expected, 30_000);
    await new Promise((r) => setTimeout(r, 1_000)); // an answer too many comes close behind
    return [...out];
  } finally {
    sub.unsubscribe();
  }
}

describe("the admin API as a NATS micro service", () => {
  let nats: TestNats;
  const workers: TestWorker[] = [];

  before(async () => {
    nats = await startNats();
    workers.push(await startTestWorker(nats, { MCPGW_WORKER_ID: "m1" }), await startTestWorker(nats, { MCPGW_WORKER_ID: "m2" }));
  });
  const connect = async (user: "admin" | "viewer") => {
    const nc = await nats.connect(user);
    inboxPrefix.set(nc, inboxPrefixOf(user));
    return nc;
  };
  after(async () => {
    for (const w of workers) await w.stop();
    await nats?.stop();
  });

  it("answers $SRV.PING and $SRV.INFO for the viewer: one mcpgw-admin instance per worker with every admin subject", async () => {
    const viewer = await connect("viewer");
    const pings = await all<Ping>(viewer, "$SRV.PING", {}, 2);
    assert.deepEqual(pings.map((p) => [p.type, p.name, p.metadata.worker]).sort(), [
      ["io.nats.micro.v1.ping_response", "mcpgw-admin", "m1"],
      ["io.nats.micro.v1.ping_response", "mcpgw-admin", "m2"],
    ]);
    assert.notEqual(pings[0]!.id, pings[1]!.id);

    const infos = await all<Info>(viewer, `$SRV.INFO.${s.admin.service}`, {}, 2);
    assert.equal(infos.length, 2);
    const expected = [
      ...(["add", "update", "remove", "get", "list", "refresh"] as const).map((op) => s.admin.gateway(op)),
      s.admin.sessionList,
      s.admin.sessionEvict,
      s.admin.drain,
      s.admin.status,
      s.admin.classificationGet,
    ].sort();
    for (const info of infos) {
      assert.deepEqual(info.endpoints.map((e) => e.subject).sort(), expected);
      const add = info.endpoints.find((e) => e.subject === s.admin.gateway("add"))!;
      assert.deepEqual([add.name, add.queue_group], ["gateway-add", "mcpgw-registry"]);
      assert.equal(info.endpoints.find((e) => e.subject === s.admin.status)!.queue_group, "mcpgw-admin");
    }
  });

  it("answers each admin request once, with the envelope as before, and $SRV.STATS counts requests, errors and time", async () => {
    const admin = await connect("admin");
    const lists = 6;
    for (let i = 0; i < lists; i++) {
      const replies = await all<unknown>(admin, s.admin.gateway("list"), {});
      assert.deepEqual(replies, [{ ok: true, data: { gateways: [] } }], "one answer from one worker");
    }
    assert.equal((await all<unknown>(admin, s.admin.status, {})).length, 1, "the admin queue group answers once too");
    const missing = await admin.request(s.admin.gateway("get"), encodeJson({ name: "nope" }), { timeout: 20_000 });
    assert.equal(missing.headers, undefined, "no service headers added to a reply");
    assert.deepEqual(decodeJson(missing.data), { ok: false, error: { code: "not_found", message: "no gateway named nope" } });
    const bad = decodeJson((await admin.request(s.admin.gateway("get"), encodeJson({ name: 7 }), { timeout: 20_000 })).data) as { error: { code: string } };
    assert.equal(bad.error.code, "invalid_request");

    const stats = await all<Stats>(await connect("viewer"), `$SRV.STATS.${s.admin.service}`, {}, 2);
    assert.equal(stats.length, 2);
    const sum = (name: string, field: "num_requests" | "num_errors" | "processing_time") =>
      stats.reduce((n, st) => n + st.endpoints.find((e) => e.name === name)![field], 0);
    assert.equal(sum("gateway-list", "num_requests"), lists);
    assert.equal(sum("gateway-list", "num_errors"), 0);
    assert.ok(sum("gateway-list", "processing_time") > 0, "time from arrival to reply, in nanoseconds");
    assert.equal(sum("gateway-get", "num_requests"), 2);
    assert.equal(sum("gateway-get", "num_errors"), 2, "an error envelope counts as an error");
    const lastErrors = stats.map((st) => st.endpoints.find((e) => e.name === "gateway-get")!.last_error).filter(Boolean);
    assert.ok(lastErrors.every((e) => /^(not_found|invalid_request): /.test(e)), lastErrors.join(", "));
  });

  it("refuses admin commands to the viewer, who may only read the service's figures", async () => {
    const viewer = await connect("viewer");
    const listsServed = async () =>
      (await all<Stats>(viewer, `$SRV.STATS.${s.admin.service}`, {}, 2)).reduce((n, st) => n + st.endpoints.find((e) => e.name === "gateway-list")!.num_requests, 0);
    const before = await listsServed();
    const err = await viewer.request(s.admin.gateway("list"), encodeJson({}), { timeout: 3_000 }).catch((e: Error) => e);
    assert.ok(err instanceof Error, "a viewer's admin request gets no answer");
    assert.equal(await listsServed(), before, "and never reaches a worker");
  });
});

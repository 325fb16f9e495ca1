// Stateless clients' upstream sessions, keyed by StatelessIdentity, on the real upstream
// session actors over a real nats-server: the key has sessionKey's form, so the actors serve it
// unchanged; two credentials never share upstream state; one credential reuses its sessions.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { StatelessIdentity } from "../actors/statelessIdentity.ts";
import { subjects } from "../protocol/subjects.ts";
import { createUpstreamCaller, type UpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, TEST_SECRET_KEY, type TestWorker } from "./helpers/worker.ts";

const text = (r: unknown) => ((r as { result?: { content?: Array<{ text?: string }> } }).result?.content?.[0]?.text ?? JSON.stringify(r));

describe("stateless isolation on the upstream session actors", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let w1: TestWorker;
  let w2: TestWorker;
  let gid: string;
  let caller: UpstreamCaller;
  let n = 0;
  const identity = new StatelessIdentity(TEST_SECRET_KEY);
  const call = (sid: string, name: string) => caller.call(sid, gid, { method: "tools/call", params: { name, arguments: {} }, requestId: `r${n++}`, headers: {} });

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    w1 = await startTestWorker(nats, { MCPGW_WORKER_ID: "st-w1", MCPGW_CALL_TIMEOUT: "20s" });
    w2 = await startTestWorker(nats, { MCPGW_WORKER_ID: "st-w2", MCPGW_CALL_TIMEOUT: "20s" });
    gid = (await w1.registry.add({ name: "counter", transport: "streamable-http", url: fixture.url("iso") })).id;
    caller = createUpstreamCaller(w1.nc, subjects(), { callTimeoutMs: 20_000, log: w1.log });
  });
  after(async () => {
    await w1?.stop();
    await w2?.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("keeps two credentials' upstream state apart, and a partition apart from its credential's default", async () => {
    const a = identity.sessionKeyOf("token-a");
    const b = identity.sessionKeyOf("token-b");
    const aSide = identity.sessionKeyOf("token-a", "subagent-2");
    for (let i = 0; i < 5; i++) await call(a, "increment");
    for (let i = 0; i < 3; i++) await call(b, "increment");
    await call(aSide, "increment");
    assert.equal(text(await call(a, "get_count")), "5");
    assert.equal(text(await call(b, "get_count")), "3");
    assert.equal(text(await call(aSide, "get_count")), "1");
  });

  it("reuses one upstream session per (credential, gateway) across calls, whichever worker forwards them", async () => {
    const c = identity.sessionKeyOf("token-c");
    const before = fixture.gateway("iso").opened.length;
    const otherCaller = createUpstreamCaller(w2.nc, subjects(), { callTimeoutMs: 20_000, log: w2.log });
    for (let i = 0; i < 4; i++) await call(c, "increment");
    for (let i = 0; i < 4; i++) await otherCaller.call(c, gid, { method: "tools/call", params: { name: "increment", arguments: {} }, requestId: `o${i}`, headers: {} });
    assert.equal(text(await call(c, "get_count")), "8", "every call reached the same upstream session");
    assert.equal(fixture.gateway("iso").opened.length - before, 1, "one upstream initialize for nine calls");
  });
});

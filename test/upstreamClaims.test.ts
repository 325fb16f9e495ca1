// Upstream session claims left by a worker that died: swept by a survivor; live ones stay. A
// spawn lost on its way (as with a NATS node that dies under it) is asked again, and the claim
// keeps it to one upstream session.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { z } from "zod";
import { KEYS, QUEUE, subjects } from "../protocol/subjects.ts";
import { SessionListReplySchema } from "../protocol/upstream.ts";
import { encodeJson, isNoResponders, request } from "../runtime/bus.ts";
import { createUpstreamCaller } from "../runtime/upstreamClient.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { until } from "./helpers/wait.ts";
import { memoryLogger, startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects("sweep");

describe("stale upstream session claims", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  const workers: TestWorker[] = [];
  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
  });
  after(async () => {
    for (const w of workers) await w.stop();
    await fixture?.close();
    await nats?.stop();
  });

  it("a survivor deletes the claims of a dead worker's sessions and keeps its own", async () => {
    for (const id of ["sw1", "sw2"]) workers.push(await startTestWorker(nats, { MCPGW_SUBJECT_PREFIX: "sweep", MCPGW_WORKER_ID: id }));
    const nc = await nats.connect("runtime");
    const caller = createUpstreamCaller(nc, s, { callTimeoutMs: 20_000, log: memoryLogger().log });
    const gid = (await request(nc, s.admin.gateway("add"), { name: "claimed", transport: "streamable-http", url: fixture.url("claimed") }, z.object({ id: z.string() }), 20_000)).id;
    const echo = () => ({ method: "tools/call" as const, params: { name: "echo", arguments: { text: "x" } }, requestId: `r${Math.random()}`, headers: {} });
    // sessions until both workers host some (spawns go to either through the queue group)
    const hostOf = new Map<string, string>();
    for (let i = 0; new Set(hostOf.values()).size < 2; i++) {
      assert.ok(i < 200, "both workers host sessions");
      await caller.call(`s${i}`, gid, echo());
      const listed = await request(nc, s.admin.sessionList, { sid: `s${i}` }, SessionListReplySchema, 20_000);
      hostOf.set(`s${i}`, listed.sessions[0]!.worker);
    }
    const [victim, survivor] = workers as [TestWorker, TestWorker];
    const victimSessions = [...hostOf].filter(([, w]) => w === victim.id).map(([sid]) => sid);
    const survivorSessions = [...hostOf].filter(([, w]) => w === survivor.id).map(([sid]) => sid);

    // the victim dies: its connection closes, nothing of it is cleaned up
    await victim.nc.close(); // its stop() in after() only clears its timers
    await until(
      "nats-server to drop the dead worker's actor addresses",
      () => nc.request(s.upstream.op(victimSessions[0]!, gid, "status"), encodeJson({}), { timeout: 1_000 }).then(() => false, (err: unknown) => isNoResponders(err)),
      30_000,
    );
    const claimed = async (sid: string) => (await survivor.stores.sessions.get(KEYS.upstreamClaim(sid, gid)))?.operation === "PUT";
    for (const sid of victimSessions) assert.ok(await claimed(sid), "left behind by the dead worker");

    assert.equal(await survivor.upstream.sweepStaleClaims(), victimSessions.length);
    for (const sid of victimSessions) assert.equal(await claimed(sid), false, `${sid}'s claim swept`);
    for (const sid of survivorSessions) assert.ok(await claimed(sid), `${sid}'s live claim kept`);
    assert.equal(await survivor.upstream.sweepStaleClaims(), 0, "nothing left to sweep");

    // the survivor's sessions go on (same upstream session), the dead one's get a new one
    const before = fixture.gateway("claimed").opened.length;
    await caller.call(survivorSessions[0]!, gid, echo());
    assert.equal(fixture.gateway("claimed").opened.length, before, "the survivor's session was reused");
    await caller.call(victimSessions[0]!, gid, echo());
    assert.equal(fixture.gateway("claimed").opened.length, before + 1, "a new upstream session for the dead worker's");
    await nc.close();
  });

  it("a spawn nobody answers is asked again; the session still gets exactly one upstream session", async () => {
    const w = await startTestWorker(nats, { MCPGW_SUBJECT_PREFIX: "sweep", MCPGW_WORKER_ID: "sw3" });
    workers.push(w);
    const nc = await nats.connect("runtime");
    const gid = (await request(nc, s.admin.gateway("add"), { name: "lost", transport: "streamable-http", url: fixture.url("lost") }, z.object({ id: z.string() }), 20_000)).id;
    // a member of the spawn queue group that drops the first spawn it gets, as a dead node would
    let swallowed: string | null = null;
    const hole = nc.subscribe(s.upstream.spawn, {
      queue: QUEUE.spawn,
      callback: (_err, msg) => {
        swallowed ??= (msg.json() as { sid: string }).sid;
        if (swallowed) hole.unsubscribe();
      },
    });
    await nc.flush();
    const caller = createUpstreamCaller(nc, s, { callTimeoutMs: 20_000, log: memoryLogger().log, spawnAttemptMs: 500 });
    const echo = () => ({ method: "tools/call" as const, params: { name: "echo", arguments: { text: "x" } }, requestId: `r${Math.random()}`, headers: {} });
    // sessions until the queue group gave one spawn to the hole (each has an even chance)
    for (let i = 0; swallowed === null; i++) {
      assert.ok(i < 40, "the queue group handed a spawn to the hole");
      const reply = await caller.call(`lost${i}`, gid, echo());
      assert.ok("result" in reply, JSON.stringify(reply));
    }
    const sid = swallowed as string;
    assert.ok("result" in (await caller.call(sid, gid, echo())), "the session whose spawn was lost calls on");
    const listed = await request(nc, s.admin.sessionList, { sid }, SessionListReplySchema, 20_000);
    assert.equal(listed.sessions.length, 1, "one upstream session actor for the session whose spawn was lost");
    await nc.close();
  });
});

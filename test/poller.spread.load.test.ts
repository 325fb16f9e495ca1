// 1,000 gateways on one fixture process: a health interval's polls are spread over the interval.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { Registry } from "../actors/registry.ts";
import { subjects } from "../protocol/subjects.ts";
import { openStores } from "../runtime/nats.ts";
import { SecretBox } from "../runtime/secretBox.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { startTestWorker, TEST_SECRET_KEY, type TestWorker } from "./helpers/worker.ts";

const GATEWAYS = 1_000;
const HEALTH_S = 10;

describe("poll spreading", () => {
  let nats: TestNats;
  let fixture: ChildProcess;
  let fixturePort: number;
  let worker: TestWorker | undefined;
  before(async () => {
    nats = await startNats();
    // the fixture in its own process, so upstream and worker do not share one CPU
    fixture = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./fixtures/fixtureHttpProcess.ts", import.meta.url))], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    const [line] = (await once(fixture.stdout!, "data")) as [Buffer];
    fixturePort = Number(/port (\d+)/.exec(line.toString())![1]);
  });
  after(async () => {
    await worker?.stop();
    if (fixture && fixture.exitCode === null) {
      fixture.kill("SIGTERM");
      await once(fixture, "exit");
    }
    await nats?.stop();
  });

  it(`${GATEWAYS} gateways: no second of an interval carries more than twice the mean`, async () => {
    // registered before any worker runs (no "added" events), as after a cluster restart
    const nc = await nats.connect();
    const stores = await openStores(nc, "mcpgw");
    const box = new SecretBox(TEST_SECRET_KEY);
    const registry = new Registry({
      gateways: stores.gateways,
      catalog: stores.catalog,
      state: stores.state,
      subjects: subjects(),
      publish: async () => {},
      seal: (p, gid) => box.seal(p, gid),
      open: (s, gid) => box.open(s, gid),
    });
    for (let i = 0; i < GATEWAYS; i += 50) {
      await Promise.all(
        Array.from({ length: Math.min(50, GATEWAYS - i) }, (_, j) =>
          registry.add({ name: `g${i + j}`, transport: "streamable-http", url: `http://127.0.0.1:${fixturePort}/g/g${i + j}/mcp` }),
        ),
      );
    }

    worker = await startTestWorker(nats, { MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: `${HEALTH_S}s`, MCPGW_DISCOVERY_INTERVAL: "1h" });
    // each gateway's first poll falls due at its slot in the first interval; bucket them by second
    await new Promise((r) => setTimeout(r, HEALTH_S * 1000 + 3_000));
    const firstDue = new Map<string, number>();
    for (const l of worker.lines.map((x) => JSON.parse(x) as { msg?: string; kind?: string; gid?: string; time: number })) {
      if (l.msg === "poll" && l.kind === "health" && l.gid && !firstDue.has(l.gid)) firstDue.set(l.gid, l.time);
    }
    const from = Math.min(...firstDue.values());
    const times = [...firstDue.values()].filter((t) => t < from + HEALTH_S * 1000);
    const perSecond = new Array(HEALTH_S).fill(0);
    for (const t of times) perSecond[Math.floor((t - from) / 1000)]++;
    const mean = times.length / HEALTH_S;
    const max = Math.max(...perSecond);
    console.log(`# ${times.length} first health polls due in one ${HEALTH_S} s interval; per second ${perSecond.join(" ")}; max/mean ${(max / mean).toFixed(2)}`);
    // every gateway falls due once in the interval (one near its end may move out by its jitter of ≤ 0.5 s)
    assert.ok(times.length >= GATEWAYS * 0.95, `first polls due within one interval: ${times.length}`);
    assert.ok(max <= 2 * mean, `busiest second ${max} polls, mean ${mean}`);
  });
});

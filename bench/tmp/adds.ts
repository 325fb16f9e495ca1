// ad hoc: admin adds/s through one worker process, optional --cpu-prof
import { GatewayListReplySchema, GatewayViewSchema } from "../../protocol/gateway.ts";
import { subjects } from "../../protocol/subjects.ts";
import { request } from "../../runtime/bus.ts";
import { startFixtureProcess } from "../../test/fixtures/fixtureHttp.ts";
import { startNats } from "../../test/helpers/nats.ts";
import { run, workerEnv } from "../../test/helpers/processes.ts";
import { until } from "../../test/helpers/wait.ts";
import { TEST_SECRET_KEY } from "../../test/helpers/worker.ts";
const N = Number(process.env.N ?? 3000);
const nats = await startNats();
const fx = [await startFixtureProcess(), await startFixtureProcess()];
const admin = await nats.connect("admin");
const s = subjects("mcpgw");
const flags = process.env.PROF ? ["--cpu-prof", "--cpu-prof-dir=/tmp/scaleadmin/prof"] : [];
const worker = run(process.execPath, [...flags, "--import", "tsx", "runtime/main.ts"], workerEnv(nats, TEST_SECRET_KEY, { MCPGW_LOG_LEVEL: "warn" }));
await until("worker", async () => { try { await request(admin, s.admin.gateway("list"), {}, GatewayListReplySchema, 2000); return true; } catch { return null; } }, 60000);
let next = 0, ok = 0, failed = 0;
const t0 = performance.now();
await Promise.all(Array.from({ length: 32 }, async () => {
  while (next < N) { const i = next++;
    try { await request(admin, s.admin.gateway("add"), { name: `g${i}`, transport: "streamable-http", url: fx[i % 2]!.url(`g${i}`), ...(process.env.DISABLED ? { enabled: false } : {}) }, GatewayViewSchema, 30000); ok++; } catch (e) { failed++; if (failed < 3) console.log(String(e)); }
  }
}));
const secs = (performance.now() - t0) / 1000;
console.log(`adds ${ok} failed ${failed} in ${secs.toFixed(1)} s: ${(ok / secs).toFixed(0)}/s`);
worker.child.kill("SIGTERM"); await worker.exited;
await admin.close(); await Promise.all(fx.map((f) => f.stop())); await nats.stop();
process.exit(0);

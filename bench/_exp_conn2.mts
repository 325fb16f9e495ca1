import { Agent } from "undici";
import { probeConnector } from "../runtime/pollerEffects.ts";
import { startFixtureProcess } from "../test/fixtures/fixtureHttp.ts";
const N = Number(process.env.N ?? 1000);
const fx = await startFixtureProcess();
const connect = probeConnector((s) => s, new Agent());
const gc = () => (globalThis as any).gc?.();
gc(); await new Promise((r) => setTimeout(r, 500)); gc();
const m0 = process.memoryUsage();
const conns = [];
for (let i = 0; i < N; i += 50) {
  conns.push(...(await Promise.all(Array.from({ length: 50 }, (_, j) => connect(
    { id: (i + j).toString(16).padStart(16, "0"), name: `g${i + j}`, transport: "streamable-http", url: fx.url(`g${i + j}`), auth: { type: "none" }, headers: {}, passthroughHeaders: [], tags: [], enabled: true, createdAt: "", updatedAt: "" } as any, 30000, () => {})))));
}
for (const c of conns) { await c.client.ping(); await c.client.listTools(); }
gc(); await new Promise((r) => setTimeout(r, 1000)); gc();
const m1 = process.memoryUsage();
console.log(JSON.stringify({ N, rssPer: ((m1.rss - m0.rss) / N / 1024).toFixed(1) + "KB", heapPer: ((m1.heapUsed - m0.heapUsed) / N / 1024).toFixed(1) + "KB" }));
if (process.env.SNAP) { const v8 = await import("node:v8"); console.log(v8.writeHeapSnapshot("/tmp/scale-exp/conn.heapsnapshot")); }
console.log(conns.length); await fx.stop();
process.exit(0);

import { classify, GatewayRoster } from "../../actors/classification.ts";
import { UsageAggregate } from "../../actors/usageAggregate.ts";
const ids = Array.from({ length: 10000 }, (_, i) => (i * 2654435761 >>> 0).toString(16).padStart(16, "0"));
const roster = GatewayRoster.of(ids.map((id) => ({ id, enabled: true })));
const usage = new UsageAggregate(60000);
usage.ingest({ worker: "w", at: 0, gateways: ids.filter((_, i) => i % 5 === 0).map((gid, i) => ({ gid, lastUsedAt: Date.now() - i, uses: 1, liveSessions: i % 3 })) }, performance.now());
for (let r = 0; r < 8; r++) {
  const c0 = process.cpuUsage(); const t = [performance.now()];
  usage.keepOnly(roster); t.push(performance.now());
  const snap = usage.snapshot(performance.now()); t.push(performance.now());
  const en = roster.enabledIds(); t.push(performance.now());
  classify(en, (g) => snap.get(g)); t.push(performance.now());
  const cu = process.cpuUsage(c0);
  console.log(t.slice(1).map((x, i) => (x - t[i]!).toFixed(1)).join(" "), "cpu", ((cu.user + cu.system) / 1000).toFixed(1));
}

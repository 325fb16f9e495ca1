// `npm run chaos`: the fault and abuse suite. Loopback only, bounded in count and time, stops by
// itself. Prints, per scenario, the load held, the faults injected, the failures seen, the
// recovery and what was checked to be intact (docs/RELIABILITY.md reports a run). Exit code 1
// when any check failed. `-- --only NAME` runs one scenario (names as in SCENARIOS).
import { fuzzAdmin, fuzzEdge } from "./scenarios/fuzz.ts";
import { shutdownRogue } from "./scenarios/shutdown.ts";
import { natsRestart, workerKill } from "./scenarios/underLoad.ts";
import { attacks, clusterNodeLoss } from "./scenarios/testFiles.ts";
import { upstreamFaults } from "./scenarios/upstreamFaults.ts";
import type { ScenarioResult } from "./harness.ts";

const SCENARIOS: Record<string, () => Promise<ScenarioResult>> = {
  attacks: () => attacks(),
  "fuzz-admin": () => fuzzAdmin({ runs: 2_000 }),
  "fuzz-edge": () => fuzzEdge({ runs: 2_000 }),
  "upstream-faults": () => upstreamFaults({ callTimeoutMs: 5_000 }),
  "worker-kill": () => workerKill({ durationMs: 30_000, lanes: 16 }),
  "nats-restart": () => natsRestart({ durationMs: 30_000, lanes: 16, downMs: 3_000 }),
  "shutdown-rogue": () => shutdownRogue({ shutdownTimeoutMs: 2_000 }),
  "cluster-node-loss": () => clusterNodeLoss(),
};

const only = process.argv.includes("--only") ? process.argv[process.argv.indexOf("--only") + 1] : undefined;
const results: ScenarioResult[] = [];
for (const [name, run] of Object.entries(SCENARIOS)) {
  if (only && name !== only) continue;
  const t0 = performance.now();
  process.stderr.write(`chaos: ${name} …\n`);
  try {
    results.push(await run());
  } catch (err) {
    results.push({ scenario: name, load: "", faults: "", failures: `the scenario itself failed: ${(err as Error).stack ?? err}`, recovery: "", intact: "", ok: false, checks: [] });
  }
  process.stderr.write(`chaos: ${name} done in ${Math.round((performance.now() - t0) / 1000)} s\n`);
}

const cell = (t: string) => t.replace(/\|/g, "\\|").replace(/\n/g, " ");
console.log("| scenario | load held | faults injected | failures seen | recovery | checked intact | verdict |");
console.log("|---|---|---|---|---|---|---|");
for (const r of results) console.log(`| ${[r.scenario, r.load, r.faults, r.failures, r.recovery, r.intact, r.ok ? "held" : "**FAILED**"].map(cell).join(" | ")} |`);
console.log("");
for (const r of results) {
  console.log(`### ${r.scenario}`);
  for (const ch of r.checks) console.log(`- ${ch.ok ? "✓" : "✗"} ${ch.what}${ch.detail ? ` — ${ch.detail}` : ""}`);
  console.log("");
}
process.exit(results.every((r) => r.ok) ? 0 : 1);

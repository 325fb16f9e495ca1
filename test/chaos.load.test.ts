// The fast parts of the fault and abuse suite (`npm run chaos` runs them longer, with the
// attacks and more load): fuzzed admin and edge input, upstream faults, worker SIGKILL and a
// nats-server restart under load, shutdown with a rogue upstream. Each scenario reports checks;
// the test fails with the ones that did not hold.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fuzzAdmin, fuzzEdge } from "../chaos/scenarios/fuzz.ts";
import { shutdownRogue } from "../chaos/scenarios/shutdown.ts";
import { natsRestart, workerKill } from "../chaos/scenarios/underLoad.ts";
import { upstreamFaults } from "../chaos/scenarios/upstreamFaults.ts";
import type { ScenarioResult } from "../chaos/harness.ts";

function held(r: ScenarioResult): void {
  const failed = r.checks.filter((c) => !c.ok);
  assert.ok(r.checks.length > 0, "the scenario checked something");
  assert.deepEqual(failed, [], `${r.scenario}: ${failed.map((c) => `${c.what} ${c.detail ?? ""}`).join("; ")}`);
}

// a hang bound: 53 s in a quiet CI run, over 600 s at load 60-70 (the first four scenarios took 9 min)
describe("chaos (fast parts)", { timeout: 1_800_000 }, () => {
  it("fuzzed admin input: envelopes only, nothing changed by a refused request, worker alive", async () => held(await fuzzAdmin({ runs: 300 })));
  it("fuzzed edge input: no 5xx, worker alive, another session unharmed", async () => held(await fuzzEdge({ runs: 300 })));
  it("upstream faults: hang, garbage, cut, 500 and crash give clear errors; the session goes on", async () => held(await upstreamFaults({ callTimeoutMs: 2_000 })));
  it("worker SIGKILL under load: answers are their callers' own, every session works again", async () => held(await workerKill({ durationMs: 6_000, lanes: 4 })));
  it("nats-server restart under load: state intact, every session works again", async () => held(await natsRestart({ durationMs: 8_000, lanes: 4, downMs: 1_500 })));
  it("shutdown with a rogue upstream: exit code 0 within the bound, the client hears an error", async () => held(await shutdownRogue({ shutdownTimeoutMs: 1_000 })));
});

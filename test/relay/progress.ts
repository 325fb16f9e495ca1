// Fidelity: progress on every path of the matrix (test/helpers/fidelity.ts): every
// notifications/progress of a call arrives, in order, before its result. Short steps make the
// last notice and the result leave the upstream back to back (the race that loses it), so each
// path runs the call many times.
import assert from "node:assert/strict";
import { it } from "node:test";
import { PATH_NAMES, fidelitySuite, textOf } from "../helpers/fidelity.ts";

const RUNS = 16;
const STEPS = 4;

fidelitySuite("relay: progress", { timeout: 600_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`progress: every notification in order before the result, ${RUNS} runs (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect();
      try {
        const runs: number[][] = [];
        for (let i = 0; i < RUNS; i++) {
          const seen: number[] = [];
          const r = await conn.client.callTool({ name: path.tool("trigger-long-running-operation"), arguments: { duration: 0.1, steps: STEPS } }, undefined, {
            onprogress: (p) => void seen.push(p.progress),
          });
          assert.match(textOf(r), /Long running operation completed/);
          runs.push(seen);
        }
        const whole = Array.from({ length: STEPS }, (_, i) => i + 1);
        const lossy = runs.filter((seen) => JSON.stringify(seen) !== JSON.stringify(whole));
        assert.equal(lossy.length, 0, `${lossy.length} of ${RUNS} runs did not get [${whole}] before the result: ${JSON.stringify(lossy)}`);
      } finally {
        await conn.close();
      }
    });
  }
});

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { it, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";

/**
 * Hang bound of one run of the suite: 11-14 s on a quiet machine, 4.5 min at load 45 (the
 * everything run: 14 s of CPU), when 120 s and 180 s bounds failed both tests.
 */
const SUITE_MS = 600_000;

/** The runner in a process of its own, ended with the test (a test that timed out leaves nothing running). */
function spawnRunner(runner: string, t: TestContext) {
  const child = spawn(process.execPath, ["--import", "tsx", runner], { stdio: ["ignore", "pipe", "pipe"], signal: t.signal });
  child.on("error", () => {}); // the abort itself: the test has failed already
  return child;
}

// The conformance suite through the edge; scenarios listed in
// test/conformance/expected-failures.yaml are the known gaps, anything else failing fails this.
it("passes the MCP conformance server scenarios through /gateways/<name>/mcp", { timeout: SUITE_MS }, async (t) => {
  const runner = fileURLToPath(new URL("./conformance/run.ts", import.meta.url));
  const child = spawnRunner(runner, t);
  let out = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (out += c));
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  assert.equal(code, 0, out.slice(-4000));
  assert.match(out, /✓ tools-call-with-progress: 1 passed/);
  assert.doesNotMatch(out, /Unexpected failures/);
});

// The suite against server-everything directly and through /gateways/everything/mcp: a
// scenario that passes directly must pass through the gateway.
it("loses no conformance scenario that server-everything passes directly", { timeout: SUITE_MS }, async (t) => {
  const runner = fileURLToPath(new URL("./conformance/everything.ts", import.meta.url));
  const child = spawnRunner(runner, t);
  let out = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (out += c));
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  const lost = /^lost through the gateway: .*$/m.exec(out)?.[0];
  assert.equal(lost, "lost through the gateway: 0", out.slice(-4000));
  assert.match(out, /^passing directly: ([1-9]\d*)/m, "the direct run passes scenarios at all");
  assert.equal(code, 0, out.slice(-4000));
});

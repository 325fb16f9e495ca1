import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { until } from "./helpers/wait.ts";
import { freePort } from "./helpers/nats.ts";
import { isRunning, processTree, run, runTs, START_MS, type Proc } from "./helpers/processes.ts";

describe("embedded default (npm start)", () => {
  const dataDir = mkdtempSync(join(tmpdir(), "mcpgw-embedded-"));
  const procs: Proc[] = [];
  /** every process a test saw, killed if the test failed before they exited */
  const seen: number[] = [];
  after(() => {
    for (const p of procs) p.child.kill("SIGKILL");
    for (const pid of seen) if (isRunning(pid)) process.kill(pid, "SIGKILL");
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("starts its own nats-server, serves admin commands, and stops it on SIGTERM", async () => {
    const env = { MCPGW_DATA_DIR: dataDir, MCPGW_NATS_PORT: String(await freePort()), MCPGW_EDGE_PORT: String(await freePort()), MCPGW_LOG_LEVEL: "info" };
    const worker = runTs("runtime/main.ts", [], env);
    procs.push(worker);
    await worker.waitFor(/worker started/, START_MS);
    assert.match(worker.output(), /nats context save/, "tells the operator how to use the nats CLI");

    const secrets = join(dataDir, "secrets");
    assert.equal(statSync(secrets).mode & 0o777, 0o700);
    for (const f of ["nats-runtime.password", "nats-admin.password", "nats-viewer.password", "secret-key.hex", "edge-token"]) {
      assert.equal(statSync(join(secrets, f)).mode & 0o777, 0o600, f);
      assert.ok(!worker.output().includes(readFileSync(join(secrets, f), "utf8").trim()), `${f} is not printed`);
    }

    // the CLI finds the embedded server and its admin password by itself
    const add = runTs("runtime/cli/main.ts", ["gateway", "add", "first", "--url", "http://127.0.0.1:1/mcp", "--bearer", "tok-embedded-secret"], env);
    assert.equal((await add.exited).code, 0, add.output());
    assert.match(add.output(), /^added first \([0-9a-f]{16}\)/);
    const dup = runTs("runtime/cli/main.ts", ["gateway", "add", "first", "--url", "http://127.0.0.1:1/mcp"], env);
    assert.equal((await dup.exited).code, 1);
    assert.equal(dup.output().trim(), "error: conflict: a gateway named first already exists");

    const natsPid = Number(readFileSync(join(dataDir, "nats-server.pid"), "utf8"));
    assert.ok(isRunning(natsPid));
    worker.child.kill("SIGTERM");
    assert.deepEqual(await worker.exited, { code: 0, signal: null });
    // the worker exits only after its nats-server has exited
    assert.ok(!isRunning(natsPid), "the embedded nats-server is stopped with the worker");

    // a second start keeps its state and its secrets
    const again = runTs("runtime/main.ts", [], env);
    procs.push(again);
    await again.waitFor(/worker started/, START_MS);
    const ls = runTs("runtime/cli/main.ts", ["gateway", "ls"], env);
    assert.equal((await ls.exited).code, 0, ls.output());
    assert.match(ls.output(), /^first\s+[0-9a-f]{16}\s+streamable-http/m);
    again.child.kill("SIGTERM");
    assert.equal((await again.exited).code, 0);
  });

  // npm forwards SIGTERM and SIGINT to its child; the worker must be that child (no sh or
  // tsx between them that dies of the signal and orphans it).
  const stops = [
    { how: "SIGTERM to npm", stop: (npm: Proc) => process.kill(npm.child.pid!, "SIGTERM") },
    { how: "Ctrl-C (SIGINT to the process group)", stop: (npm: Proc) => process.kill(-npm.child.pid!, "SIGINT") },
  ];
  for (const { how, stop } of stops) {
    it(`npm start: ${how} drains the worker and leaves no process behind`, async () => {
      const env = {
        MCPGW_DATA_DIR: dataDir,
        MCPGW_NATS_PORT: String(await freePort()),
        MCPGW_EDGE_PORT: String(await freePort()),
        MCPGW_LOG_LEVEL: "info",
        npm_config_update_notifier: "false",
      };
      const npm = run("npm", ["start"], env, { detached: true });
      procs.push(npm);
      await npm.waitFor(/worker started/, START_MS);
      const tree = processTree(npm.child.pid!);
      seen.push(...tree);
      const natsPid = Number(readFileSync(join(dataDir, "nats-server.pid"), "utf8"));
      assert.ok(tree.includes(natsPid), "the embedded nats-server belongs to the tree");
      assert.ok(tree.length >= 3, `npm, the worker and nats-server: ${tree.join(" ")}`);

      stop(npm);
      assert.deepEqual(await npm.exited, { code: 0, signal: null }, npm.output().slice(-2000));
      await until("every process of the tree to exit", () => tree.every((pid) => !isRunning(pid)), 30_000);
      const messages = npm
        .output()
        .split("\n")
        .flatMap((l) => (l.startsWith('{"level"') ? [(JSON.parse(l) as { msg: string }).msg] : []));
      assert.ok(messages.includes("worker stopped"), "the worker drained before it exited");
    });
  }

  it("exits with one clear line when it cannot start", async () => {
    const noKey = runTs("runtime/main.ts", [], { NATS_URL: "nats://127.0.0.1:1" });
    assert.equal((await noKey.exited).code, 1);
    assert.match(noKey.output().trim(), /^mcpgw: MCPGW_SECRET_KEY is required when NATS_URL is set/);

    const noBin = runTs("runtime/main.ts", [], { MCPGW_DATA_DIR: dataDir, NATS_SERVER_BIN: "/nonexistent/nats-server" });
    assert.equal((await noBin.exited).code, 1);
    assert.equal(noBin.output().trim().split("\n").length, 1);
    assert.match(noBin.output(), /NATS_SERVER_BIN=\/nonexistent\/nats-server is not an executable/);

    const badVar = runTs("runtime/main.ts", [], { MCPGW_DATA_DIR: dataDir, MCPGW_LEADER_TTL: "forever" });
    assert.equal((await badVar.exited).code, 1);
    assert.match(badVar.output().trim(), /^mcpgw: invalid configuration: MCPGW_LEADER_TTL: not a duration/);
  });
});

// Scenarios written as node:test files, run here in a process of their own and counted: the
// attacks of the hardening work (test/security.*.test.ts, also in `npm test`), and the loss of
// a NATS cluster node under load (test/cluster.nodeLoss.load.test.ts, also in `npm test`).
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../test/helpers/processes.ts";
import { Checks, type ScenarioResult } from "../harness.ts";

async function runTestFiles(files: string[]): Promise<{ pass: number; fail: number; names: string[]; out: string }> {
  const out = await new Promise<string>((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--test", "--test-reporter=tap", ...files], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (d: Buffer) => (text += d.toString()));
    child.stderr.on("data", (d: Buffer) => (text += d.toString()));
    child.on("exit", () => resolve(text));
  });
  const count = (k: string) => Number(new RegExp(`^# ${k} (\\d+)`, "m").exec(out)?.[1] ?? NaN);
  const names = [...out.matchAll(/^\s*(not ok|ok) \d+ - (.+)$/gm)].filter((m) => !/\.(test|chaos)\.ts$/.test(m[2]!)).map((m) => `${m[1] === "ok" ? "held" : "BROKE"}: ${m[2]}`);
  return { pass: count("pass"), fail: count("fail"), names, out };
}

/** The attacks of the hardening issue that live beside the features they attack. */
const ATTACK_FILES = ["edgeSessions.test.ts", "edgeOutage.test.ts", "hostileUpstream.test.ts", "largeMessages.test.ts", "embedded.test.ts"];

export async function attacks(): Promise<ScenarioResult> {
  const files = readdirSync(join(ROOT, "test"))
    .filter((f) => /^security\..*\.test\.ts$/.test(f) || ATTACK_FILES.includes(f))
    .sort()
    .map((f) => join("test", f));
  const r = await runTestFiles(files);
  const c = new Checks();
  c.check("the attack suite ran", files.length > 0 && Number.isFinite(r.pass), `${files.length} files`);
  c.check("every attack failed (every test passed)", r.fail === 0, `${r.fail} failed`);
  return {
    scenario: "attacks (test/security.*.test.ts and the feature tests that attack)",
    load: `${files.length} files, ${r.pass + r.fail} tests`,
    faults: r.names.join("; "),
    failures: `${r.fail} attack(s) succeeded`,
    recovery: "n/a",
    intact: "each test asserts that nothing changed",
    ok: c.ok,
    checks: c.list,
  };
}

export async function clusterNodeLoss(): Promise<ScenarioResult> {
  const r = await runTestFiles(["test/cluster.nodeLoss.load.test.ts"]);
  const c = new Checks();
  const failure = /error: \|-\n([\s\S]*?)\n\s+code:/.exec(r.out)?.[1]?.replace(/\s+/g, " ").slice(0, 600);
  c.check("the node loss was survived: every call, new session and admin request begun after the kill succeeded, nothing internal, state intact", r.fail === 0 && r.pass > 0, failure);
  return {
    scenario: "NATS cluster node loss (test/cluster.nodeLoss.load.test.ts)",
    load: "2 workers with MCPGW_JS_REPLICAS=3 on a 3-node cluster; a client calling in a loop, an operator adding, listing and removing gateways in a loop",
    faults: "SIGKILL of the node leading most of the state's streams",
    failures: r.fail === 0 ? "none begun after the kill" : (failure ?? "see the test output"),
    recovery: "figures: node --import tsx bench/cluster.bench.ts",
    intact: "gateway record, name index and catalog; the session's upstream state",
    ok: c.ok,
    checks: c.list,
  };
}

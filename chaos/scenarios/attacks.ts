// The attacks of the hardening issue, each a test in test/security.*.test.ts against the
// project's nats.conf and real workers: run here as one scenario and counted.
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../test/helpers/processes.ts";
import { Checks, type ScenarioResult } from "../harness.ts";

export async function attacks(): Promise<ScenarioResult> {
  const files = readdirSync(join(ROOT, "test")).filter((f) => /^security\..*\.test\.ts$/.test(f)).sort().map((f) => join("test", f));
  const c = new Checks();
  const out = await new Promise<string>((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "--test", "--test-reporter=tap", ...files], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (d: Buffer) => (text += d.toString()));
    child.stderr.on("data", (d: Buffer) => (text += d.toString()));
    child.on("exit", () => resolve(text));
  });
  const count = (k: string) => Number(new RegExp(`^# ${k} (\\d+)`, "m").exec(out)?.[1] ?? NaN);
  const pass = count("pass");
  const fail = count("fail");
  const names = [...out.matchAll(/^\s*(not ok|ok) \d+ - (.+)$/gm)].filter((m) => !/\.test\.ts$/.test(m[2]!)).map((m) => `${m[1] === "ok" ? "held" : "BROKE"}: ${m[2]}`);
  c.check("the attack suite ran", files.length > 0 && Number.isFinite(pass), `${files.length} files`);
  c.check("every attack failed (every test passed)", fail === 0, `${fail} failed`);
  return {
    scenario: "attacks (test/security.*.test.ts)",
    load: `${files.length} files, ${pass + fail} tests`,
    faults: names.slice(0, 60).join("; "),
    failures: `${fail} attack(s) succeeded`,
    recovery: "n/a",
    intact: "each test asserts nothing changed",
    ok: c.ok,
    checks: c.list,
  };
}

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { runCli, runTs } from "./helpers/processes.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

describe("mcpgw CLI", () => {
  let nats: TestNats;
  let worker: TestWorker;
  let fixture: FixtureHttp;
  const dir = mkdtempSync(join(tmpdir(), "mcpgw-cli-"));
  before(async () => {
    nats = await startNats();
    worker = await startTestWorker(nats);
    fixture = await startFixtureHttp();
  });
  after(async () => {
    await worker?.stop();
    await fixture?.close();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const cli = async (...args: string[]) => {
    const p = runCli(nats, args);
    const { code } = await p.exited;
    return { code, out: p.output() };
  };

  it("adds from a spec file (secrets off the command line), shows, updates, lists and removes", async () => {
    const spec = join(dir, "weather.json");
    writeFileSync(spec, JSON.stringify({ url: "https://weather.example.com/mcp", auth: { type: "bearer", token: "cli-SECRET-token" }, tags: ["prod"] }));
    const added = await cli("gateway", "add", "weather", "--spec", spec, "--description", "from flags");
    assert.equal(added.code, 0, added.out);
    assert.match(added.out, /^added weather \([0-9a-f]{16}\) at revision \d+/);

    const shown = await cli("--json", "gateway", "get", "weather");
    const g = JSON.parse(shown.out);
    assert.deepEqual([g.url, g.auth, g.tags, g.description], ["https://weather.example.com/mcp", { type: "bearer", token: "********" }, ["prod"], "from flags"]);
    assert.ok(!shown.out.includes("cli-SECRET-token"));

    const updated = await cli("gateway", "update", "weather", "--tag", "staging", "--expected-revision", String(g.revision));
    assert.equal(updated.code, 0, updated.out);
    const noAuth = await cli("--json", "gateway", "update", "weather", "--no-auth");
    assert.equal(noAuth.code, 0, noAuth.out);
    assert.deepEqual(JSON.parse(noAuth.out).auth, { type: "none" });
    const stale = await cli("gateway", "update", "weather", "--description", "x", "--expected-revision", String(g.revision));
    assert.equal(stale.code, 1);
    assert.match(stale.out, /^error: conflict: gateway weather is at revision \d+, not \d+/);

    const ls = await cli("gateway", "ls");
    assert.match(ls.out, /^NAME\s+ID\s+TRANSPORT/);
    assert.match(ls.out, /^weather\s+[0-9a-f]{16}\s+streamable-http\s+yes/m);

    const removed = await cli("gateway", "rm", "weather");
    assert.match(removed.out, /^removed weather/);
    assert.match((await cli("gateway", "get", "weather")).out, /^error: not_found: no gateway named weather/);
  });

  it("imports gateways from a JSON array, reporting the ones refused and adding the rest", async () => {
    const specs: unknown[] = Array.from({ length: 60 }, (_, i) => ({ name: `imp-${i}`, transport: "streamable-http", url: `https://imp.example.com/${i}/mcp` }));
    specs[10] = { name: "imp-3", transport: "streamable-http", url: "https://imp.example.com/again/mcp" };
    specs[20] = { name: "Bad_Name", transport: "streamable-http", url: "https://imp.example.com/bad/mcp" };
    const file = join(dir, "import.json");
    writeFileSync(file, JSON.stringify(specs));
    const r = await cli("gateway", "import", file, "--parallel", "8");
    assert.equal(r.code, 1);
    assert.match(r.out, /imported 58 of 60 gateways in \d+\.\d s \(\d+ adds\/s\); 2 failed:/);
    assert.match(r.out, /#10 imp-3: conflict: a gateway named imp-3 already exists/);
    assert.match(r.out, /#20 Bad_Name: invalid_request: /);
    const listed = (await worker.registry.list({})).gateways.filter((g) => g.name.startsWith("imp-"));
    assert.equal(listed.length, 58);

    writeFileSync(file, JSON.stringify({ name: "not-an-array" }));
    const notArray = await cli("gateway", "import", file);
    assert.equal(notArray.code, 1);
    assert.equal(notArray.out.trim(), `error: ${file} must hold a JSON array of gateway specs`);
    assert.equal((await worker.registry.list({})).gateways.filter((g) => g.name.startsWith("imp-")).length, 58, "a refused import changes nothing");
  });

  it("says what is wrong in one line", async () => {
    const bad = join(dir, "bad.json");
    writeFileSync(bad, "{ not json");
    const r = await cli("gateway", "add", "x", "--spec", bad);
    assert.equal(r.code, 1);
    assert.equal(r.out.trim(), `error: --spec ${bad} is not valid JSON`);
    const invalid = await cli("gateway", "add", "Bad_Name", "--url", "ftp://x");
    assert.equal(invalid.code, 1);
    assert.match(invalid.out.trim(), /^error: invalid_request: invalid gateway \(name: must be a slug[^)]*; url: must be an http or https URL\)$/);
    const nobody = runTs("runtime/cli/main.ts", ["--server", "nats://127.0.0.1:1", "gateway", "ls"], {});
    assert.equal((await nobody.exited).code, 1);
    assert.equal(nobody.output().trim().split("\n").length, 1);
  });

  it("adds with --wait: progress until the first discovery, then what it found; tools ls reads the catalog", async () => {
    const added = await cli("gateway", "add", "fx", "--url", fixture.url("fx"), "--wait");
    assert.equal(added.code, 0, added.out);
    assert.match(added.out, /^added fx \([0-9a-f]{16}\) at revision \d+$/m);
    assert.match(added.out, /^waiting for the first discovery of fx…$/m);
    assert.match(added.out, /^discovered \d+ tools, 1 prompt, 1 resource, 1 resource template$/m);
    assert.match(added.out, /^tool\s+echo$/m);
    assert.match(added.out, /^template\s+fixture:\/\/items\/\{id\}$/m);

    const ls = await cli("tools", "ls");
    assert.equal(ls.code, 0, ls.out);
    assert.match(ls.out, /^GATEWAY\s+TOOL\s+DESCRIPTION$/m);
    assert.match(ls.out, /^fx\s+echo\s+echoes text$/m);
    const json = JSON.parse((await cli("--json", "tools", "ls", "--gateway", "fx")).out);
    const count = Number(/discovered (\d+) tools/.exec(added.out)![1]);
    assert.equal(json.tools.length, count);
    assert.ok(json.tools.every((t: { gateway: string }) => t.gateway === "fx"));
    assert.deepEqual(json.tools.find((t: { name: string }) => t.name === "echo").inputSchema.required, ["text"]);
    assert.match((await cli("tools", "ls", "--gateway", "nope")).out, /^error: not_found: no gateway named nope/);
  });

  it("gives up --wait after --wait-timeout with the last error, and keeps the gateway", async () => {
    const r = await cli("gateway", "add", "down", "--url", "http://127.0.0.1:1/mcp", "--wait", "--wait-timeout", "3");
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /^error: timeout: no discovery of down within 3 s.*it stays registered$/m);
    assert.equal((await cli("gateway", "get", "down")).code, 0);
    const none = await cli("tools", "ls", "--gateway", "down");
    assert.match(none.out, /^no tools\nnot discovered yet: down$/m);
    const disabled = await cli("gateway", "add", "off", "--url", fixture.url("off"), "--disabled", "--wait");
    assert.equal(disabled.code, 1);
    assert.match(disabled.out, /^error: conflict: gateway off is disabled: no discovery to wait for$/m);
  });
});

// Upstream faults: an upstream that hangs, answers late, answers garbage, cuts the connection
// half way, answers HTTP 500, or crashes. Each call gets a clear error (never a hang, never a
// crashed worker), and the next call on the same client session works.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { startRawUpstream, type RawTool } from "../../test/fixtures/rawUpstream.ts";
import { freePort } from "../../test/helpers/nats.ts";
import { Checks, debug, failoverClient, ms, type ScenarioResult, startSystem, textOf, waitForTools } from "../harness.ts";

const RAW_PROCESS = fileURLToPath(new URL("../../test/fixtures/rawUpstreamProcess.ts", import.meta.url));

async function startRawProcess(port: number) {
  const child = spawn(process.execPath, ["--import", "tsx", RAW_PROCESS], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, MCPGW_RAW_PORT: String(port) } });
  await once(child.stdout!, "data");
  return child;
}

type Outcome = { tool: string; ms: number; result: string };

async function outcome(client: Client, gateway: string, tool: RawTool, args: Record<string, unknown>, boundMs: number): Promise<Outcome> {
  const t0 = performance.now();
  debug(`call ${gateway}__${tool}`);
  try {
    const r = await client.callTool({ name: `${gateway}__${tool}`, arguments: args }, undefined, { timeout: boundMs });
    return { tool, ms: performance.now() - t0, result: `result: ${textOf(r).slice(0, 60)}` };
  } catch (err) {
    const e = err as { code?: number; message?: string };
    const o = { tool, ms: performance.now() - t0, result: `error ${e.code ?? ""}: ${String(e.message).slice(0, 90)}` };
    debug(`${tool}: ${o.result}`);
    return o;
  }
}

export async function upstreamFaults(opts: { callTimeoutMs: number }): Promise<ScenarioResult> {
  const sys = await startSystem({ workers: 1, env: { MCPGW_CALL_TIMEOUT: String(opts.callTimeoutMs), MCPGW_HEALTH_INTERVAL: "1s", MCPGW_UNHEALTHY_THRESHOLD: "100" } });
  const upstream = await startRawUpstream();
  const crashPort = await freePort();
  let crashy = await startRawProcess(crashPort);
  const c = new Checks();
  const outcomes: Outcome[] = [];
  try {
    await sys.addGateway({ name: "raw", transport: "streamable-http", url: upstream.url });
    await sys.addGateway({ name: "crashy", transport: "streamable-http", url: `http://127.0.0.1:${crashPort}/mcp` });
    debug("gateways added");
    const client = await failoverClient(() => [sys.workers[0]!.edgeUrl]);
    await waitForTools(client, ["raw__echo", "crashy__echo"]);
    // a hang bound well above the call timeout: the gateway must answer by itself
    const bound = 3 * opts.callTimeoutMs + 10_000;
    const echo = async (gateway: string) => (await outcome(client, gateway, "echo", { text: "ok" }, bound)).result === "result: ok";

    const openBefore = upstream.openRequests();
    for (const [tool, args] of [["slow", { ms: Math.min(500, opts.callTimeoutMs / 4) }], ["hang", {}], ["garbage", {}], ["cut", {}], ["http500", {}]] as const) {
      const o = await outcome(client, "raw", tool, args, bound);
      outcomes.push(o);
      if (tool === "slow") c.check("a slow upstream's answer arrives", o.result.startsWith("result: slept"), o.result);
      else c.check(`${tool}: a clear error, not a hang`, o.result.startsWith("error") && o.ms < bound, `${o.result} after ${ms(o.ms)}`);
      if (tool === "hang") c.check("hang: the error says the gateway did not answer in time", /-32001|time/i.test(o.result), o.result);
      c.check(`after ${tool}: the next call on the same session works`, await echo("raw"));
    }
    // the hung call's request at the upstream is released once the gateway gives up on it
    let released = false;
    for (let i = 0; i < 200 && !released; i++) {
      released = upstream.openRequests() <= openBefore;
      if (!released) await new Promise((r) => setTimeout(r, 50));
    }
    c.check("the timed-out call's upstream request was released", released, `${upstream.openRequests()} open, ${openBefore} before`);

    c.check("crashy answers before its crash", await echo("crashy"));
    const crashed = await outcome(client, "crashy", "crash", {}, bound);
    outcomes.push(crashed);
    c.check("crash: a clear error, not a hang", crashed.result.startsWith("error") && crashed.ms < bound, `${crashed.result} after ${ms(crashed.ms)}`);
    if (crashy.exitCode === null && crashy.signalCode === null) await once(crashy, "exit");
    const t0 = performance.now();
    crashy = await startRawProcess(crashPort);
    let back = false;
    for (let i = 0; i < 100 && !back; i++) back = await echo("crashy");
    const recovered = performance.now() - t0;
    c.check("after the upstream restarts, the same client session reaches it again", back);
    c.check("the worker is still running", sys.workers[0]!.proc.child.exitCode === null && sys.workers[0]!.proc.child.signalCode === null);
    await client.close();
    return {
      scenario: "upstream faults",
      load: `one client session, ${outcomes.length} faulty calls each followed by a good one (call timeout ${ms(opts.callTimeoutMs)})`,
      faults: outcomes.map((o) => `${o.tool} → ${o.result} (${ms(o.ms)})`).join("; "),
      failures: `only the faulty calls failed`,
      recovery: `next call at once after each fault; crashed upstream restarted → reached again after ${ms(recovered)}`,
      intact: "same client session throughout; worker running",
      ok: c.ok,
      checks: c.list,
    };
  } finally {
    crashy.kill("SIGKILL");
    await upstream.close();
    await sys.stop();
  }
}

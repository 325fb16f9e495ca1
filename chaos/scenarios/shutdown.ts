// Shutdown with a rogue upstream: a worker told to stop while a call hangs at an upstream that
// never answers still drains and exits by itself within its bound (2 × MCPGW_SHUTDOWN_TIMEOUT),
// with exit code 0, and the client hears an error instead of waiting for its own timeout.
import { startRawUpstream } from "../../test/fixtures/rawUpstream.ts";
import { Checks, failoverClient, ms, type ScenarioResult, startSystem, waitForTools } from "../harness.ts";

export async function shutdownRogue(opts: { shutdownTimeoutMs: number }): Promise<ScenarioResult> {
  const sys = await startSystem({ workers: 1, env: { MCPGW_SHUTDOWN_TIMEOUT: String(opts.shutdownTimeoutMs) } });
  const upstream = await startRawUpstream();
  const c = new Checks();
  try {
    await sys.addGateway({ name: "rogue", transport: "streamable-http", url: upstream.url });
    const worker = sys.workers[0]!;
    const client = await failoverClient(() => [worker.edgeUrl]);
    await waitForTools(client, ["rogue__hang"]);
    const hung = client.callTool({ name: "rogue__hang", arguments: {} }, undefined, { timeout: 120_000 }).then(
      () => "result",
      (e: Error) => `error: ${e.message.slice(0, 80)}`,
    );
    for (let i = 0; i < 400 && !upstream.calls.hang; i++) await new Promise((r) => setTimeout(r, 25));
    const t0 = performance.now();
    const exit = await sys.killWorker(worker, "SIGTERM");
    const exitMs = performance.now() - t0;
    const heard = await Promise.race([hung, new Promise<string>((r) => setTimeout(() => r("nothing"), 30_000))]);
    c.check("the worker exited with code 0", exit.code === 0, `code ${exit.code} signal ${exit.signal}`);
    c.check("the in-flight client heard an error", heard.startsWith("error"), heard);
    await client.close().catch(() => {});
    return {
      scenario: "shutdown with a rogue upstream",
      load: "one call hanging at an upstream that never answers",
      faults: `SIGTERM to the worker (MCPGW_SHUTDOWN_TIMEOUT ${ms(opts.shutdownTimeoutMs)})`,
      failures: `the hung call: ${heard}`,
      recovery: `exit after ${ms(exitMs)} (${(exitMs / (2 * opts.shutdownTimeoutMs)).toFixed(2)} of the 2× bound), code ${exit.code}`,
      intact: "process tree gone, exit code 0",
      ok: c.ok,
      checks: c.list,
    };
  } finally {
    await upstream.close();
    await sys.stop();
  }
}

// `npm run demo`: the embedded default (`npm start`) with one worker and the MCP reference
// server `@modelcontextprotocol/server-everything` registered as gateway `everything` (stdio).
import { createRequire } from "node:module";
import { getLive } from "../actors/kvStore.ts";
import { ProtocolError } from "../protocol/envelope.ts";
import { KEYS } from "../protocol/subjects.ts";
import { runGatewayProcess } from "./gatewayProcess.ts";
import type { Worker } from "./worker.ts";

const DEMO_GATEWAY = "everything";
const DISCOVERY_WAIT_MS = 60_000;

/** Registers the reference server (or points an earlier demo's registration at this install) and waits for its tools. */
async function registerEverything(worker: Worker): Promise<void> {
  const stdio = {
    command: process.execPath,
    args: [createRequire(import.meta.url).resolve("@modelcontextprotocol/server-everything/dist/index.js"), "stdio"],
    env: {},
  };
  const spec = { transport: "stdio" as const, stdio, description: "MCP reference server (npm run demo)" };
  const g = await worker.registry.add({ name: DEMO_GATEWAY, ...spec }).catch((err) => {
    if (!(err instanceof ProtocolError && err.code === "conflict")) throw err;
    return worker.registry.update({ name: DEMO_GATEWAY, patch: { ...spec, enabled: true } });
  });
  const end = Date.now() + DISCOVERY_WAIT_MS;
  while (!(await getLive(worker.stores.catalog, KEYS.catalog(g.id)))) {
    if (Date.now() > end) {
      worker.ctx.log.warn({ gateway: DEMO_GATEWAY }, "the demo gateway is not discovered yet; its tools appear once it is");
      return;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  process.stdout.write(`\nmcpgw demo: gateway ${DEMO_GATEWAY} is registered and discovered; its tools are named ${DEMO_GATEWAY}${worker.ctx.config.edge.toolSeparator}<tool>, e.g. ${DEMO_GATEWAY}${worker.ctx.config.edge.toolSeparator}echo\n`);
}

await runGatewayProcess({ afterStart: registerEverything });

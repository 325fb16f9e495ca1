import { Command } from "commander";
import { GatewayListReplySchema, GatewayViewSchema } from "../../protocol/gateway.ts";
import type { Run } from "./connection.ts";
import { table } from "./output.ts";

const firstLine = (text: unknown, max = 80) => {
  const line = typeof text === "string" ? (text.split("\n")[0] ?? "") : "";
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
};

/** `mcpgw tools ls [--gateway NAME]`: the discovered tools, read from the catalog. */
export function toolCommands(run: Run): Command {
  const tools = new Command("tools").alias("tool").description("the tools the gateways' upstreams offer");
  tools
    .command("ls")
    .alias("list")
    .description("list discovered tools (of every enabled gateway, or one)")
    .option("--gateway <name>", "only this gateway's tools")
    .action((o: { gateway?: string }) =>
      run(async (a, print) => {
        const gateways = o.gateway
          ? [await a.call(a.s.admin.gateway("get"), { name: o.gateway }, GatewayViewSchema)]
          : (await a.call(a.s.admin.gateway("list"), { enabled: true }, GatewayListReplySchema)).gateways;
        const found = await Promise.all(gateways.map(async (g) => ({ g, catalog: await a.catalog(g.id) })));
        const list = found
          .flatMap(({ g, catalog }) => (catalog?.tools ?? []).map((t) => ({ gateway: g.name, gid: g.id, ...t, description: t["description"] })))
          .sort((x, y) => x.gateway.localeCompare(y.gateway) || x.name.localeCompare(y.name));
        const undiscovered = found.filter((f) => !f.catalog).map((f) => f.g.name);
        const human = [
          list.length ? table(["GATEWAY", "TOOL", "DESCRIPTION"], list.map((t) => [t.gateway, t.name, firstLine(t.description)])) : "no tools",
          ...(undiscovered.length ? [`not discovered yet: ${undiscovered.join(", ")}`] : []),
        ].join("\n");
        print(human, { tools: list, undiscovered });
      }),
    );
  return tools;
}

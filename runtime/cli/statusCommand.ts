import { Command } from "commander";
import { StatusReplySchema } from "../../protocol/status.ts";
import type { Run } from "./connection.ts";
import { ago, table } from "./output.ts";

/** `mcpgw status`: workers, gateways, sessions and the classifier at a glance. */
export function statusCommand(run: Run): Command {
  return new Command("status").description("show the cluster at a glance").action(() =>
    run(async (a, print) => {
      const r = await a.call(a.s.admin.status, {}, StatusReplySchema);
      const g = r.gateways;
      const c = r.classification;
      const lines = [
        table(
          ["WORKER", "POLLERS", "UPSTREAM SESSIONS", "LEADER"],
          r.workers.map((w) => [w.worker, w.pollers, w.upstreamSessions, w.leader ? "yes" : ""]),
        ),
        "",
        `gateways         ${g.total} (${g.enabled} enabled: ${g.healthy} healthy, ${g.unhealthy} unhealthy, ${g.unknown} not yet polled)`,
        `client sessions  ${r.clientSessions}`,
        `classifier       ${r.leader ? `${r.leader.holder} (lease revision ${r.leader.revision})` : "no leader"}`,
        `classification   ${c ? `${c.hot} hot, ${c.cold} cold, computed ${ago(c.computedAt)}${c.valid ? "" : " — EXPIRED: every gateway polls at 1x"}` : "none: every gateway polls at 1x"}`,
      ];
      print(lines.join("\n"), r);
    }),
  );
}

import { Command } from "commander";
import { ClassificationGetReplySchema } from "../../protocol/classification.ts";
import { GatewayListReplySchema } from "../../protocol/gateway.ts";
import type { Run } from "./connection.ts";
import { ago, fields, table } from "./output.ts";

/** `mcpgw classification`: the classifier leader, the hot and cold lists and how they were chosen. */
export function classificationCommand(run: Run): Command {
  return new Command("classification").description("show the classifier leader and the current hot/cold classification").action(() =>
    run(async (admin, print) => {
      const reply = await admin.call(admin.s.admin.classificationGet, {}, ClassificationGetReplySchema);
      const { gateways } = await admin.call(admin.s.admin.gateway("list"), {}, GatewayListReplySchema);
      const nameOf = new Map(gateways.map((g) => [g.id, g.name]));
      const { leader, classification: c } = reply;
      const head = fields([
        ["leader", leader ? `${leader.holder} (lease revision ${leader.revision}, since ${leader.since}, renewed ${ago(leader.renewedAt)})` : "none"],
        ["classification", c ? `${reply.valid ? "valid" : "EXPIRED: every gateway polls at 1x"} until ${c.validUntil}` : "none: every gateway polls at 1x"],
        ...(c
          ? ([
              ["computed", `${c.computedAt} (${ago(c.computedAt)}) by ${c.leader} at lease revision ${c.leaseRevision}`],
              ["gateways", `${c.meta.total} enabled, ${c.meta.eligible} with recorded use, hot ${c.meta.hotActual} of cap ${c.meta.hotCap}`],
              ["below cap", c.meta.belowCapReason ?? undefined],
            ] as Array<[string, unknown]>)
          : []),
      ]);
      const rows = c
        ? [...c.hot.map((id, i) => ["hot", i + 1, id, nameOf.get(id)]), ...c.cold.map((id) => ["cold", null, id, nameOf.get(id)])]
        : [];
      print(rows.length ? `${head}\n\n${table(["TIER", "RANK", "ID", "NAME"], rows)}` : head, reply);
    }),
  );
}

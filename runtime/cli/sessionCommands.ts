// `mcpgw session ls|evict` and `mcpgw drain`: upstream session actors across the cluster.
import { Command } from "commander";
import { DrainReplySchema, SessionEvictReplySchema, SessionListReplySchema } from "../../protocol/upstream.ts";
import type { Run } from "./connection.ts";
import { ago, table } from "./output.ts";

function duration(ms: number): string {
  return ms < 60_000 ? `${Math.round(ms / 1000)}s` : ms < 3_600_000 ? `${Math.round(ms / 60_000)}m` : `${(ms / 3_600_000).toFixed(1)}h`;
}

export function sessionCommands(run: Run): Command[] {
  const session = new Command("session").description("upstream sessions: one per (downstream session, gateway)");
  session
    .command("ls")
    .description("list every live upstream session actor in the cluster")
    .option("--sid <key>", "only this client session (by its key, as listed)")
    .option("--gid <gid>", "only this gateway id")
    .action((o: { sid?: string; gid?: string }) =>
      run(async (admin, print) => {
        const r = await admin.call(admin.s.admin.sessionList, { sid: o.sid, gid: o.gid }, SessionListReplySchema);
        const rows = r.sessions.map((x) => [x.sid, x.gatewayName, x.gid, x.state, x.worker, duration(x.ageMs), ago(x.lastUsedAt), x.useCount]);
        const summary = `${r.sessions.length} session(s) on ${r.workers.length} worker(s): ${r.workers.join(", ") || "-"}`;
        print(`${table(["SESSION", "GATEWAY", "GATEWAY ID", "STATE", "WORKER", "AGE", "LAST USED", "USES"], rows)}\n${summary}`, r);
      }),
    );
  session
    .command("evict")
    .description("close upstream sessions by downstream session id and/or gateway id, on every worker")
    .option("--sid <key>", "a client session, by its key (as listed)")
    .option("--gid <gid>", "gateway id")
    .action((o: { sid?: string; gid?: string }) =>
      run(async (admin, print) => {
        const r = await admin.call(admin.s.admin.sessionEvict, { sid: o.sid, gid: o.gid }, SessionEvictReplySchema);
        print(`evicted ${r.evicted} session(s) on ${r.workers.length} worker(s)`, r);
      }),
    );
  const drain = new Command("drain")
    .description("close every upstream session on every worker (e.g. after a TLS or credential change)")
    .option("--reason <text>", "why, for the workers' logs")
    .action((o: { reason?: string }) =>
      run(async (admin, print) => {
        const r = await admin.call(admin.s.admin.drain, o.reason ? { reason: o.reason } : {}, DrainReplySchema);
        print(`drained ${r.evicted} session(s) on ${r.workers.length} worker(s)`, r);
      }),
    );
  return [session, drain];
}

// `mcpgw`: the operator's command line over NATS.
import { Command, Option } from "commander";
import { classificationCommand } from "./classificationCommands.ts";
import { connectAdmin, type Admin, type CliOptions } from "./connection.ts";
import { gatewayCommands } from "./gatewayCommands.ts";
import { statusCommand } from "./statusCommand.ts";
import { errorLine } from "./output.ts";
import { sessionCommands } from "./sessionCommands.ts";
import { toolCommands } from "./toolCommands.ts";

const program = new Command("mcpgw")
  .description("operate an mcpgw cluster over NATS")
  .option("-s, --server <url>", "NATS server (default: NATS_URL, else the embedded default on 127.0.0.1:4222)")
  .option("--user <user>", "NATS user (default: NATS_USER, else the embedded admin)")
  .option("--password <password>", "NATS password (default: NATS_PASSWORD)")
  .option("--creds <file>", "NATS credentials file (default: NATS_CREDS)")
  .option("--prefix <prefix>", "subject prefix (default: MCPGW_SUBJECT_PREFIX or mcpgw)")
  .addOption(new Option("--timeout <ms>", "request timeout in ms").default("10000"))
  .option("--json", "print JSON instead of tables");

async function run(fn: (admin: Admin, print: (human: string, json: unknown) => void) => Promise<void>): Promise<void> {
  const opts = program.opts<CliOptions>();
  let admin: Admin | undefined;
  try {
    admin = await connectAdmin(opts);
    await fn(admin, (human, json) => process.stdout.write(`${opts.json ? JSON.stringify(json, null, 2) : human}\n`));
  } catch (err) {
    process.stderr.write(`${errorLine(err)}\n`);
    process.exitCode = 1;
  } finally {
    await admin?.close().catch(() => {});
  }
}

program.addCommand(gatewayCommands(run));
program.addCommand(classificationCommand(run));
program.addCommand(statusCommand(run));
program.addCommand(toolCommands(run));
sessionCommands(run).forEach((c) => program.addCommand(c));

await program.parseAsync(process.argv);

import { readFileSync } from "node:fs";
import { Presets, SingleBar } from "cli-progress";
import { Command, Option } from "commander";
import { GatewayListReplySchema, GatewayRemoveReplySchema, GatewayViewSchema, type GatewayView } from "../../protocol/gateway.ts";
import { RefreshReplySchema } from "../../protocol/catalog.ts";
import { ProtocolError } from "../../protocol/envelope.ts";
import type { Admin, Run } from "./connection.ts";
import { ago, errorLine, fields, table } from "./output.ts";

const collect = (v: string, prev: string[] = []) => [...prev, v];

function pairs(list: string[] | undefined, what: string): Record<string, string> | undefined {
  if (!list) return undefined;
  return Object.fromEntries(
    list.map((kv) => {
      const i = kv.indexOf("=");
      if (i <= 0) throw new Error(`${what} must be KEY=VALUE: ${kv}`);
      return [kv.slice(0, i), kv.slice(i + 1)];
    }),
  );
}

type SpecOptions = {
  spec?: string;
  url?: string;
  transport?: string;
  command?: string;
  arg?: string[];
  env?: string[];
  bearer?: string;
  basic?: string;
  authHeader?: string[];
  authQuery?: string[];
  /** false when --no-auth was given (commander's negated option) */
  auth?: boolean;
  header?: string[];
  ca?: string;
  cert?: string;
  key?: string;
  insecure?: boolean;
  passthrough?: string[];
  tag?: string[];
  description?: string;
  enable?: boolean;
  disable?: boolean;
};

/** Builds a spec or patch from command-line options; only what was given is set. */
function specFrom(o: SpecOptions): Record<string, unknown> {
  const spec: Record<string, unknown> = {};
  if (o.url !== undefined) spec.url = o.url;
  if (o.transport !== undefined) spec.transport = o.transport;
  if (o.command !== undefined) spec.stdio = { command: o.command, args: o.arg ?? [], env: pairs(o.env, "--env") ?? {} };
  if (o.auth === false) spec.auth = { type: "none" };
  if (o.bearer !== undefined) spec.auth = { type: "bearer", token: o.bearer };
  if (o.basic !== undefined) {
    const i = o.basic.indexOf(":");
    if (i <= 0) throw new Error("--basic must be USER:PASSWORD");
    spec.auth = { type: "basic", username: o.basic.slice(0, i), password: o.basic.slice(i + 1) };
  }
  if (o.authHeader) spec.auth = { type: "headers", headers: pairs(o.authHeader, "--auth-header") };
  if (o.authQuery) spec.auth = { type: "query", params: pairs(o.authQuery, "--auth-query") };
  if (o.header) spec.headers = pairs(o.header, "--header");
  if (o.ca || o.cert || o.key || o.insecure) {
    spec.tls = {
      ...(o.ca ? { ca: readFileSync(o.ca, "utf8") } : {}),
      ...(o.cert ? { cert: readFileSync(o.cert, "utf8") } : {}),
      ...(o.key ? { key: readFileSync(o.key, "utf8") } : {}),
      ...(o.insecure ? { rejectUnauthorized: false } : {}),
    };
  }
  if (o.passthrough) spec.passthroughHeaders = o.passthrough;
  if (o.tag) spec.tags = o.tag;
  if (o.description !== undefined) spec.description = o.description;
  if (o.enable) spec.enabled = true;
  if (o.disable) spec.enabled = false;
  return spec;
}

/**
 * Spec fields from a JSON file (`-` for standard input), so secrets need not be on the command
 * line where `ps` shows them. Options given as well override the file's fields.
 */
function specFile(path: string | undefined): Record<string, unknown> {
  if (path === undefined) return {};
  const text = readFileSync(path === "-" ? 0 : path, "utf8");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`--spec ${path} is not valid JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error(`--spec ${path} must hold a JSON object`);
  return value as Record<string, unknown>;
}

/** The gateway specs of `gateway import`: a JSON array (the registry validates each one). */
function specList(path: string): unknown[] {
  const text = readFileSync(path === "-" ? 0 : path, "utf8");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`${path} is not valid JSON`);
  }
  if (!Array.isArray(value)) throw new Error(`${path} must hold a JSON array of gateway specs`);
  return value;
}

function specOptions(cmd: Command): Command {
  return cmd
    .option("--spec <file>", "gateway fields as JSON from a file, or - for standard input (keeps secrets off the command line)")
    .option("--url <url>", "upstream MCP endpoint (streamable-http or sse)")
    .addOption(new Option("--transport <kind>", "streamable-http | sse | stdio"))
    .option("--command <cmd>", "stdio: the command to run")
    .option("--arg <arg>", "stdio: an argument (repeat)", collect)
    .option("--env <KEY=VALUE>", "stdio: an environment variable, stored encrypted (repeat)", collect)
    .option("--bearer <token>", "auth: bearer token")
    .option("--basic <user:password>", "auth: basic")
    .option("--auth-header <NAME=VALUE>", "auth: a secret header (repeat)", collect)
    .option("--auth-query <NAME=VALUE>", "auth: a secret query parameter (repeat)", collect)
    .option("--no-auth", "auth: none")
    .option("--header <NAME=VALUE>", "a static header (repeat)", collect)
    .option("--ca <file>", "TLS: CA bundle (PEM)")
    .option("--cert <file>", "TLS: client certificate for mTLS (PEM)")
    .option("--key <file>", "TLS: client key for mTLS (PEM), stored encrypted")
    .option("--insecure", "TLS: do not verify the upstream certificate")
    .option("--passthrough <header>", "a client header allowed through to the upstream (repeat)", collect)
    .option("--tag <tag>", "a tag (repeat)", collect)
    .option("--description <text>", "description");
}

const ref = (nameOrId: string) => (/^[a-f0-9]{16}$/.test(nameOrId) ? { id: nameOrId } : { name: nameOrId });

function target(g: GatewayView): string {
  return g.transport === "stdio" ? `${g.stdio?.command ?? ""} ${(g.stdio?.args ?? []).join(" ")}`.trim() : (g.url ?? "");
}

export function gatewayDetail(g: GatewayView): string {
  const st = g.status;
  return fields([
    ["id", g.id],
    ["name", g.name],
    ["transport", g.transport],
    ["target", target(g)],
    ["auth", g.auth.type],
    ["enabled", String(g.enabled)],
    ["tags", g.tags.join(", ") || "-"],
    ["description", g.description || "-"],
    ["passthrough", g.passthroughHeaders.join(", ") || "-"],
    ["revision", String(g.revision)],
    ["updated", g.updatedAt],
    ["health", st?.health ?? "unknown"],
    ["tier", st?.tier ?? "unclassified"],
    ["tools/prompts/resources", st ? `${st.tools}/${st.prompts}/${st.resources}` : "-"],
    ["last success", st?.lastSuccessAt ?? "-"],
    ["last error", st?.lastError ?? "-"],
    ["next poll", st?.nextPollAt ?? "-"],
  ]);
}

/**
 * Waits until the gateway's first discovery is in the catalog, telling `progress` whenever
 * its health or last error changes; a timeout leaves the gateway registered.
 */
async function firstDiscovery(a: Admin, g: GatewayView, progress: (line: string) => void, timeoutMs: number) {
  const end = Date.now() + timeoutMs;
  let said = "";
  progress(`waiting for the first discovery of ${g.name}…`);
  for (;;) {
    const [view, catalog] = await Promise.all([a.call(a.s.admin.gateway("get"), { id: g.id }, GatewayViewSchema), a.catalog(g.id)]);
    if (catalog) return { gateway: view, catalog };
    const st = view.status;
    const line = st ? `health ${st.health}${st.lastError ? `: ${st.lastError}` : ""}${st.nextPollAt ? ` (next poll ${ago(st.nextPollAt)})` : ""}` : "no poller has reported yet";
    if (line.replace(/ \(next poll .*\)$/, "") !== said.replace(/ \(next poll .*\)$/, "")) progress((said = line));
    if (Date.now() > end) throw new ProtocolError("timeout", `no discovery of ${g.name} within ${Math.round(timeoutMs / 1000)} s${st?.lastError ? ` (last error: ${st.lastError})` : ""}; it stays registered`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

export function gatewayCommands(run: Run): Command {
  const gw = new Command("gateway").alias("gw").description("administer upstream MCP servers");

  specOptions(gw.command("add <name>").description("register a gateway"))
    .option("--disabled", "register it disabled")
    .option("--wait", "show progress until the first discovery finished, then what it found")
    .option("--wait-timeout <seconds>", "with --wait: give up waiting after this long (the gateway stays registered)", "120")
    .action((name: string, o: SpecOptions & { disabled?: boolean; wait?: boolean; waitTimeout: string }) =>
      run(async (a, print) => {
        const fromFile = specFile(o.spec);
        const transport = o.transport ?? fromFile.transport ?? (o.command ? "stdio" : "streamable-http");
        const spec = { ...fromFile, name, transport, ...specFrom(o), ...(o.disabled ? { enabled: false } : {}) };
        const g = await a.call(a.s.admin.gateway("add"), spec, GatewayViewSchema);
        const added = `added ${g.name} (${g.id}) at revision ${g.revision}`;
        if (!o.wait) return print(added, g);
        process.stderr.write(`${added}\n`);
        if (!g.enabled) throw new ProtocolError("conflict", `gateway ${g.name} is disabled: no discovery to wait for`);
        const found = await firstDiscovery(a, g, (line) => process.stderr.write(`${line}\n`), (Number(o.waitTimeout) || 120) * 1000);
        const lists = found.catalog;
        const n = (count: number, what: string) => `${count} ${what}${count === 1 ? "" : "s"}`;
        const counts = `discovered ${n(lists.tools.length, "tool")}, ${n(lists.prompts.length, "prompt")}, ${n(lists.resources.length, "resource")}, ${n(lists.resourceTemplates.length, "resource template")}`;
        const rows = [
          ...lists.tools.map((t) => ["tool", t.name]),
          ...lists.prompts.map((p) => ["prompt", p.name]),
          ...lists.resources.map((r) => ["resource", r.uri]),
          ...lists.resourceTemplates.map((r) => ["template", r.uriTemplate]),
        ];
        print([counts, ...(rows.length ? [table(["KIND", "NAME"], rows)] : [])].join("\n"), { ...found.gateway, catalog: lists });
      }),
    );

  gw.command("import <file>")
    .description("register many gateways from a JSON array of gateway specs (- for standard input), several at once")
    .option("--parallel <n>", "adds in flight at once", (v) => Number.parseInt(v, 10), 32)
    .action((file: string, o: { parallel: number }) =>
      run(async (a, print) => {
        const specs = specList(file);
        const parallel = Number.isInteger(o.parallel) && o.parallel > 0 ? o.parallel : 32;
        const bar = new SingleBar({ format: "{bar} {value}/{total} gateways, {failed} failed, {rate}/s, eta {eta}s", stream: process.stderr }, Presets.shades_classic);
        const startedAt = performance.now();
        const failed: Array<{ index: number; name: unknown; error: string }> = [];
        let added = 0;
        let next = 0;
        bar.start(specs.length, 0, { failed: 0, rate: 0 });
        await Promise.all(
          Array.from({ length: Math.min(parallel, specs.length) }, async () => {
            while (next < specs.length) {
              const index = next++;
              try {
                await a.call(a.s.admin.gateway("add"), specs[index], GatewayViewSchema);
                added++;
              } catch (err) {
                // one refused gateway (a name taken, a bad field) does not stop the others
                failed.push({ index, name: (specs[index] as { name?: unknown } | null)?.name, error: errorLine(err).replace(/^error: /, "") });
              }
              bar.increment(1, { failed: failed.length, rate: Math.round((added + failed.length) / ((performance.now() - startedAt) / 1000)) });
            }
          }),
        );
        bar.stop();
        const seconds = (performance.now() - startedAt) / 1000;
        failed.sort((x, y) => x.index - y.index);
        const lines = failed.map((f) => `#${f.index} ${typeof f.name === "string" ? f.name : "(no name)"}: ${f.error}`);
        const rate = `in ${seconds.toFixed(1)} s (${Math.round(specs.length / Math.max(seconds, 0.001))} adds/s)`;
        print([`imported ${added} of ${specs.length} gateways ${rate}${failed.length ? `; ${failed.length} failed:` : ""}`, ...lines].join("\n"), { added, failed, seconds });
        if (failed.length > 0) process.exitCode = 1;
      }),
    );

  specOptions(gw.command("update <name>").description("change a gateway (only the options given)"))
    .option("--rename <new-name>", "a new name")
    .option("--enable", "enable")
    .option("--disable", "disable")
    .option("--expected-revision <n>", "refuse if the gateway changed since this revision", (v) => Number.parseInt(v, 10))
    .action((name: string, o: SpecOptions & { rename?: string; expectedRevision?: number }) =>
      run(async (a, print) => {
        const patch = { ...specFile(o.spec), ...specFrom(o), ...(o.rename ? { name: o.rename } : {}) };
        const body = { ...ref(name), patch, ...(o.expectedRevision ? { expectedRevision: o.expectedRevision } : {}) };
        const g = await a.call(a.s.admin.gateway("update"), body, GatewayViewSchema);
        print(`updated ${g.name} (${g.id}), now at revision ${g.revision}`, g);
      }),
    );

  gw.command("rm <name>")
    .alias("remove")
    .description("remove a gateway")
    .option("--expected-revision <n>", "refuse if the gateway changed since this revision", (v) => Number.parseInt(v, 10))
    .action((name: string, o: { expectedRevision?: number }) =>
      run(async (a, print) => {
        const r = await a.call(a.s.admin.gateway("remove"), { ...ref(name), ...(o.expectedRevision ? { expectedRevision: o.expectedRevision } : {}) }, GatewayRemoveReplySchema);
        print(`removed ${r.name} (${r.id})`, r);
      }),
    );

  gw.command("get <name>")
    .description("show one gateway")
    .action((name: string) =>
      run(async (a, print) => {
        const g = await a.call(a.s.admin.gateway("get"), ref(name), GatewayViewSchema);
        print(gatewayDetail(g), g);
      }),
    );

  gw.command("ls")
    .alias("list")
    .description("list gateways")
    .option("--tag <tag>", "only gateways with this tag")
    .action((o: { tag?: string }) =>
      run(async (a, print) => {
        // page by page: a reply carries at most 1,000 (fewer when they would not fit in one NATS message)
        const r: { gateways: GatewayView[] } = { gateways: [] };
        for (let after: string | undefined; ; ) {
          const page = await a.call(a.s.admin.gateway("list"), { ...(o.tag && { tag: o.tag }), ...(after && { after }) }, GatewayListReplySchema);
          r.gateways.push(...page.gateways);
          if (!(after = page.next)) break;
        }
        const rows = r.gateways.map((g) => [
          g.name,
          g.id,
          g.transport,
          g.enabled ? "yes" : "no",
          g.status?.health ?? "unknown",
          g.status?.tier ?? "unclassified",
          g.status ? `${g.status.tools}/${g.status.prompts}/${g.status.resources}` : "-",
          ago(g.status?.lastSuccessAt),
          ago(g.status?.nextPollAt),
          g.status?.lastError ?? "",
        ]);
        print(
          rows.length ? table(["NAME", "ID", "TRANSPORT", "ENABLED", "HEALTH", "TIER", "T/P/R", "LAST OK", "NEXT POLL", "LAST ERROR"], rows) : "no gateways",
          r,
        );
      }),
    );

  gw.command("refresh <name>")
    .description("run a discovery now and show what changed")
    .action((name: string) =>
      run(async (a, print) => {
        const r = await a.call(a.s.admin.gateway("refresh"), ref(name), RefreshReplySchema);
        const lines = (["added", "updated", "removed"] as const).flatMap((kind) =>
          (["tools", "prompts", "resources", "resourceTemplates"] as const).flatMap((list) => r.diff[kind][list].map((n) => `${kind.padEnd(8)} ${list.padEnd(18)} ${n}`)),
        );
        print(r.changed ? lines.join("\n") : "no change", r);
      }),
    );
  return gw;
}


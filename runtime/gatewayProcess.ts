// A gateway worker process: its configuration, the embedded nats-server when there is no
// NATS_URL, the worker, the client configuration it prints, and its shutdown on signals.
import { join, resolve } from "node:path";
import { INBOX_PREFIX } from "../protocol/subjects.ts";
import { ConfigError, loadConfig, type Config } from "./config.ts";
import { localSecrets, secretsDir, startEmbeddedNats, type EmbeddedNats } from "./embeddedNats.ts";
import { createLogger } from "./logger.ts";
import { connectNats, type NatsOptions } from "./nats.ts";
import { locateNatsServer } from "./natsServerBinary.ts";
import { startWorker, type Worker } from "./worker.ts";

function die(line: string): never {
  process.stderr.write(`mcpgw: ${line}\n`);
  process.exit(1);
}

/**
 * A ready-to-paste client configuration, printed once to stdout (not the log). The token is
 * never printed: the header names where it is.
 */
function printClientConfig(url: string, tokenSource: string | null): void {
  const server = tokenSource ? { type: "http", url, headers: { Authorization: `Bearer <the token in ${tokenSource}>` } } : { type: "http", url };
  process.stdout.write(`\nmcpgw: MCP endpoint ${url}\nClient configuration:\n${JSON.stringify({ mcpServers: { mcpgw: server } }, null, 2)}\n\n`);
}

/**
 * Runs a worker process until SIGINT/SIGTERM. `afterStart` runs once the worker is up, before
 * the client configuration is printed (the demo registers its gateway there).
 */
export async function runGatewayProcess(opts: { afterStart?: (worker: Worker) => Promise<void> } = {}): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    die(err instanceof ConfigError ? err.message : String(err));
  }
  const log = createLogger({ level: config.logLevel, name: "mcpgw" });

  // Signals are taken from the first moment: one that arrives while the worker starts stops it
  // once it is up (a process killed half-started could leave its nats-server behind), and the
  // shutdown bound holds from the signal, so a start that hangs cannot make it wait forever.
  let embedded: EmbeddedNats | undefined;
  let shutdown: ((signal: string) => Promise<void>) | undefined;
  let stopRequested: string | undefined;
  const onSignal = (signal: string) => {
    if (shutdown) return void shutdown(signal);
    if (stopRequested) return;
    stopRequested = signal;
    log.info({ signal }, "stopping once started");
    setTimeout(() => giveUp(2 * config.intervals.shutdownTimeout), 2 * config.intervals.shutdownTimeout).unref();
  };
  const giveUp = (boundMs: number) => {
    log.error({ boundMs }, "shutdown did not finish within its bound; exiting anyway");
    embedded?.process.kill("SIGKILL");
    process.exit(1);
  };
  process.on("SIGINT", () => onSignal("SIGINT"));
  process.on("SIGTERM", () => onSignal("SIGTERM"));

  let natsOptions: NatsOptions;
  if (config.nats.url) {
    if (!config.secretKey) die("MCPGW_SECRET_KEY is required when NATS_URL is set (64 hex characters; e.g. `openssl rand -hex 32`)");
    natsOptions = { url: config.nats.url, user: config.nats.user, password: config.nats.password, credsFile: config.nats.credsFile };
  } else {
    let bin: string;
    try {
      bin = locateNatsServer(config.natsServerBin, (line) => log.info(line));
    } catch (err) {
      die((err as Error).message);
    }
    const secrets = localSecrets(config.dataDir);
    config = {
      ...config,
      secretKey: config.secretKey ?? secrets.secretKey,
      edge: { ...config.edge, tokens: config.edge.tokens.length ? config.edge.tokens : [secrets.edgeToken] },
      console: { tokens: config.console.tokens.length ? config.console.tokens : [secrets.consoleToken] },
    };
    try {
      embedded = await startEmbeddedNats({
        bin,
        host: config.embeddedNats.host,
        port: config.embeddedNats.port,
        storeDir: join(resolve(config.dataDir), "jetstream"),
        passwords: secrets.natsPasswords,
        pidFile: join(resolve(config.dataDir), "nats-server.pid"),
      });
    } catch (err) {
      die((err as Error).message);
    }
    natsOptions = { url: embedded.url, user: "runtime", password: secrets.natsPasswords.runtime };
    const dir = secretsDir(config.dataDir);
    log.info(
      { url: embedded.url, secrets: dir },
      `embedded nats-server is up. Use the nats CLI as admin: nats context save mcpgw --server ${embedded.url} --user admin --password "$(cat ${join(dir, "nats-admin.password")})" --inbox-prefix ${INBOX_PREFIX.admin} && nats context select mcpgw  (read-only: user viewer, ${join(dir, "nats-viewer.password")}, --inbox-prefix ${INBOX_PREFIX.viewer})`,
    );
  }

  const nc = await connectNats({ ...natsOptions, name: `mcpgw-${config.workerId}` }).catch((err) =>
    die(`cannot connect to NATS at ${natsOptions.url}: ${(err as Error).message}`),
  );
  const worker = await startWorker(config, nc, log);
  await opts.afterStart?.(worker);
  printClientConfig(worker.edge.url, config.edge.auth === "none" ? null : embedded ? join(secretsDir(config.dataDir), "edge-token") : "MCPGW_EDGE_TOKENS");
  const consoleUrl = worker.edge.url.replace(/\/mcp$/, "/console");
  process.stdout.write(
    config.console.tokens.length
      ? `mcpgw: web console ${consoleUrl} (log in with the token in ${embedded ? join(secretsDir(config.dataDir), "console-token") : "MCPGW_CONSOLE_TOKENS"})\n\n`
      : `mcpgw: web console ${consoleUrl} is off (set MCPGW_CONSOLE_TOKENS)\n\n`,
  );

  let stopping = false;
  shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down");
    // The close bound holds even when something ignores cancellation or the event loop is
    // saturated: at twice the shutdown timeout the process gives up, says so, and exits.
    const bound = 2 * config.intervals.shutdownTimeout;
    setTimeout(() => giveUp(bound), bound).unref();
    try {
      await worker.stop();
      await nc.drain();
    } catch (err) {
      log.error({ err }, "error while shutting down");
    }
    await embedded?.stop();
    process.exit(0);
  };
  if (stopRequested) void shutdown(stopRequested);
  nc.closed().then((err) => {
    if (!stopping) {
      log.fatal({ err }, "NATS connection closed");
      void embedded?.stop().finally(() => process.exit(1));
    }
  });
}


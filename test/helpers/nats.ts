import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { startEmbeddedNats, type NatsUser } from "../../runtime/embeddedNats.ts";
import { connectNats } from "../../runtime/nats.ts";
import { locateNatsServer } from "../../runtime/natsServerBinary.ts";

/**
 * kill(SIGSTOP) returns once the signal is queued; the group stop then waits for one thread to be
 * scheduled, and on a loaded machine nats-server's other threads can still answer requests meanwhile.
 */
async function allThreadsStopped(pid: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const states = readdirSync(`/proc/${pid}/task`).map((tid) => {
      // the state follows the ")" that closes the command name
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    });
    if (states.every((s) => s === "T" || s === "t")) return;
    if (Date.now() > deadline) throw new Error(`nats-server ${pid} not stopped: thread states ${states.join("")}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Servers still running, killed when the test process ends however it ends (an aborted or
 * killed test file must not leave a nats-server behind: it runs in its own process group).
 */
const running = new Set<{ kill(signal: NodeJS.Signals): unknown }>();
/** Kills `p` when the test process ends, unless it has exited by then. */
export function keepUntilExit(p: { kill(signal: NodeJS.Signals): unknown; once(event: "exit", f: () => void): unknown }): void {
  running.add(p);
  p.once("exit", () => running.delete(p));
}
const killAll = () => {
  for (const p of running) p.kill("SIGKILL");
};
process.once("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

export type TestNats = {
  url: string;
  dir: string;
  passwords: Record<NatsUser, string>;
  connect(user?: NatsUser): Promise<NatsConnection>;
  /** an outage: stops the server process, keeping its port, store and every client connection (which keep reconnecting) */
  stopServer(): Promise<void>;
  /** the end of the outage: starts the server again on the same port and store */
  restartServer(): Promise<void>;
  /** an unresponsive server (SIGSTOP): connections stay open and nothing answers; `false` resumes it */
  freezeServer(frozen: boolean): Promise<void>;
  /** stops the server, closes every connection made through `connect`, removes the store */
  stop(): Promise<void>;
};

export function newPasswords(): Record<NatsUser, string> {
  return { runtime: randomBytes(12).toString("hex"), admin: randomBytes(12).toString("hex"), viewer: randomBytes(12).toString("hex") };
}

/** A real nats-server with the project's nats.conf, on a free port with a temporary store. */
export async function startNats(): Promise<TestNats> {
  const dir = mkdtempSync(join(tmpdir(), "mcpgw-test-"));
  const passwords = newPasswords();
  const options = {
    bin: locateNatsServer(process.env.NATS_SERVER_BIN),
    host: "127.0.0.1",
    port: await freePort(),
    storeDir: join(dir, "jetstream"),
    passwords,
    // a hang bound: on a machine shared by several test runs, a process may wait seconds for a core
    readyTimeoutMs: 60_000,
  };
  const firstStart = async () => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await startEmbeddedNats(options);
      } catch (err) {
        // the free port was taken by another process between freePort() and nats-server's bind
        if (attempt >= 5 || !/address already in use/i.test(String(err))) throw err;
        options.port = await freePort();
      }
    }
  };
  let server = await firstStart();
  keepUntilExit(server.process);
  const conns: NatsConnection[] = [];
  return {
    url: server.url,
    dir,
    passwords,
    async connect(user: NatsUser = "runtime") {
      const nc = await connectNats({ url: server.url, user, password: passwords[user], name: `test-${user}` });
      conns.push(nc);
      return nc;
    },
    async stopServer() {
      await server.stop();
    },
    async restartServer() {
      server = await startEmbeddedNats(options);
      keepUntilExit(server.process);
    },
    async freezeServer(frozen) {
      server.process.kill(frozen ? "SIGSTOP" : "SIGCONT");
      if (frozen) await allThreadsStopped(server.process.pid!);
    },
    async stop() {
      await Promise.allSettled(conns.map((c) => c.close()));
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The bucket, with every watch it hands out kept in `watches` (so a test can end one). */
export function watched(kv: KV, watches: Array<{ stop(): void }>): KV {
  return new Proxy(kv, {
    get(target, prop) {
      if (prop === "watch") {
        return async (opts: Parameters<KV["watch"]>[0]) => {
          const iter = await target.watch(opts);
          watches.push(iter);
          return iter;
        };
      }
      const v = Reflect.get(target, prop);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

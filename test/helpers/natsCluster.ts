import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { buckets, eventStream, streamLog } from "../../protocol/subjects.ts";
import { NATS_CONF, startEmbeddedNats, type EmbeddedNats, type NatsUser } from "../../runtime/embeddedNats.ts";
import { connectNats } from "../../runtime/nats.ts";
import { locateNatsServer } from "../../runtime/natsServerBinary.ts";
import { freePort, keepUntilExit, newPasswords, type TestNats } from "./nats.ts";
import { until } from "./wait.ts";

/**
 * One node's configuration: the project's nats.conf (users, permissions, JetStream) plus a
 * server name and routes to every node. `include` paths are relative to the including file.
 */
export function clusterNodeConfig(opts: { file: string; serverName: string; clusterName: string; routePort: number; routePorts: number[]; monitorPort?: number }): string {
  return [
    `server_name: ${opts.serverName}`,
    `include "${relative(dirname(opts.file), NATS_CONF)}"`,
    // the monitoring endpoint (loopback): tests read a node's routes from it
    ...(opts.monitorPort ? [`http: 127.0.0.1:${opts.monitorPort}`] : []),
    "cluster {",
    `  name: ${opts.clusterName}`,
    `  listen: 127.0.0.1:${opts.routePort}`,
    `  routes: [${opts.routePorts.map((p) => `nats-route://127.0.0.1:${p}`).join(", ")}]`,
    "}",
    "",
  ].join("\n");
}

export type ClusterNode = {
  name: string;
  url: string;
  running(): boolean;
  /** how many routes to other nodes this node has now (its monitoring endpoint's /routez) */
  routes(): Promise<number>;
  /** the JetStream meta group's leader as this node sees it (its /jsz), "" when it knows none */
  metaLeader(): Promise<string>;
  /** this node's client connections named `name…`: when each began (server clock, ms since the epoch) */
  connectionsSince(name: string): Promise<Array<{ name: string; startMs: number }>>;
  /** SIGKILL: no goodbye to routes or clients */
  kill(): Promise<void>;
  /** starts the node again on its ports with its store (it catches up from the others) */
  restart(): Promise<void>;
};

export type TestNatsCluster = Omit<TestNats, "stopServer" | "restartServer" | "freezeServer" | "connect"> & {
  nodes: ClusterNode[];
  /** a connection closed by `stop`; `to` picks the nodes it may use (default: all) */
  connect(user?: NatsUser, to?: string): Promise<NatsConnection>;
};

/**
 * A JetStream cluster of real nats-servers on loopback, each with the project's nats.conf on
 * free ports and a temporary store. `url` lists every node (as `NATS_URL` would); resolves once
 * JetStream has a meta leader and answers.
 */
export async function startNatsCluster(size = 3): Promise<TestNatsCluster> {
  const dir = mkdtempSync(join(tmpdir(), "mcpgw-cluster-"));
  const passwords = newPasswords();
  const bin = locateNatsServer(process.env.NATS_SERVER_BIN);
  const ports = await Promise.all(Array.from({ length: size }, async () => ({ client: await freePort(), route: await freePort(), monitor: await freePort() })));
  const routePorts = ports.map((p) => p.route);

  const nodes = ports.map((p, i) => {
    const name = `n${i + 1}`;
    const file = join(dir, `${name}.conf`);
    writeFileSync(file, clusterNodeConfig({ file, serverName: name, clusterName: "mcpgw-test", routePort: p.route, routePorts, monitorPort: p.monitor }));
    let server: EmbeddedNats | null = null;
    let alive = false;
    const start = async () => {
      server = await startEmbeddedNats({ bin, host: "127.0.0.1", port: p.client, storeDir: join(dir, name), passwords, configFile: file });
      alive = true;
      server.process.once("exit", () => (alive = false));
      keepUntilExit(server.process);
    };
    const node: ClusterNode & { start(): Promise<void>; stop(): Promise<void> } = {
      name,
      url: `nats://127.0.0.1:${p.client}`,
      running: () => alive,
      routes: async () => ((await (await fetch(`http://127.0.0.1:${p.monitor}/routez`)).json()) as { num_routes: number }).num_routes,
      metaLeader: async () => ((await (await fetch(`http://127.0.0.1:${p.monitor}/jsz`)).json()) as { meta_cluster?: { leader?: string } }).meta_cluster?.leader ?? "",
      async connectionsSince(prefix) {
        const { connections } = (await (await fetch(`http://127.0.0.1:${p.monitor}/connz?limit=1024`)).json()) as { connections?: Array<{ name?: string; start: string }> };
        return (connections ?? []).filter((c) => c.name?.startsWith(prefix)).map((c) => ({ name: c.name!, startMs: Date.parse(c.start) }));
      },
      start,
      async kill() {
        if (!server || !alive) return;
        const exited = new Promise((r) => server!.process.once("exit", r));
        server.process.kill("SIGKILL");
        await exited;
      },
      restart: start,
      async stop() {
        await server?.stop();
      },
    };
    return node;
  });
  await Promise.all(nodes.map((n) => n.start()));

  const url = nodes.map((n) => n.url).join(",");
  const conns: NatsConnection[] = [];
  const connect = async (user: NatsUser = "runtime", to: string = url) => {
    const nc = await connectNats({ url: to, user, password: passwords[user], name: `test-${user}` });
    conns.push(nc);
    return nc;
  };
  // JetStream answers only once the nodes have elected a meta leader
  const probe = await connectNats({ url, user: "runtime", password: passwords.runtime, name: "cluster-probe" });
  const jsm = await jetstreamManager(probe, { checkAPI: false });
  await until("a JetStream meta leader", () => jsm.getAccountInfo().then(() => true, () => false), 30_000);
  await probe.close();

  return {
    url,
    dir,
    passwords,
    nodes,
    connect,
    async stop() {
      await Promise.allSettled(conns.map((c) => c.close()));
      await Promise.all(nodes.map((n) => n.stop()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The streams behind every bucket, the event stream and the stream log of `prefix`. */
export function stateStreams(prefix: string): string[] {
  const names = buckets(prefix);
  return [...[names.state, names.gateways, names.catalog, names.sessions].map((b) => `KV_${b}`), eventStream(prefix).name, streamLog(prefix).name];
}

/** The node that leads the most of `prefix`'s streams (stream info `cluster.leader`). */
export async function busiestLeader(nc: NatsConnection, prefix: string): Promise<string> {
  const jsm = await jetstreamManager(nc);
  const led = new Map<string, number>();
  for (const s of stateStreams(prefix)) {
    const leader = (await jsm.streams.info(s)).cluster?.leader;
    if (leader) led.set(leader, (led.get(leader) ?? 0) + 1);
  }
  return [...led.entries()].sort((a, b) => b[1] - a[1])[0]![0];
}

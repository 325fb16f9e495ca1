// Classifier leadership across worker processes: how long the cluster goes without a
// classifier when its leader is killed (SIGKILL: the lease must stand still for a TTL before
// anyone takes it) or shut down (SIGTERM: the lease is released and taken at once).
// Run: node --import tsx bench/leader.bench.ts
import { performance } from "node:perf_hooks";
import { Kvm } from "@nats-io/kv";
import { LeaderLeaseSchema, type Classification } from "../protocol/classification.ts";
import { KEYS, buckets, subjects } from "../protocol/subjects.ts";
import { openStores } from "../runtime/nats.ts";
import { startNats, type TestNats } from "../test/helpers/nats.ts";
import { runTs, workerEnv, type Proc } from "../test/helpers/processes.ts";
import { until } from "../test/helpers/wait.ts";
import { recordKeyWrites, TEST_SECRET_KEY, type KeyWrite } from "../test/helpers/worker.ts";
import { ms, msRow, report } from "./report.ts";

const TTL_MS = 3000;
const SHUTDOWN_MS = 5000;
const CLASSIFICATION_MS = 1000;
const REPS = 8;
/** hang bound of every wait */
const WAIT_MS = 30_000;

type Seen = KeyWrite;

let seen: Seen[] = [];
const children = new Map<string, Proc>();
let nats: TestNats | undefined;
let nextId = 1;

const leases = () => seen.filter((e) => e.key === KEYS.leaderClassifier);
const holderOf = (e: Seen | undefined) => (e?.op === "PUT" ? LeaderLeaseSchema.parse(e.value).holder : null);
const classificationWrites = () => seen.filter((e) => e.key === KEYS.classification && e.op === "PUT");
/** a classification the holder computed (not a follower's fence bump, which rewrites the previous value unchanged) */
const computedBy = (holder: string, after: number) => {
  const writes = classificationWrites();
  return writes.find(
    (e, i) => e.revision > after && (e.value as Classification).leader === holder && JSON.stringify(e.value) !== JSON.stringify(writes[i - 1]?.value),
  );
};

async function startWorker(): Promise<string> {
  const id = `w${nextId++}`;
  const env = workerEnv(nats!, TEST_SECRET_KEY, {
    MCPGW_WORKER_ID: id,
    MCPGW_LEADER_TTL: `${TTL_MS}ms`,
    MCPGW_SHUTDOWN_TIMEOUT: `${SHUTDOWN_MS}ms`,
    MCPGW_CLASSIFICATION_INTERVAL: `${CLASSIFICATION_MS}ms`,
    MCPGW_USAGE_REPORT_INTERVAL: "500ms",
    MCPGW_HEALTH_INTERVAL: "60s",
    MCPGW_LOG_LEVEL: "info",
  });
  const proc = runTs("runtime/main.ts", [], env);
  children.set(id, proc);
  await proc.waitFor(/"msg":"worker started/, WAIT_MS);
  return id;
}

/** the current holder: the latest lease write, when it is a live lease */
const currentHolder = () => until("a classifier leader", () => holderOf(leases().at(-1)), WAIT_MS);

async function main() {
  nats = await startNats();
  const nc = await nats.connect("runtime");
  await openStores(nc, subjects().prefix);
  const state = await new Kvm(nc).open(buckets().state);
  const recorder = await recordKeyWrites(state, [KEYS.leaderClassifier, KEYS.classification]);
  seen = recorder.writes;

  await Promise.all([startWorker(), startWorker(), startWorker()]);
  const firstHolder = await currentHolder();
  await until("the first classification", () => computedBy(firstHolder, 0), WAIT_MS);

  // SIGKILL: nothing is released; a follower takes over once the lease stood still for a TTL
  const kill = { lease: [] as number[], classified: [] as number[], standstill: [] as number[] };
  for (let i = 0; i < REPS; i++) {
    const leader = await currentHolder();
    const lastRenewal = leases().at(-1)!;
    const t0 = performance.now();
    children.get(leader)!.child.kill("SIGKILL");
    await children.get(leader)!.exited;
    children.delete(leader);
    const taken = await until("a new leader", () => leases().find((e) => e.revision > lastRenewal.revision && ![null, leader].includes(holderOf(e))), WAIT_MS);
    // the killed leader's last renewal as this process saw it: where the successor's standstill began
    const renewedLast = leases().filter((e) => e.revision < taken.revision).at(-1)!;
    const classified = await until("the new leader's classification", () => computedBy(holderOf(taken)!, taken.revision), WAIT_MS);
    kill.lease.push(taken.at - t0);
    kill.classified.push(classified.at - t0);
    kill.standstill.push(taken.at - renewedLast.at);
    await startWorker();
  }

  // SIGTERM: the leader releases the lease while it shuts down; a follower claims it at once
  const term = { released: [] as number[], lease: [] as number[], classified: [] as number[], exited: [] as number[], clean: 0 };
  for (let i = 0; i < REPS; i++) {
    const leader = await currentHolder();
    const held = leases().at(-1)!;
    const proc = children.get(leader)!;
    const t0 = performance.now();
    proc.child.kill("SIGTERM");
    const exited = proc.exited.then((r) => ({ ...r, at: performance.now() }));
    const released = await until("the lease released", () => leases().find((e) => e.revision > held.revision && e.op !== "PUT"), WAIT_MS);
    const taken = await until("a new leader", () => leases().find((e) => e.revision > released.revision && ![null, leader].includes(holderOf(e))), WAIT_MS);
    const classified = await until("the new leader's classification", () => computedBy(holderOf(taken)!, taken.revision), WAIT_MS);
    const exit = await exited;
    children.delete(leader);
    term.released.push(released.at - t0);
    term.lease.push(taken.at - t0);
    term.classified.push(classified.at - t0);
    term.exited.push(exit.at - t0);
    if (exit.code === 0) term.clean++;
    await startWorker();
  }
  recorder.stop();
  report(
    "Classifier leader: SIGKILL",
    `3 worker processes (tsx runtime/main.ts) on a local nats-server, leader TTL ${ms(TTL_MS)}, classification every ${ms(CLASSIFICATION_MS)}; ` +
      `the leader is killed ${REPS} times (a replacement worker started after each). Times from the kill, as seen by a KV watch.`,
    [
      msRow("kill → lease taken by a follower", kill.lease, TTL_MS, "TTL"),
      msRow("kill → new leader's first classification", kill.classified, TTL_MS, "TTL"),
      msRow("last renewal seen → lease taken (standstill)", kill.standstill, TTL_MS, "TTL"),
    ],
  );
  report(
    "Classifier leader: SIGTERM",
    `Same cluster, shutdown timeout ${ms(SHUTDOWN_MS)}; the leader is sent SIGTERM ${REPS} times (a replacement worker started after each).`,
    [
      msRow("SIGTERM → lease released (delete)", term.released, TTL_MS, "TTL"),
      msRow("SIGTERM → lease taken by a follower", term.lease, TTL_MS, "TTL"),
      msRow("SIGTERM → new leader's first classification", term.classified, TTL_MS, "TTL"),
      msRow("SIGTERM → leader process exited", term.exited, SHUTDOWN_MS, "shutdownTimeout"),
      ["leader exits with code 0", `${term.clean} of ${REPS}`],
    ],
  );
}

try {
  await main();
} finally {
  for (const p of children.values()) {
    p.child.kill("SIGCONT");
    p.child.kill("SIGKILL");
  }
  await Promise.all([...children.values()].map((p) => p.exited));
  await nats?.stop();
}
process.exit(0);

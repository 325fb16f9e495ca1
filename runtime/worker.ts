import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { Registry } from "../actors/registry.ts";
import { subjects } from "../protocol/subjects.ts";
import type { Config } from "./config.ts";
import { publishEvent } from "./events.ts";
import type { Logger } from "./logger.ts";
import { openStores, type Stores } from "./nats.ts";
import { serveRegistry } from "./registryService.ts";
import { SecretBox } from "./secretBox.ts";

export type Worker = {
  id: string;
  stores: Stores;
  registry: Registry;
  stop(): Promise<void>;
};

/** Composition root of one worker: opens state, hosts every actor kind on its subjects. */
export async function startWorker(config: Config, nc: NatsConnection, log: Logger): Promise<Worker> {
  if (!config.secretKey) throw new Error("MCPGW_SECRET_KEY is required");
  const s = subjects(config.prefix);
  const stores = await openStores(nc, config.prefix);
  const box = new SecretBox(config.secretKey);
  const registry = new Registry({
    gateways: stores.gateways,
    catalog: stores.catalog,
    state: stores.state,
    subjects: s,
    publish: (subject, event) => publishEvent(stores.js, subject, event),
    seal: (plain, gid) => box.seal(plain, gid),
    open: (sealed, gid) => box.open(sealed, gid),
  });
  const subs: Subscription[] = [...serveRegistry(nc, registry, s, log)];
  await nc.flush();
  log.info({ worker: config.workerId, prefix: config.prefix }, "worker started");
  return {
    id: config.workerId,
    stores,
    registry,
    async stop() {
      for (const sub of subs) sub.unsubscribe();
      await nc.flush().catch(() => {});
      log.info({ worker: config.workerId }, "worker stopped");
    },
  };
}

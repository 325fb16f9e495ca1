import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Registry } from "../actors/registry.ts";
import { QUEUE, type Subjects } from "../protocol/subjects.ts";
import { serve } from "./bus.ts";
import type { Logger } from "./logger.ts";

/** Hosts the registry on the admin gateway subjects, one queue group for all workers. */
export function serveRegistry(nc: NatsConnection, registry: Registry, s: Subjects, log: Logger): Subscription[] {
  const opts = { queue: QUEUE.registry, log };
  return [
    serve(nc, s.admin.gateway("add"), (p) => registry.add(p), opts),
    serve(nc, s.admin.gateway("update"), (p) => registry.update(p), opts),
    serve(nc, s.admin.gateway("remove"), (p) => registry.remove(p), opts),
    serve(nc, s.admin.gateway("get"), (p) => registry.get(p), opts),
    serve(nc, s.admin.gateway("list"), (p) => registry.list(p), opts),
  ];
}

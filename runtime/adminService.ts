import type { NatsConnection } from "@nats-io/transport-node";
import { Svcm, type NamedEndpointStats, type ServiceMsg } from "@nats-io/services";
import { QUEUE, type Subjects } from "../protocol/subjects.ts";
import pkg from "../package.json" with { type: "json" };
import { answerRequest, type Guard } from "./bus.ts";

export type AdminHandler = (payload: unknown) => Promise<unknown> | unknown;

/** One worker's `mcpgw-admin` micro service: `nats micro ls/info/stats` list it with every admin endpoint. */
export type AdminService = {
  /** Serves `subject` as an endpoint; `queue` makes each request answered by one worker. */
  endpoint(subject: string, handler: AdminHandler, queue?: string): void;
  stop(): Promise<void>;
};

type Figures = { requests: number; errors: number; lastError: string; nanos: number };

/**
 * Starts the admin service of one worker (one instance per worker, all with the same name).
 * Requests go through `answerRequest`, the path `serve` takes, so replies are the same
 * envelopes on the same subjects, and whatever that path checks applies here too.
 */
export async function startAdminService(nc: NatsConnection, s: Subjects, workerId: string, guard: Guard): Promise<AdminService> {
  const { log } = guard;
  const service = await new Svcm(nc).add({
    name: s.admin.service,
    version: pkg.version,
    description: "mcpgw administration: gateways, upstream sessions, status, classification",
    metadata: { worker: workerId },
    queue: QUEUE.admin,
  });

  // The library times a handler's synchronous part only and counts an error only when it
  // throws; our handlers are asynchronous and answer failures with an error envelope. So
  // each endpoint's figures are measured here, from arrival to reply, and STATS reports them.
  const figures = new Map<string, Figures>();
  const libraryStats = service.stats.bind(service);
  service.stats = async () => {
    const stats = await libraryStats();
    stats.endpoints = stats.endpoints?.map((e): NamedEndpointStats => {
      const f = figures.get(e.name);
      if (!f) return e;
      return {
        ...e,
        num_requests: f.requests,
        num_errors: f.errors,
        last_error: f.lastError,
        processing_time: f.nanos,
        average_processing_time: f.requests ? Math.round(f.nanos / f.requests) : 0,
      };
    });
    return stats;
  };

  return {
    endpoint(subject, handler, queue = QUEUE.admin) {
      const name = s.admin.endpointName(subject);
      const f: Figures = { requests: 0, errors: 0, lastError: "", nanos: 0 };
      figures.set(name, f);
      service.addEndpoint(name, {
        subject,
        queue,
        handler: (err: Error | null, msg: ServiceMsg) => {
          if (err) return void log.error({ err, subject }, "admin endpoint failed");
          const start = process.hrtime.bigint();
          void answerRequest(msg, handler, guard).then((reply) => {
            if (!reply) return; // refused: no request, so not one of the endpoint's figures
            f.requests++;
            f.nanos += Number(process.hrtime.bigint() - start);
            if (!reply.ok) {
              f.errors++;
              f.lastError = `${reply.error.code}: ${reply.error.message}`;
            }
          });
        },
      });
    },
    async stop() {
      await service.stop();
    },
  };
}

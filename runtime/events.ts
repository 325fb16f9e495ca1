import type { NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, type ConsumerMessages, type JetStreamClient } from "@nats-io/jetstream";
import { encodeJson } from "./bus.ts";
import type { Logger } from "./logger.ts";

/** Publishes a durable event (kept by the event stream) and waits for the stream's ack. */
export async function publishEvent(js: JetStreamClient, subject: string, event: unknown): Promise<void> {
  await js.publish(subject, encodeJson(event));
}

export type EventHandler = (subject: string, payload: unknown) => Promise<void> | void;

/**
 * Follows the event stream from now on with an ordered consumer: after a disconnect it
 * resumes where it left off, so a worker that was briefly away still sees every event.
 * nats-server 2.9 has no multi-subject filters, so each filter gets its own consumer
 * (events of one filter stay in order; across filters there is no order).
 */
export async function followEvents(
  js: JetStreamClient,
  stream: string,
  filter: string[],
  handler: EventHandler,
  log: Logger,
): Promise<{ stop(): Promise<void> }> {
  const followers = await Promise.all(filter.map((f) => followOne(js, stream, f, handler, log)));
  return {
    async stop() {
      await Promise.all(followers.map((m) => m.close().catch(() => {})));
    },
  };
}

async function followOne(js: JetStreamClient, stream: string, filter: string, handler: EventHandler, log: Logger): Promise<ConsumerMessages> {
  const consumer = await js.consumers.get(stream, { filter_subjects: filter, deliver_policy: DeliverPolicy.New });
  return consumer.consume({
    callback: (m) => {
      let payload: unknown;
      try {
        payload = m.json();
      } catch {
        log.warn({ subject: m.subject }, "ignoring an event that is not JSON");
        return;
      }
      Promise.resolve()
        .then(() => handler(m.subject, payload))
        .catch((err) => log.error({ err, subject: m.subject }, "event handler failed"));
    },
  });
}

/** Core-NATS publish for high-volume, loss-tolerant events (usage). */
export function publishCore(nc: NatsConnection, subject: string, event: unknown): void {
  nc.publish(subject, encodeJson(event));
}

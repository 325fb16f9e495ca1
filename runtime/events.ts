import { randomUUID } from "node:crypto";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, PubHeaders, type ConsumerMessages, type JetStreamClient } from "@nats-io/jetstream";
import { encodeJson, type Guard } from "./bus.ts";

/**
 * Publishes a durable event (kept by the event stream) and waits for the stream's ack.
 * Its id (`Nats-Msg-Id`) is what marks it as the runtime's: the event stream's duplicate
 * window spans its whole retention (runtime/nats.ts), so no copy of a stored event is
 * ever stored again, and nothing but the runtime publishes a message that carries one.
 */
export async function publishEvent(js: StreamPublisher, subject: string, event: unknown, msgID = randomUUID()): Promise<void> {
  await js.publish(subject, encodeJson(event), { msgID });
}

/** What publishes into a stream and waits for its acknowledgement: the JetStream client, or jetstreamAcks.ts's publisher. */
export type StreamPublisher = { publish(subject: string, data: Uint8Array, opts: { msgID: string }): Promise<unknown> };

/**
 * True when the runtime published `m`. nats-server delivers (and the stream stores) whatever
 * is sent into an event subject: a JetStream API answer or a direct get with that subject as
 * its reply subject, or a pull request's status. Those carry no event id; a consumer's copy
 * of a real event keeps its id and the stream drops it as a duplicate.
 */
export function isRuntimeEvent(m: { headers?: MsgHdrs }): boolean {
  return Boolean(m.headers?.get(PubHeaders.MsgIdHdr));
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
  guard: Guard,
): Promise<{ stop(): Promise<void> }> {
  const followers = await Promise.all(filter.map((f) => followOne(js, stream, f, handler, guard)));
  return {
    async stop() {
      await Promise.all(followers.map((m) => m.close().catch(() => {})));
    },
  };
}

async function followOne(js: JetStreamClient, stream: string, filter: string, handler: EventHandler, guard: Guard): Promise<ConsumerMessages> {
  const { log, refusals } = guard;
  const consumer = await js.consumers.get(stream, { filter_subjects: filter, deliver_policy: DeliverPolicy.New });
  return consumer.consume({
    callback: (m) => {
      if (!isRuntimeEvent(m)) return refusals.refuse("not_a_runtime_event", m.subject, log);
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
  // a timer's report after the connection closed for good would throw out of the timer
  if (nc.isClosed()) return;
  nc.publish(subject, encodeJson(event));
}

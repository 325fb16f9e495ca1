import { DeliverPolicy, type ConsumerMessages, type JetStreamClient } from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import { PRIMING_UID, StreamEventSchema, streamEventKind, streamEventMsgId, type StreamEvent } from "../protocol/upstream.ts";
import type { Subjects } from "../protocol/subjects.ts";
import { decodeJson, encodeJson, type Guard } from "./bus.ts";

/**
 * Publishes one event of a client stream, the one way every publisher does (the upstream
 * session actors, the edge's change notices, a caller's copy of an answer it could not deliver): core NATS, no acknowledgement (the stream log
 * stores it on its way; a test that needs it stored waits for the store). Its `Nats-Msg-Id`
 * names the stream and the uid, which the log's replay requires (`storedStreamEvent`).
 * Messages go where the edges holding the stream listen; a call's final answer only to the log.
 * False, and nothing sent, when the event is over the server's max_payload.
 */
export function publishStreamEvent(nc: NatsConnection, s: Subjects, sid: string, streamId: string, event: StreamEvent): boolean {
  const data = encodeJson(event);
  if (data.length > (nc.info?.max_payload ?? 1024 * 1024)) return false;
  const headers = natsHeaders();
  headers.set("Nats-Msg-Id", streamEventMsgId(sid, streamId, event.uid));
  nc.publish(s.stream.event(sid, streamId, streamEventKind(event)), data, { headers });
  return true;
}

/**
 * A stored message is a stream event the runtime published on that very stream: its
 * `Nats-Msg-Id` names the stream and the event's uid. A consumer's copy of another stream's
 * event keeps its own id (and the log drops it as a duplicate); a JetStream API answer has none.
 */
export function storedStreamEvent(sid: string, streamId: string, m: { headers?: MsgHdrs; data: Uint8Array }): StreamEvent | null {
  let payload: unknown;
  try {
    payload = decodeJson(m.data);
  } catch {
    return null;
  }
  const r = StreamEventSchema.safeParse(payload);
  if (!r.success) return null;
  return m.headers?.get("Nats-Msg-Id") === streamEventMsgId(sid, streamId, r.data.uid) ? r.data : null;
}

/**
 * Replays the stored events of one stream that came after `afterUid`, then follows the live
 * ones, in order (an ordered consumer on the stream log). An id the log no longer holds
 * (expired, or the priming event's) replays everything it holds of the stream.
 */
export async function resumeStream(
  js: JetStreamClient,
  streamLogName: string,
  s: Subjects,
  at: { sid: string; streamId: string; afterUid: string },
  onEvent: (e: StreamEvent) => void,
  guard: Guard,
): Promise<{ stop(): void }> {
  const consumer = await js.consumers.get(streamLogName, { filter_subjects: s.stream.ofStream(at.sid, at.streamId), deliver_policy: DeliverPolicy.All });
  let found = at.afterUid === PRIMING_UID;
  let held: StreamEvent[] = [];
  const messages: ConsumerMessages = await consumer.consume({
    callback: (m) => {
      const event = storedStreamEvent(at.sid, at.streamId, m);
      if (!event) guard.refusals.refuse("not_a_runtime_event", m.subject, guard.log);
      else if (found) onEvent(event);
      else if (event.uid === at.afterUid) {
        found = true;
        held = [];
      } else held.push(event);
      if (!found && m.info.pending === 0) {
        // caught up without meeting the id: everything held is what the client missed
        found = true;
        for (const e of held.splice(0)) onEvent(e);
      }
    },
  });
  return { stop: () => void messages.close().catch(() => {}) };
}

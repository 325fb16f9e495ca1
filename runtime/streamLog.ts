import { DeliverPolicy, type ConsumerMessages, type JetStreamClient } from "@nats-io/jetstream";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import { PRIMING_UID, StreamEventSchema, streamEventMsgId, type StreamEvent } from "../protocol/upstream.ts";
import type { Subjects } from "../protocol/subjects.ts";
import { decodeJson, encodeJson, type Guard } from "./bus.ts";

/**
 * Publishes one event of a client stream: the edge holding the stream writes it to the client,
 * and the stream log keeps it for a client that resumes the stream at any worker.
 */
export async function publishStreamEvent(js: JetStreamClient, s: Subjects, sid: string, streamId: string, event: StreamEvent): Promise<void> {
  await js.publish(s.stream.event(sid, streamId), encodeJson(event), { msgID: streamEventMsgId(sid, streamId, event.uid) });
}

/** The headers of a stream event published on core NATS: its `Nats-Msg-Id` marks it as the runtime's. */
export function streamEventHeaders(sid: string, streamId: string, uid: string): MsgHdrs {
  const h = natsHeaders();
  h.set("Nats-Msg-Id", streamEventMsgId(sid, streamId, uid));
  return h;
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
  const consumer = await js.consumers.get(streamLogName, { filter_subjects: s.stream.event(at.sid, at.streamId), deliver_policy: DeliverPolicy.All });
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

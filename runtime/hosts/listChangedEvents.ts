// The gateway-wide `list_changed` event an upstream's change notice causes (discovery then
// runs for everyone): the first notice of a gateway list is published at once, any more within
// the window become one event at its end (a change right after the first is not lost).
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Subjects } from "../../protocol/subjects.ts";
import { publishEvent } from "../events.ts";
import type { Logger } from "../logger.ts";

const COALESCE_MS = 1_000;

type List = "tools" | "prompts" | "resources";

export function listChangedEvents(js: JetStreamClient, s: Subjects, log: Logger, windowMs = COALESCE_MS) {
  /** open windows per `<gid>.<list>`; `again` when a notice came during the window */
  const windows = new Map<string, { timer: NodeJS.Timeout; again: boolean; publish: () => void }>();

  function notice(gid: string, list: List): void {
    const key = `${gid}.${list}`;
    const open = windows.get(key);
    if (open) return void (open.again = true);
    const publish = () => {
      const event = { type: "list_changed", gid, at: new Date().toISOString(), lists: [list] };
      publishEvent(js, s.evt.gateway(gid, "list_changed"), event).catch((err) => log.warn({ err, gid }, "cannot publish list_changed"));
    };
    const openWindow = () => {
      const w = {
        again: false,
        publish,
        timer: setTimeout(() => {
          windows.delete(key);
          if (!w.again) return;
          publish();
          openWindow();
        }, windowMs),
      };
      windows.set(key, w);
    };
    publish();
    openWindow();
  }

  /** at shutdown: what a window still holds is published now */
  function flush(): void {
    for (const w of windows.values()) {
      clearTimeout(w.timer);
      if (w.again) w.publish();
    }
    windows.clear();
  }

  return { notice, flush };
}

// Fidelity: resource subscriptions on every path of the matrix (test/helpers/fidelity.ts).
// server-everything's toggle-subscriber-updates sends notifications/resources/updated for each
// subscribed URI at once and then every 5 s, in subscription order.
import assert from "node:assert/strict";
import { it } from "node:test";
import type { ServerNotification } from "@modelcontextprotocol/sdk/types.js";
import { PATH_NAMES, fidelitySuite } from "../helpers/fidelity.ts";

const updated = (uri: string) => (n: ServerNotification) => n.method === "notifications/resources/updated" && (n.params as { uri?: string }).uri === uri;

fidelitySuite("relay: resources/subscribe", { timeout: 600_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`resources/subscribe: updates arrive, resources/unsubscribe stops them (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect();
      const first = "demo://resource/dynamic/text/31";
      const second = "demo://resource/dynamic/text/32";
      const toggle = () => conn.client.callTool({ name: path.tool("toggle-subscriber-updates"), arguments: {} });
      try {
        assert.deepEqual(await conn.client.subscribeResource({ uri: first }), {});
        const from = conn.notifications.length;
        await toggle(); // updates start
        await conn.waitForNotification(`notifications/resources/updated for ${first}`, updated(first), from);

        await conn.client.unsubscribeResource({ uri: first });
        const mark = conn.notifications.length;
        await conn.client.subscribeResource({ uri: second });
        // the next round of updates: it names every URI still subscribed, the first before the second
        await conn.waitForNotification(`notifications/resources/updated for ${second}`, updated(second), mark);
        assert.equal(conn.notifications.slice(mark).filter(updated(first)).length, 0, `an update of ${first} arrived after its unsubscribe`);
        await toggle(); // updates stop
      } finally {
        await conn.close();
      }
    });
  }
});

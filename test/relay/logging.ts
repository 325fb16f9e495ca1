// Fidelity: logging/setLevel on every path of the matrix (test/helpers/fidelity.ts). The level is
// the client session's: set before the upstream session exists, it applies when that session
// opens; set again, it reaches the open one. server-everything logs each resources/subscribe
// at level info, which is what the cases watch.
import assert from "node:assert/strict";
import { it } from "node:test";
import type { ServerNotification } from "@modelcontextprotocol/sdk/types.js";
import { PATH_NAMES, fidelitySuite } from "../helpers/fidelity.ts";

const logMentions = (uri: string) => (n: ServerNotification) => n.method === "notifications/message" && JSON.stringify(n.params).includes(uri);

fidelitySuite("relay: logging/setLevel", { timeout: 600_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`logging/setLevel filters the upstream's log messages (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect();
      const quiet = "demo://resource/dynamic/text/21";
      const heard = "demo://resource/dynamic/text/22";
      try {
        await conn.client.setLoggingLevel("error");
        const from = conn.notifications.length;
        await conn.client.subscribeResource({ uri: quiet }); // logged at info: filtered out
        await conn.client.setLoggingLevel("info");
        await conn.client.subscribeResource({ uri: heard }); // logged at info: delivered
        const log = await conn.waitForNotification(`the info log of subscribing ${heard}`, logMentions(heard), from);
        assert.equal((log.params as { level?: string }).level, "info");
        // the upstream sends its logs in order: had the first been let through, it would be here by now
        assert.equal(conn.notifications.slice(from).filter(logMentions(quiet)).length, 0, "an info log sent while the level was error reached the client");
        await conn.client.unsubscribeResource({ uri: heard });
      } finally {
        await conn.close();
      }
    });
  }
});

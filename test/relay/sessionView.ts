// Fidelity: a client sees its own session's view, on every path of the matrix
// (test/helpers/fidelity.ts): an upstream's list_changed on the client's session reaches it;
// what the upstream offers that session only (a resource a tool registered, a tool offered to a
// client with sampling) is listed and usable for it and not for another client; on the
// per-gateway endpoint an unknown tool is answered exactly as the upstream answers it.
import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { it } from "node:test";
import { HANG_MS, isListed, outcomeOf, PATH_NAMES, fidelitySuite, type Conn, type Outcome } from "../helpers/fidelity.ts";

const CONTENT = "hello from a per-session resource";

/** Whether `uri` is in the client's resource list: at once, or after a resources/list_changed it receives, within HANG_MS. */
async function resourceListed(conn: Conn, uri: string): Promise<boolean> {
  const end = Date.now() + HANG_MS;
  const notices = () => conn.notifications.filter((n) => n.method === "notifications/resources/list_changed").length;
  for (;;) {
    const seen = notices();
    if ((await conn.client.listResources()).resources.some((r) => r.uri === uri)) return true;
    while (notices() === seen) {
      if (Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const failed = (o: Outcome) => "error" in o || (o.result as { isError?: boolean }).isError === true;

fidelitySuite("relay: the client's own session view", { timeout: 600_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`a resource registered for this session: list_changed reaches the client, listed and readable for it, not for another client (${name})`, async () => {
      const path = fid.path(name);
      const owner = await path.connect({ name: "owner" });
      const other = await path.connect({ name: "other" });
      const file = `fidelity-${name.replace(/\W+/g, "-")}.gz`;
      const uri = `demo://resource/session/${file}`;
      try {
        const from = owner.notifications.length;
        const r = await owner.client.callTool({
          name: path.tool("gzip-file-as-resource"),
          arguments: { name: file, data: `data:text/plain;base64,${Buffer.from(CONTENT).toString("base64")}`, outputType: "resourceLink" },
        });
        assert.equal((r as { content: Array<{ type: string; uri?: string }> }).content[0]?.uri, uri, JSON.stringify(r).slice(0, 300));
        await owner.waitForNotification("notifications/resources/list_changed from the client's own upstream session", (n) => n.method === "notifications/resources/list_changed", from);

        assert.ok(await resourceListed(owner, uri), `${uri} is listed for the session that made it`);
        const read = await owner.client.readResource({ uri });
        const blob = (read.contents[0] as { blob?: string }).blob;
        assert.ok(blob, JSON.stringify(read).slice(0, 300));
        assert.equal(gunzipSync(Buffer.from(blob, "base64")).toString("utf8"), CONTENT);

        assert.ok(!(await other.client.listResources()).resources.some((x) => x.uri === uri), `${uri} is listed for another client`);
        assert.ok("error" in (await outcomeOf(other.client.readResource({ uri }))), `another client read ${uri}`);
      } finally {
        await owner.close();
        await other.close();
      }
    });

    it(`a tool offered to one session only: listed and callable for the client with sampling, not for a client without (${name})`, async () => {
      const path = fid.path(name);
      const tool = path.tool("trigger-sampling-request");
      const withSampling = await path.connect({
        name: "with-sampling",
        capabilities: { sampling: {} },
        sampling: async () => ({ model: "view-model", role: "assistant", content: { type: "text", text: "ok" } }),
      });
      const without = await path.connect({ name: "without-sampling" });
      try {
        assert.ok(await isListed(withSampling, tool), `${tool} is listed for the client with sampling`);
        const r = await withSampling.client.callTool({ name: tool, arguments: { prompt: "view" } });
        assert.match(JSON.stringify(r), /view-model/);
        assert.ok(!(await without.client.listTools()).tools.some((t) => t.name === tool), `${tool} is listed for a client without sampling`);
        assert.ok(failed(await outcomeOf(without.client.callTool({ name: tool, arguments: { prompt: "view" } }))), `a client without sampling called ${tool}`);
      } finally {
        await withSampling.close();
        await without.close();
      }
    });
  }

  for (const name of PATH_NAMES.filter((n) => n.includes("/gateways/"))) {
    it(`an unknown tool is answered exactly as the upstream answers it directly (${name})`, async () => {
      const path = fid.path(name);
      const direct = fid.path(path.upstream === "http" ? "direct http" : "direct stdio");
      const call = async (conn: Conn) => {
        try {
          return await outcomeOf(conn.client.callTool({ name: "no-such-tool", arguments: { x: 1 } }));
        } finally {
          await conn.close();
        }
      };
      const expected = await call(await direct.connect());
      assert.deepEqual(await call(await path.connect()), expected);
    });
  }
});

// Fidelity: roots on every path of the matrix (test/helpers/fidelity.ts): the upstream's
// roots/list is answered by the client, and the client's notifications/roots/list_changed
// reaches the upstream (server-everything asks for the roots again and shows the new list).
import assert from "node:assert/strict";
import { it } from "node:test";
import type { Root } from "@modelcontextprotocol/sdk/types.js";
import { HANG_MS, PATH_NAMES, fidelitySuite, textOf } from "../helpers/fidelity.ts";
import { until } from "../helpers/wait.ts";

fidelitySuite("relay: roots", { timeout: 600_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`roots/list is answered by the client, roots/list_changed reaches the upstream (${name})`, async () => {
      const path = fid.path(name);
      let roots: Root[] = [{ uri: "file:///fidelity/one", name: "one" }];
      let asked = 0;
      const conn = await path.connect({
        capabilities: { roots: { listChanged: true } },
        roots: () => {
          asked++;
          return roots;
        },
      });
      const listedRoots = async () => textOf(await conn.client.callTool({ name: path.tool("get-roots-list"), arguments: {} }));
      try {
        const first = await listedRoots();
        assert.match(first, /Current MCP Roots \(1 total\)/);
        assert.match(first, /file:\/\/\/fidelity\/one/);
        assert.ok(asked >= 1, "the upstream's roots/list reached the client");

        roots = [...roots, { uri: "file:///fidelity/two", name: "two" }];
        const before = asked;
        await conn.client.sendRootsListChanged();
        await until("the upstream asking for the roots again after roots/list_changed", () => asked > before, HANG_MS);
        // the upstream keeps what its request got: its list shows the second root once that answer is in
        const second = await until("the upstream's roots list with the new root", async () => {
          const t = await listedRoots();
          return /file:\/\/\/fidelity\/two/.test(t) && t;
        }, HANG_MS);
        assert.match(second, /Current MCP Roots \(2 total\)/);
      } finally {
        await conn.close();
      }
    });
  }
});

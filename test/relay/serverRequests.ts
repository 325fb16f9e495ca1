// Fidelity: server→client requests during a tool call (sampling, elicitation in form and URL
// modes), on every path of the matrix (test/helpers/fidelity.ts). One case per path: the tools
// the upstream offers only to a client that declared the capability are listed at all. The
// others call those tools without listing first: the request reaches the client's handler, the
// client's answer shapes the tool's result, and an error answer or an upstream's own error
// comes back as the upstream passes it on.
import assert from "node:assert/strict";
import { it } from "node:test";
import { McpError, type CreateMessageRequest, type ElicitRequest } from "@modelcontextprotocol/sdk/types.js";
import { isListed, outcomeOf, PATH_NAMES, fidelitySuite, textOf } from "../helpers/fidelity.ts";

const SAMPLING = { capabilities: { sampling: {} } };
const ELICITATION = { capabilities: { elicitation: { form: {}, url: {} } } };

fidelitySuite("relay: server→client requests", { timeout: 900_000 }, (fid) => {

  for (const name of PATH_NAMES) {
    it(`the tools offered to a client with sampling, elicitation and roots are listed (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect({
        capabilities: { sampling: {}, elicitation: { form: {}, url: {} }, roots: { listChanged: true } },
        sampling: async () => ({ model: "m", role: "assistant", content: { type: "text", text: "" } }),
        elicitation: async () => ({ action: "decline" }),
        roots: () => [],
      });
      try {
        for (const tool of ["trigger-sampling-request", "trigger-elicitation-request", "trigger-url-elicitation", "get-roots-list"]) {
          assert.ok(await isListed(conn, path.tool(tool)), `${path.tool(tool)} is listed`);
        }
      } finally {
        await conn.close();
      }
    });

    it(`sampling: the request reaches the client, its answer shapes the result (${name})`, async () => {
      const path = fid.path(name);
      const asked: CreateMessageRequest[] = [];
      const conn = await path.connect({
        ...SAMPLING,
        sampling: async (req) => {
          asked.push(req);
          return { model: "fidelity-model", role: "assistant", content: { type: "text", text: `sampled answer ${asked.length}` } };
        },
      });
      try {
        const r = await conn.client.callTool({ name: path.tool("trigger-sampling-request"), arguments: { prompt: "fidelity prompt 17", maxTokens: 7 } });
        assert.equal(asked.length, 1, "one sampling/createMessage reached the client's handler");
        assert.equal(asked[0]!.params.maxTokens, 7);
        assert.match(JSON.stringify(asked[0]!.params.messages), /fidelity prompt 17/);
        assert.notEqual((r as { isError?: boolean }).isError, true, textOf(r));
        assert.match(textOf(r), /fidelity-model/);
        assert.match(textOf(r), /sampled answer 1/);
      } finally {
        await conn.close();
      }
    });

    it(`sampling: the client's error answer reaches the upstream as it was sent (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect({
        ...SAMPLING,
        sampling: async () => {
          throw new McpError(4242, "declined by the fidelity client");
        },
      });
      try {
        const r = await conn.client.callTool({ name: path.tool("trigger-sampling-request"), arguments: { prompt: "refuse me" } });
        // server-everything turns a failed request into a tool error carrying the answer's code and message
        assert.equal((r as { isError?: boolean }).isError, true, textOf(r));
        assert.match(textOf(r), /4242/);
        assert.match(textOf(r), /declined by the fidelity client/);
      } finally {
        await conn.close();
      }
    });

    it(`elicitation, form mode: the client's content shapes the result (${name})`, async () => {
      const path = fid.path(name);
      const asked: ElicitRequest[] = [];
      const conn = await path.connect({
        ...ELICITATION,
        elicitation: async (req) => {
          asked.push(req);
          return { action: "accept", content: { name: "Ada Lovelace", check: true, integer: 7 } };
        },
      });
      try {
        const r = await conn.client.callTool({ name: path.tool("trigger-elicitation-request"), arguments: {} });
        assert.equal(asked.length, 1, "one elicitation/create reached the client's handler");
        const params = asked[0]!.params as { mode?: string; requestedSchema?: { properties?: Record<string, unknown> } };
        assert.notEqual(params.mode, "url");
        assert.ok(params.requestedSchema?.properties?.name, "the requested schema arrives whole");
        assert.match(textOf(r), /Name: Ada Lovelace/);
        assert.match(textOf(r), /Favorite Integer: 7/);
      } finally {
        await conn.close();
      }
    });

    it(`elicitation, URL mode: the request and the client's answer (${name})`, async () => {
      const path = fid.path(name);
      const asked: ElicitRequest[] = [];
      const conn = await path.connect({
        ...ELICITATION,
        elicitation: async (req) => {
          asked.push(req);
          return { action: "accept" };
        },
      });
      const elicitationId = `fid-${name.replace(/\W+/g, "-")}`;
      try {
        const r = await conn.client.callTool({ name: path.tool("trigger-url-elicitation"), arguments: { url: "https://example.com/fidelity-consent", elicitationId } });
        assert.equal(asked.length, 1, "one elicitation/create reached the client's handler");
        const params = asked[0]!.params as { mode?: string; url?: string; elicitationId?: string };
        assert.equal(params.mode, "url");
        assert.equal(params.url, "https://example.com/fidelity-consent");
        assert.equal(params.elicitationId, elicitationId);
        assert.match(textOf(r), /completed the URL elicitation/);
        assert.match(textOf(r), new RegExp(elicitationId));
      } finally {
        await conn.close();
      }
    });

    it(`elicitation, URL mode: the upstream's -32042 error reaches the client unchanged (${name})`, async () => {
      const path = fid.path(name);
      const conn = await path.connect({ ...ELICITATION, elicitation: async () => ({ action: "accept" }) });
      try {
        const o = await outcomeOf(
          conn.client.callTool({ name: path.tool("trigger-url-elicitation"), arguments: { url: "https://example.com/needs-consent", elicitationId: `err-${name.replace(/\W+/g, "-")}`, errorPath: true } }),
        );
        assert.ok("error" in o, `a JSON-RPC error, not ${JSON.stringify(o).slice(0, 300)}`);
        assert.equal(o.error.code, -32042);
        const elicitations = (o.error.data as { elicitations?: Array<{ mode?: string; url?: string }> } | undefined)?.elicitations;
        assert.equal(elicitations?.[0]?.mode, "url", JSON.stringify(o.error));
        assert.equal(elicitations?.[0]?.url, "https://modelcontextprotocol.io");
      } finally {
        await conn.close();
      }
    });
  }
});

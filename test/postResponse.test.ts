// A POST's response at the edge (runtime/edge/streamableHttp.ts): JSON in one write when the
// answer comes first; an SSE stream starting with its priming event when an event comes first,
// when its stream is started (the priming clock finds it still unanswered).
import assert from "node:assert/strict";
import { createServer, request, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { PostResponse, PrimingClock } from "../runtime/edge/streamableHttp.ts";
import { until } from "./helpers/wait.ts";

type Got = { status: number; type: string; length: string | undefined; body: string };

describe("PostResponse", () => {
  let server: Server;
  let respond: (res: ServerResponse) => void = () => {};
  const clock = new PrimingClock(50);

  before(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on("end", () => respond(res));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  });
  after(() => {
    clock.stop();
    server.close();
  });

  const post = (): Promise<Got> =>
    new Promise((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: (server.address() as AddressInfo).port, method: "POST", path: "/" }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode!, type: String(res.headers["content-type"]), length: res.headers["content-length"], body }));
      });
      req.on("error", reject);
      req.end("{}");
    });
  const answer = { jsonrpc: "2.0", id: 1, result: { ok: true } };

  it("answers as JSON, its length given, when the answer is the first thing to say (an array for a batch)", async () => {
    respond = (res) => new PostResponse(res, { "mcp-session-id": "s" }, "st.0", false, clock).end({ id: "st.a0", message: answer });
    const one = await post();
    assert.equal(one.status, 200);
    assert.match(one.type, /^application\/json/);
    assert.equal(Number(one.length), Buffer.byteLength(one.body));
    assert.deepEqual(JSON.parse(one.body), answer);
    respond = (res) => new PostResponse(res, {}, "st.0", true, clock).end({ id: "st.a0", message: answer });
    assert.deepEqual(JSON.parse((await post()).body), [answer]);
  });

  it("streams, priming event first, when an event comes before the answer or the stream is started", async () => {
    respond = (res) => {
      const p = new PostResponse(res, {}, "st.0", false, clock);
      p.write("st.u1", { jsonrpc: "2.0", method: "notifications/progress", params: { progressToken: 1, progress: 1 } });
      p.end({ id: "st.a0", message: answer });
    };
    const events = await post();
    assert.match(events.type, /^text\/event-stream/);
    assert.deepEqual(
      events.body.split("\n").filter((l) => l.startsWith("id: ")),
      ["id: st.0", "id: st.u1", "id: st.a0"],
    );
    respond = (res) => {
      const p = new PostResponse(res, {}, "st.0", false, clock);
      p.stream(); // as the priming clock does
      setTimeout(() => p.end({ id: "st.a0", message: answer }), 10);
    };
    const started = await post();
    assert.match(started.type, /^text\/event-stream/);
    assert.match(started.body, /^id: st\.0\ndata: \n\n/);
  });

  it("streams once the answer is slower than the priming delay; a stream ended without an answer still has its priming event", async () => {
    respond = (res) => {
      const p = new PostResponse(res, {}, "st.0", false, clock);
      // the answer comes once the clock has streamed it (a fixed wait is no bound: a loaded machine runs ticks late, together)
      until("the clock to stream it", () => res.headersSent, 20_000).then(
        () => p.end({ id: "st.a0", message: answer }),
        (err: Error) => res.destroy(err),
      );
    };
    const slow = await post();
    assert.match(slow.type, /^text\/event-stream/);
    assert.deepEqual(
      slow.body.split("\n").filter((l) => l.startsWith("id: ")),
      ["id: st.0", "id: st.a0"],
    );
    respond = (res) => new PostResponse(res, {}, "st.0", false, clock).end();
    const none = await post();
    assert.match(none.type, /^text\/event-stream/);
    assert.equal(none.body, "id: st.0\ndata: \n\n");
  });
});

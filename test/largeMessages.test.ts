// Requests and replies over max_payload, in parts, against a real nats-server (nats.conf: 1 MB).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { NatsConnection } from "@nats-io/transport-node";
import { ProtocolError } from "../protocol/envelope.ts";
import { decodeJson, isNoResponders, isTimeout } from "../runtime/bus.ts";
import { publishWhole, requestWhole, wholeRequests, type WholeRequest } from "../runtime/largeMessages.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";

const MB = 1024 * 1024;

describe("large messages on core NATS", () => {
  let nats: TestNats;
  let nc: NatsConnection;
  let responder: NatsConnection;

  before(async () => {
    nats = await startNats();
    nc = await nats.connect();
    responder = await nats.connect();
  });
  after(async () => {
    await nats?.stop();
  });

  /** a responder on `subject` that takes requests up to `limit` and answers with `answer(request)` */
  const serveWhole = async (subject: string, limit: number, answer: (req: WholeRequest) => Uint8Array | null) => {
    const seen: WholeRequest[] = [];
    const sub = responder.subscribe(subject, {
      callback: wholeRequests(responder, limit, (req) => {
        seen.push(req);
        const reply = answer(req);
        if (reply && req.reply) publishWhole(responder, req.reply, reply);
      }),
    });
    await responder.flush();
    return { seen, stop: () => sub.unsubscribe() };
  };

  it("carries a 3 MB request and a 5 MB reply intact through a 1 MB max_payload", async () => {
    assert.equal(nc.info?.max_payload, MB);
    const request = randomBytes(3 * MB);
    const reply = randomBytes(5 * MB);
    const s = await serveWhole("lm.echo", 16 * MB, (req) => (Buffer.from(req.data).equals(request) ? reply : new Uint8Array()));
    const got = await requestWhole(nc, "lm.echo", request, { timeoutMs: 30_000, limit: 16 * MB });
    assert.ok(Buffer.from(got).equals(reply));
    assert.equal(s.seen.length, 1);
    s.stop();
  });

  it("refuses a request announced over the responder's limit on its first part, without handing it on", async () => {
    const s = await serveWhole("lm.small", 2 * MB, () => new Uint8Array());
    const data = await requestWhole(nc, "lm.small", randomBytes(3 * MB), { timeoutMs: 30_000, limit: 16 * MB });
    const env = decodeJson(data) as { ok: boolean; error: { code: string; message: string } };
    assert.equal(env.ok, false);
    assert.equal(env.error.code, "too_large");
    assert.match(env.error.message, new RegExp(`request of ${3 * MB} bytes exceeds the limit of ${2 * MB} bytes`));
    assert.equal(s.seen.length, 0);
    s.stop();
  });

  it("refuses a reply over the requester's limit, and a request over it before sending", async () => {
    const s = await serveWhole("lm.big", 16 * MB, () => randomBytes(3 * MB));
    await assert.rejects(requestWhole(nc, "lm.big", new Uint8Array(), { timeoutMs: 30_000, limit: 2 * MB }), (err: unknown) => {
      assert.ok(err instanceof ProtocolError && err.code === "too_large", String(err));
      assert.match(err.message, new RegExp(`reply of ${3 * MB} bytes`));
      return true;
    });
    await assert.rejects(requestWhole(nc, "lm.big", randomBytes(3 * MB), { timeoutMs: 30_000, limit: 2 * MB }), (err: unknown) => err instanceof ProtocolError && err.code === "too_large");
    assert.equal(s.seen.length, 1, "only the request within the limit was sent");
    s.stop();
  });

  it("tells no responders and a timeout apart, as nc.request does", async () => {
    await assert.rejects(requestWhole(nc, "lm.nobody", randomBytes(3 * MB), { timeoutMs: 30_000, limit: 16 * MB }), (err: unknown) => isNoResponders(err));
    const s = await serveWhole("lm.silent", 16 * MB, () => null);
    await assert.rejects(requestWhole(nc, "lm.silent", randomBytes(10), { timeoutMs: 300, limit: 16 * MB }), (err: unknown) => isTimeout(err));
    s.stop();
  });
});

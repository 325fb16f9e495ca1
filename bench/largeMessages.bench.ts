// Round trips of a call's request and answer on core NATS with the default 1 MB max_payload:
// small ones (what every call pays for its own reply inbox, beside nc.request) and ones that
// travel in parts (1.1 MB, 15 MB).
import { randomBytes } from "node:crypto";
import { publishWhole, requestWhole, wholeRequests } from "../runtime/largeMessages.ts";
import { startNats } from "../test/helpers/nats.ts";
import { msRow, report } from "./report.ts";

const MB = 1024 * 1024;
const nats = await startNats();
try {
  const nc = await nats.connect();
  const responder = await nats.connect();
  const answers = new Map<number, Uint8Array>([1024, Math.floor(1.1 * MB), 15 * MB].map((n) => [n, randomBytes(n)]));
  // the request says which answer it wants: its first 4 bytes are the size
  responder.subscribe("bench.echo", {
    callback: wholeRequests(responder, 16 * MB, (req) => {
      const size = Buffer.from(req.data).readUInt32BE(0);
      if (req.reply) publishWhole(responder, req.reply, answers.get(size) ?? new Uint8Array());
    }),
  });
  responder.subscribe("bench.plain", { callback: (_err, msg) => void msg.respond(answers.get(1024)) });
  await responder.flush();

  const ask = (size: number) => {
    const req = Buffer.alloc(Math.max(4, size));
    req.writeUInt32BE(size, 0);
    return req;
  };
  const time = async (n: number, f: () => Promise<unknown>) => {
    const sample: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await f();
      sample.push(performance.now() - t0);
    }
    return sample;
  };
  const opts = { timeoutMs: 60_000, limit: 16 * MB + 64 * 1024 };
  const rows = [
    msRow("nc.request, 1 KB each way", await time(500, () => nc.request("bench.plain", ask(1024), { timeout: 10_000 }))),
    msRow("requestWhole, 1 KB each way", await time(500, () => requestWhole(nc, "bench.echo", ask(1024), opts))),
    msRow("requestWhole, 1.1 MB each way (2 parts)", await time(50, () => requestWhole(nc, "bench.echo", ask(Math.floor(1.1 * MB)), opts))),
    msRow("requestWhole, 15 MB each way (16 parts)", await time(10, () => requestWhole(nc, "bench.echo", ask(15 * MB), opts))),
  ];
  report("Large messages on core NATS", `nats-server with nats.conf (max_payload ${nc.info?.max_payload} bytes), one requester and one responder connection on loopback; sequential round trips.`, rows);
} finally {
  await nats.stop();
}

// The floor of the second worker's hop (issue 11): one NATS request-reply between two processes,
// nothing else. Answers every request on an upstream session actor's call address (one that no
// actor uses) with the request's own bytes, as an actor in another worker answers a call.
// Run by bench/callPath.bench.ts with a worker's environment (NATS_URL, NATS_USER, NATS_PASSWORD);
// prints "echo ready <subject>".
import { subjects } from "../protocol/subjects.ts";
import { connectNats } from "../runtime/nats.ts";

const subject = subjects("mcpgw").upstream.op("bench-echo", "bench-echo", "call");
const nc = await connectNats({ url: process.env.NATS_URL!, user: process.env.NATS_USER, password: process.env.NATS_PASSWORD, name: "bench-echo" });
nc.subscribe(subject, { callback: (_err, msg) => void msg.respond(msg.data) });
await nc.flush();
console.log(`echo ready ${subject}`);
process.on("SIGTERM", () => void nc.close().then(() => process.exit(0)));

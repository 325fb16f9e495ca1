// The floor of issue 11's targets: the least any gateway written in Node can add to a call. A
// reverse proxy of one HTTP hop and nothing else: node:http in, node:http out on a keep-alive
// agent, headers passed through, a request's body sent whole, an answer's streamed as it arrives (MCP's session id included, so the
// client's session is the upstream's own: no MCP, no NATS, no isolation of its own). The call
// path benchmark runs it as one more path, in its own process, beside direct and mcpgw.
// Run: node --import tsx bench/passThroughProxy.ts <upstream URL>; prints "proxy listening <url>".
import { Agent, createServer, request } from "node:http";
import type { AddressInfo } from "node:net";

const target = new URL(process.argv[2] ?? "");
const agent = new Agent({ keepAlive: true });

const server = createServer(async (req, res) => {
  // the request whole, then sent in one write (as mcpgw sends it); the answer streamed as it comes
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  const headers = { ...req.headers, host: target.host, "content-length": String(body.length) };
  delete headers["transfer-encoding"];
  const out = request({ host: target.hostname, port: target.port, path: target.pathname + target.search, method: req.method, headers, agent }, (up) => {
    res.writeHead(up.statusCode ?? 502, up.headers);
    up.pipe(res);
  });
  out.on("error", () => res.destroy());
  out.end(body);
});
server.listen(0, "127.0.0.1", () => {
  const { port } = server.address() as AddressInfo;
  console.log(`proxy listening http://127.0.0.1:${port}/mcp`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));

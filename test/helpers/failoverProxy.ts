import { createServer, request, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type FailoverProxy = {
  /** the proxy's MCP endpoint (same path as the edges') */
  url: string;
  /** the edge every request tries first from now on */
  prefer(edgeUrl: string): void;
  /** the edge each request went to, in order (`METHOD host status [last-event-id …]`) */
  routed: string[];
  close(): Promise<void>;
};

/**
 * A loopback HTTP proxy in front of several edges, as a load balancer is: each request goes to
 * the preferred edge, or to the next one that accepts a connection when it is gone. Responses
 * stream through unbuffered (SSE); a response cut by its edge is cut for the client too.
 */
export async function startFailoverProxy(edges: string[]): Promise<FailoverProxy> {
  const hosts = edges.map((e) => new URL(e));
  let preferred = 0;
  const routed: string[] = [];
  const forward = (req: IncomingMessage, res: ServerResponse, body: Buffer, attempt: number) => {
    const edge = hosts[(preferred + attempt) % hosts.length]!;
    const up = request({ host: edge.hostname, port: edge.port, method: req.method, path: req.url, headers: { ...req.headers, host: edge.host } }, (answer) => {
      routed.push(`${req.method} ${edge.host} ${answer.statusCode}${req.headers["last-event-id"] ? ` last-event-id ${req.headers["last-event-id"]}` : ""}`);
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      res.flushHeaders();
      answer.pipe(res);
      answer.on("aborted", () => res.destroy());
      answer.on("error", () => res.destroy());
    });
    up.on("error", (err: NodeJS.ErrnoException) => {
      if (!res.headersSent && err.code === "ECONNREFUSED" && attempt + 1 < hosts.length) return forward(req, res, body, attempt + 1);
      res.destroy();
    });
    res.on("close", () => up.destroy());
    up.end(body);
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => forward(req, res, Buffer.concat(chunks), 0));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}${hosts[0]!.pathname}`,
    prefer(edgeUrl) {
      preferred = hosts.findIndex((h) => h.host === new URL(edgeUrl).host);
      if (preferred < 0) throw new Error(`not an edge of this proxy: ${edgeUrl}`);
    },
    routed,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { join } from "node:path";
import type { Subscription } from "@nats-io/transport-node";
import { ADMIN_GATEWAY_OPS } from "../../../protocol/subjects.ts";
import { isNoResponders, isTimeout, listen } from "../../bus.ts";
import { isRuntimeEvent } from "../../events.ts";
import { PACKAGE_ROOT } from "../../packageRoot.ts";
import type { WorkerContext } from "../../worker.ts";
import { bearerToken, tokenMatches } from "../security.ts";

const STATIC_DIR = join(PACKAGE_ROOT, "runtime", "edge", "console", "static");
const ASSETS: Record<string, { file: string; type: string }> = {
  "/console": { file: "index.html", type: "text/html; charset=utf-8" },
  "/console/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/console/console.js": { file: "console.js", type: "text/javascript; charset=utf-8" },
  "/console/console.css": { file: "console.css", type: "text/css; charset=utf-8" },
};

/** No inline script or style, nothing from elsewhere, and no page may frame the console. */
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

const HTTP_STATUS: Record<string, number> = { invalid_request: 400, not_found: 404, conflict: 409, unavailable: 503, timeout: 504, internal: 500 };
const RECENT_EVENTS = 50;
const MAX_BODY = 1024 * 1024;

export type ConsoleRoutes = {
  /** Answers `/console…` paths; false for any other path. Host and Origin were checked by the edge. */
  handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean>;
  stop(): void;
};

/**
 * The web console: static pages, and a JSON API that forwards each call to an admin subject
 * (so the console can do nothing the CLI cannot), plus a stream of recent events. Calls
 * carry a console token (`MCPGW_CONSOLE_TOKENS`, never a client's edge token: administering
 * can run a command on a worker) as a bearer header, never a cookie, so another site cannot
 * ride on a logged-in browser (CSRF); mutating calls must also come from an allowed Origin.
 */
export function consoleRoutes(ctx: WorkerContext, tokens: Buffer[]): ConsoleRoutes {
  const { s, nc, config } = ctx;
  const log = ctx.log.child({ actor: "console" });
  const adminTimeoutMs = config.poller.timeout + 10_000;
  const subjectOf = new Map<string, string>([
    ...ADMIN_GATEWAY_OPS.map((op) => [`gateway.${op}`, s.admin.gateway(op)] as const),
    ["session.list", s.admin.sessionList],
    ["session.evict", s.admin.sessionEvict],
    ["status", s.admin.status],
    ["classification.get", s.admin.classificationGet],
  ]);
  const assets = new Map(Object.entries(ASSETS).map(([path, a]) => [path, { type: a.type, body: readFileSync(join(STATIC_DIR, a.file)) }]));

  // Recent gateway, catalog and session events (not usage reports), for the events pane.
  const recent: string[] = [];
  const streams = new Set<ServerResponse>();
  const subs: Subscription[] = [s.evt.gatewayAll, s.evt.catalogAll, s.evt.sessionAll].map((subject) =>
    listen(
      nc,
      subject,
      (msg) => {
        if (!isRuntimeEvent(msg)) return ctx.refusals.refuse("not_a_runtime_event", msg.subject, log);
        let event: unknown;
        try {
          event = msg.json();
        } catch {
          return;
        }
        const line = `data: ${JSON.stringify({ subject: msg.subject, event })}\n\n`;
        recent.push(line);
        if (recent.length > RECENT_EVENTS) recent.shift();
        for (const r of streams) r.write(line);
      },
      { log, refusals: ctx.refusals, expect: "message" },
    ),
  );

  /** An error envelope with its HTTP status; true, for "handled". */
  const refuse = (res: ServerResponse, status: number, code: string, message: string, extra: Record<string, string> = {}): true => {
    res.writeHead(status, { ...SECURITY_HEADERS, "content-type": "application/json", ...extra }).end(JSON.stringify({ ok: false, error: { code, message } }));
    return true;
  };

  const readBody = (req: IncomingMessage): Promise<Buffer | null> =>
    new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on("data", (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY) {
          req.removeAllListeners("data");
          resolve(null);
        } else chunks.push(c);
      });
      req.on("end", () => resolve(Buffer.concat(chunks)));
      req.on("error", reject);
    });

  const callAdmin = async (req: IncomingMessage, res: ServerResponse, subject: string): Promise<true> => {
    const body = await readBody(req);
    if (body === null) return refuse(res, 413, "invalid_request", `request body larger than ${MAX_BODY} bytes`, { connection: "close" });
    try {
      JSON.parse(body.length ? body.toString("utf8") : "{}");
    } catch {
      return refuse(res, 400, "invalid_request", "request body is not valid JSON");
    }
    try {
      const reply = await nc.request(subject, body, { timeout: adminTimeoutMs });
      // The envelope goes back as the worker sent it; the HTTP status follows its error code.
      const env = reply.json<{ ok: boolean; error?: { code: string } }>();
      res.writeHead(env.ok ? 200 : (HTTP_STATUS[env.error?.code ?? "internal"] ?? 500), { ...SECURITY_HEADERS, "content-type": "application/json" }).end(reply.data);
      return true;
    } catch (err) {
      if (isNoResponders(err)) return refuse(res, 503, "unavailable", "no mcpgw worker is answering");
      if (isTimeout(err)) return refuse(res, 504, "timeout", "no answer in time");
      log.error({ err, subject }, "console admin call failed");
      return refuse(res, 500, "internal", "internal error; see the worker's log");
    }
  };

  const events = (req: IncomingMessage, res: ServerResponse): true => {
    res.writeHead(200, { ...SECURITY_HEADERS, "content-type": "text/event-stream", connection: "keep-alive" });
    for (const line of recent) res.write(line);
    streams.add(res);
    req.on("close", () => streams.delete(res));
    return true;
  };

  return {
    async handle(req, res, path) {
      if (path !== "/console" && !path.startsWith("/console/")) return false;
      const asset = assets.get(path);
      if (asset) {
        if (req.method !== "GET" && req.method !== "HEAD") return refuse(res, 405, "invalid_request", "Method Not Allowed", { allow: "GET, HEAD" });
        res.writeHead(200, { ...SECURITY_HEADERS, "content-type": asset.type }).end(req.method === "HEAD" ? undefined : asset.body);
        return true;
      }
      const api = /^\/console\/api\/(.+)$/.exec(path)?.[1];
      if (api === undefined) return refuse(res, 404, "not_found", "no such console page");
      // Adding a stdio gateway runs a command on a worker: never without an admin credential.
      if (tokens.length === 0) return refuse(res, 403, "unavailable", "the console is off: set MCPGW_CONSOLE_TOKENS to use it");
      const token = bearerToken(req.headers.authorization);
      if (token === null || !tokenMatches(token, tokens)) {
        return refuse(res, 401, "invalid_request", "a valid console token is required", { "www-authenticate": 'Bearer realm="mcpgw console"' });
      }
      if (api === "events" && req.method === "GET") return events(req, res);
      const subject = subjectOf.get(api);
      if (!subject) return refuse(res, 404, "not_found", "no such console call");
      if (req.method !== "POST") return refuse(res, 405, "invalid_request", "Method Not Allowed", { allow: "POST" });
      // The edge refuses a foreign Origin; a console call must also name its Origin (a browser always does on POST).
      if (req.headers.origin === undefined) return refuse(res, 403, "invalid_request", "an Origin header is required");
      return callAdmin(req, res, subject);
    },
    stop() {
      subs.forEach((sub) => sub.unsubscribe());
      for (const r of streams) r.end();
      streams.clear();
    },
  };
}

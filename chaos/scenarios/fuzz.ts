// Fuzzed admin and edge input (fast-check): no input crashes a worker, every admin request is
// answered with an envelope, every edge request with a proper HTTP status (never 5xx), and a
// refused request changes nothing.
import fc from "fast-check";
import { AnyEnvelopeSchema } from "../../protocol/envelope.ts";
import { decodeJson, encodeJson } from "../../runtime/bus.ts";
import { startRawUpstream } from "../../test/fixtures/rawUpstream.ts";
import { Checks, failoverClient, s, type ScenarioResult, startSystem, textOf, waitForTools } from "../harness.ts";

const ADMIN_SUBJECTS = [
  s.admin.gateway("add"),
  s.admin.gateway("update"),
  s.admin.gateway("remove"),
  s.admin.gateway("get"),
  s.admin.gateway("list"),
  s.admin.gateway("refresh"),
  s.admin.sessionList,
  s.admin.sessionEvict,
  s.admin.classificationGet,
  s.admin.status,
];

const hostileUrl = fc.constantFrom(
  "http://169.254.169.254/latest/meta-data",
  "http://[::ffff:169.254.169.254]/",
  "http://2852039166/",
  "http://0xa9.0xfe.0xa9.0xfe/",
  "file:///etc/passwd",
  "javascript:alert(1)",
  "http://user:pass@127.0.0.1/",
);
const hostileKey = fc.constantFrom("__proto__", "constructor", "prototype", "", "a".repeat(300), "x\u0000y", "Authorization");
const hostileRecord = fc.dictionary(fc.oneof(hostileKey, fc.string()), fc.oneof(fc.string(), fc.jsonValue()), { maxKeys: 4 });

/** Specs near the valid ones, with one or more fields replaced by something hostile. */
const nearSpec = (names: string[]) =>
  fc.record(
    {
      name: fc.oneof(fc.constantFrom(...names), fc.string({ maxLength: 40 }), fc.constantFrom("UPPER", "a.b", "x*", "", "-")),
      transport: fc.oneof(fc.constantFrom("streamable-http", "sse", "stdio"), fc.string()),
      url: fc.oneof(hostileUrl, fc.webUrl(), fc.string()),
      auth: fc.oneof(
        fc.record({ type: fc.constantFrom("bearer", "basic", "headers", "query", "none", "x"), token: fc.string(), headers: hostileRecord, params: hostileRecord }, { requiredKeys: ["type"] }),
        fc.jsonValue(),
      ),
      headers: hostileRecord,
      stdio: fc.record({ command: fc.string(), args: fc.array(fc.string()), env: hostileRecord }, { requiredKeys: [] }),
      tags: fc.oneof(fc.array(fc.string()), fc.jsonValue()),
      enabled: fc.oneof(fc.boolean(), fc.jsonValue()),
      expectedRevision: fc.oneof(fc.integer(), fc.jsonValue()),
      patch: fc.oneof(hostileRecord, fc.jsonValue()),
      sid: fc.string(),
      gid: fc.string(),
    },
    { requiredKeys: [] },
  );

export async function fuzzAdmin(opts: { runs: number; seed?: number }): Promise<ScenarioResult> {
  const sys = await startSystem({ workers: 1 });
  const upstream = await startRawUpstream();
  const c = new Checks();
  try {
    const names = ["alpha", "beta", "gamma"];
    for (const name of names) await sys.addGateway({ name, transport: "streamable-http", url: upstream.url });
    const before = await sys.gatewaySnapshot();
    const admin = await sys.connect("admin");
    const touched = new Set<string>();
    let answered = 0;
    let refused = 0;
    let okReplies = 0;
    const bad: string[] = [];
    const payload = fc.oneof(
      { weight: 3, arbitrary: nearSpec(names).map((v) => encodeJson(v)) },
      { weight: 2, arbitrary: fc.jsonValue().map((v) => encodeJson(v)) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
      { weight: 1, arbitrary: fc.string().map((t) => new TextEncoder().encode(t)) },
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ADMIN_SUBJECTS), payload, async (subject, data) => {
        const reply = await admin.request(subject, data, { timeout: 20_000 });
        answered++;
        const env = AnyEnvelopeSchema.safeParse(decodeJson(reply.data));
        if (!env.success) {
          bad.push(`${subject}: ${new TextDecoder().decode(reply.data).slice(0, 100)}`);
          return;
        }
        if (!env.data.ok) {
          refused++;
          if (env.data.error.code === "internal") bad.push(`${subject}: internal: ${env.data.error.message}`);
          return;
        }
        okReplies++;
        const d = env.data.data as { id?: string; gid?: string } | undefined;
        if (d?.id) touched.add(d.id);
        if (d?.gid) touched.add(d.gid);
      }),
      { numRuns: opts.runs, seed: opts.seed },
    );
    c.check("every request answered with a reply envelope, none `internal`", bad.length === 0, bad.slice(0, 3).join(" | "));
    const after = await sys.gatewaySnapshot();
    const changed = [...before].filter(([id, json]) => !touched.has(id) && after.get(id) !== json).map(([id]) => id);
    c.check("gateways no accepted request named are unchanged", changed.length === 0, changed.join(","));
    const appeared = [...after.keys()].filter((id) => !before.has(id) && !touched.has(id));
    c.check("no gateway appeared without an accepted add", appeared.length === 0, appeared.join(","));
    c.check("the worker is still running", sys.workers[0]!.proc.child.exitCode === null && sys.workers[0]!.proc.child.signalCode === null);
    return {
      scenario: "fuzzed admin input",
      load: `${answered.toLocaleString("en-US")} requests over ${ADMIN_SUBJECTS.length} admin subjects (fast-check, hostile specs, random JSON and bytes)`,
      faults: "malformed JSON, wrong types, `__proto__` keys, metadata URLs, oversized names",
      failures: `${refused} refused with an error envelope, ${okReplies} accepted, ${bad.length} bad replies`,
      recovery: "none needed",
      intact: `${before.size} gateways byte-identical unless an accepted request named them`,
      ok: c.ok,
      checks: c.list,
    };
  } finally {
    await upstream.close();
    await sys.stop();
  }
}

const RPC_METHODS = ["initialize", "tools/list", "tools/call", "prompts/get", "resources/read", "resources/subscribe", "completion/complete", "logging/setLevel", "ping", "notifications/initialized", "notifications/cancelled", "sampling/createMessage", "x/unknown"];

export async function fuzzEdge(opts: { runs: number; seed?: number }): Promise<ScenarioResult> {
  const sys = await startSystem({ workers: 1 });
  const upstream = await startRawUpstream();
  const c = new Checks();
  try {
    await sys.addGateway({ name: "raw", transport: "streamable-http", url: upstream.url });
    const before = await sys.gatewaySnapshot();
    const edge = sys.workers[0]!.edgeUrl;
    const witness = await failoverClient(() => [edge], 0, "witness");
    const witnessSid = (witness.transport as { sessionId?: string } | undefined)?.sessionId ?? "";
    const echo = async () => textOf(await witness.callTool({ name: "raw__echo", arguments: { text: "still here" } }));
    await waitForTools(witness, ["raw__echo"]);
    c.check("the witness session works before", (await echo()) === "still here");
    const statuses = new Map<number, number>();
    const fiveHundreds: string[] = [];
    const rpc = fc.record(
      { jsonrpc: fc.oneof(fc.constant("2.0"), fc.jsonValue()), id: fc.oneof(fc.integer(), fc.string({ maxLength: 200 }), fc.constant(null), fc.jsonValue()), method: fc.oneof(fc.constantFrom(...RPC_METHODS), fc.string()), params: fc.jsonValue() },
      { requiredKeys: ["jsonrpc"] },
    );
    const body = fc.oneof(
      { weight: 4, arbitrary: rpc.map((m) => JSON.stringify(m)) },
      { weight: 1, arbitrary: fc.array(rpc, { maxLength: 3 }).map((m) => JSON.stringify(m)) },
      { weight: 1, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v)) },
      { weight: 1, arbitrary: fc.string() },
    );
    const req = fc.record({
      method: fc.constantFrom("POST", "POST", "POST", "GET", "DELETE", "PUT"),
      path: fc.constantFrom("/mcp", "/gateways/raw/mcp", "/gateways/nope/mcp", "/gateways/../mcp", "/mcp?x=1", "/%2e%2e/mcp"),
      sid: fc.oneof(fc.constant(witnessSid), fc.constant(undefined), fc.string({ maxLength: 100 })),
      contentType: fc.constantFrom("application/json", "text/plain", "application/json; charset=utf-8", ""),
      accept: fc.constantFrom("application/json, text/event-stream", "application/json", "*/*", ""),
      version: fc.constantFrom(undefined, "2025-06-18", "2025-11-25", "1999-01-01", "garbage"),
      body,
    });
    await fc.assert(
      fc.asyncProperty(req, async (r) => {
        // the witness is only ever read with: ending it (DELETE) is a legitimate request
        const sid = r.method === "DELETE" && r.sid === witnessSid ? undefined : r.sid;
        const headers: Record<string, string> = {};
        if (r.contentType) headers["content-type"] = r.contentType;
        if (r.accept) headers.accept = r.accept;
        if (sid !== undefined) headers["mcp-session-id"] = sid.replace(/[^\x21-\x7e]/g, "x");
        if (r.version) headers["mcp-protocol-version"] = r.version;
        const url = new URL(edge);
        let status = 0;
        try {
          const res = await fetch(`${url.origin}${r.path}`, { method: r.method, headers, body: r.method === "POST" || r.method === "PUT" ? r.body : undefined, signal: AbortSignal.timeout(5_000) });
          status = res.status;
          await res.body?.cancel().catch(() => {});
        } catch (err) {
          status = (err as Error).name === "TimeoutError" ? -1 : -2; // a stream held open (GET) / a refused connection
        }
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        if (status >= 500 || status === -2) fiveHundreds.push(`${r.method} ${r.path} → ${status}: ${r.body.slice(0, 80)}`);
      }),
      { numRuns: opts.runs, seed: opts.seed },
    );
    c.check("no request got a 5xx or a refused connection", fiveHundreds.length === 0, fiveHundreds.slice(0, 3).join(" | "));
    c.check("the worker is still running", sys.workers[0]!.proc.child.exitCode === null && sys.workers[0]!.proc.child.signalCode === null);
    c.check("the witness session still works", (await echo().catch((e: Error) => e.message)) === "still here");
    const after = await sys.gatewaySnapshot();
    c.check("gateways unchanged", [...before].every(([id, json]) => after.get(id) === json) && after.size === before.size);
    await witness.close();
    const dist = [...statuses].sort((a, b) => a[0] - b[0]).map(([k, v]) => `${k === -1 ? "held" : k}: ${v}`).join(", ");
    return {
      scenario: "fuzzed edge input",
      load: `${opts.runs.toLocaleString("en-US")} HTTP requests to /mcp and /gateways/<name>/mcp (fast-check JSON-RPC, batches, junk, wrong headers, another session's id)`,
      faults: "malformed bodies and headers, unknown methods, foreign session ids",
      failures: `statuses ${dist}`,
      recovery: "none needed",
      intact: "witness session answers; gateways unchanged",
      ok: c.ok,
      checks: c.list,
    };
  } finally {
    await upstream.close();
    await sys.stop();
  }
}

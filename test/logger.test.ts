import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { redactUrl } from "../runtime/logger.ts";
import { memoryLogger } from "./helpers/worker.ts";

describe("logs", () => {
  it("redact authorization headers, tokens, passwords, keys and stdio environments", () => {
    const { log, lines } = memoryLogger();
    log.info(
      {
        headers: { authorization: "Bearer h-1", "x-api-key": "h-2" },
        auth: { type: "bearer", token: "t-1" },
        basic: { password: "p-1" },
        tls: { key: "k-1" },
        stdio: { env: { API_KEY: "e-1" } },
        req: { headers: { authorization: "Bearer h-3" } },
      },
      "redaction",
    );
    assert.equal(lines.length, 1);
    for (const secret of ["h-1", "h-2", "h-3", "t-1", "p-1", "k-1", "e-1"]) assert.ok(!lines[0]!.includes(secret), secret);
    assert.match(lines[0]!, /\[redacted\]/);
  });

  it("hide query parameter values and credentials of URLs", () => {
    assert.equal(redactUrl("https://u:p@api.example.com/mcp?api_key=s3cret&x=1"), "https://***@api.example.com/mcp?api_key=***&x=***");
    assert.equal(redactUrl("not a url"), "(unparsable url)");
  });
});

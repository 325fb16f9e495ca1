import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { MASK, mapGatewaySecrets, GatewaySpecSchema } from "../protocol/gateway.ts";
import { SecretBox } from "../runtime/secretBox.ts";

describe("secrets at rest", () => {
  const box = new SecretBox(randomBytes(32).toString("hex"));

  it("seals with a fresh IV and opens only with the same key and context", () => {
    const a = box.seal("hunter2", "gid-1");
    const b = box.seal("hunter2", "gid-1");
    assert.notEqual(a, b);
    assert.ok(!a.includes("hunter2"));
    assert.equal(box.open(a, "gid-1"), "hunter2");
    assert.throws(() => box.open(a, "gid-2"), "bound to its gateway");
    assert.throws(() => new SecretBox(randomBytes(32).toString("hex")).open(a, "gid-1"), "other key");
    const tampered = a.replace(/:([A-Za-z0-9_-])([A-Za-z0-9_-]*):([A-Za-z0-9_-]+)$/, (_m, c: string, rest: string, tag: string) => `:${c === "A" ? "B" : "A"}${rest}:${tag}`);
    assert.throws(() => box.open(tampered, "gid-1"), "tampering detected");
    assert.throws(() => new SecretBox("short"));
  });

  it("finds every secret of a gateway", () => {
    const spec = GatewaySpecSchema.parse({
      name: "all",
      transport: "stdio",
      stdio: { command: "run", env: { A: "e1" } },
      auth: { type: "headers", headers: { "X-Key": "h1", "X-Other": "h2" } },
      tls: { cert: "C", key: "k1" },
    });
    const seen: string[] = [];
    const masked = mapGatewaySecrets(spec, (v) => (seen.push(v), MASK));
    assert.deepEqual(seen.sort(), ["e1", "h1", "h2", "k1"]);
    assert.ok(!JSON.stringify(masked).match(/e1|h1|h2|k1/));
    assert.equal(masked.tls?.cert, "C", "certificates are not secret");
  });
});

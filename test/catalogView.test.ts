import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { matchesTemplate } from "../actors/catalogView.ts";

describe("resource template matching", () => {
  it("matches RFC 6570 simple and reserved expansions", () => {
    const cases: Array<[string, string, boolean]> = [
      ["fixture://items/{id}", "fixture://items/apple", true],
      ["fixture://items/{id}", "fixture://items/", true],
      ["fixture://items/{id}", "fixture://items/a/b", false],
      ["fixture://items/{id}", "fixture://items/a?x=1", false],
      ["fixture://items/{id}", "fixture://other/apple", false],
      ["file:///{+path}", "file:///etc/hosts", true],
      ["file:///{+path}", "file:///", true],
      ["repo://{owner}/{name}/blob/{+path}", "repo://me/proj/blob/src/a.ts", true],
      ["repo://{owner}/{name}/blob/{+path}", "repo://me/proj/tree/src/a.ts", false],
      ["a.b://{x}", "aXb://y", false], // literals are literal, not regular expressions
      ["db://{table}", "db://users", true],
      ["static://exact", "static://exact", true],
      ["static://exact", "static://exact/", false],
    ];
    for (const [template, uri, expected] of cases) assert.equal(matchesTemplate(template, uri), expected, `${template} ~ ${uri}`);
  });

  it("does not backtrack for ages on a long URI against several wildcards", () => {
    const template = "x://{+a}{+b}{+c}{+d}{+e}{+f}/end";
    const uri = `x://${"a".repeat(20_000)}`;
    const t0 = performance.now();
    assert.equal(matchesTemplate(template, uri), false);
    // A backtracking regular expression needs on the order of 20,000^6 steps here; the
    // bound only stops a hang, the linear matcher takes milliseconds.
    assert.ok(performance.now() - t0 < 5_000);
  });
});

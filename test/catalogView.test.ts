import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { matchesTemplate } from "../actors/catalogView.ts";

/** `matchesTemplate(template, uri)` in a worker thread, terminated if it has not answered after `hangMs`. */
async function matchInWorker(template: string, uri: string, hangMs: number): Promise<boolean> {
  // CommonJS, loading the TypeScript module through tsx's API (a worker does not inherit the --import hook)
  const code = `
    const { parentPort, workerData } = require("node:worker_threads");
    import("tsx/esm/api")
      .then(({ tsImport }) => tsImport(workerData.module, workerData.module))
      .then((m) => parentPort.postMessage(m.matchesTemplate(workerData.template, workerData.uri)));`;
  const module = new URL("../actors/catalogView.ts", import.meta.url).href;
  const worker = new Worker(code, { eval: true, workerData: { module, template, uri } });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<boolean>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${hangMs} ms: the matcher hangs`)), hangMs);
      worker.once("message", resolve);
      worker.once("error", reject);
      worker.once("exit", (code) => reject(new Error(`the worker exited (${code}) without an answer`)));
    });
  } finally {
    clearTimeout(timer);
    await worker.terminate();
  }
}

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

  it("does not backtrack for ages on a long URI against several wildcards", async () => {
    // A backtracking matcher needs on the order of 20,000^6 steps here: it would never answer,
    // and a synchronous call that never returns cannot be timed out in this thread. So the
    // match runs in a worker thread, ended after a bound that only stops that hang (the linear
    // matcher answers in milliseconds). The assertion is the answer.
    const template = "x://{+a}{+b}{+c}{+d}{+e}{+f}/end";
    const uri = `x://${"a".repeat(20_000)}`;
    assert.equal(await matchInWorker(template, uri, 30_000), false);
    assert.equal(await matchInWorker(template, `${uri}/end`, 30_000), true);
  });
});

// The fidelity matrix (test/helpers/fidelity.ts): every feature of test/relay/ on one shared
// system (server-everything, and an mcpgw system of two workers per upstream transport), a few
// features at a time: a feature's cases mostly wait on the upstream (timers, stdio processes), and
// each case has sessions of its own. A feature alone: `node --import tsx --test test/relay/<feature>.ts`.
import { readdirSync } from "node:fs";
import { describe } from "node:test";

/** features run side by side (their cases one after the other) */
const FEATURES_AT_ONCE = 3;

const features = new URL("./relay/", import.meta.url);
describe("relay", { concurrency: FEATURES_AT_ONCE }, async () => {
  for (const file of readdirSync(features).filter((f) => f.endsWith(".ts")).sort()) {
    await import(new URL(file, features).href);
  }
});

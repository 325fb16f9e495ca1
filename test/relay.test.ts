// The fidelity matrix (test/helpers/fidelity.ts): every feature of test/relay/, one after the
// other, on one shared system (server-everything, and an mcpgw system of two workers per upstream
// transport). A feature alone: `node --import tsx --test test/relay/<feature>.ts`.
import { readdirSync } from "node:fs";

const features = new URL("./relay/", import.meta.url);
for (const file of readdirSync(features).filter((f) => f.endsWith(".ts")).sort()) {
  await import(new URL(file, features).href);
}

// The package's root directory, for the files a worker reads beside its code (nats.conf, the
// console's assets). It is `..` of this module both in the source tree (runtime/packageRoot.ts,
// run by tsx) and in the bundle `npm start` runs (dist/main.js), so either finds the same files.
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { Kvm, type KV } from "@nats-io/kv";
import type { z } from "zod";
import { getLive, parseEntry } from "../../actors/kvStore.ts";
import { CatalogSchema, type Catalog } from "../../protocol/catalog.ts";
import { buckets, KEYS, subjects, type Subjects } from "../../protocol/subjects.ts";
import { secretsDir } from "../embeddedNats.ts";
import { requestThroughNodeLoss } from "../jetstreamRetry.ts";
import { connectNats } from "../nats.ts";

export type CliOptions = { server?: string; user?: string; password?: string; creds?: string; prefix?: string; timeout: string; json?: boolean };

/** Runs one command against a connected admin; `print` writes the human text, or the JSON with --json. */
export type Run = (fn: (admin: Admin, print: (human: string, json: unknown) => void) => Promise<void>) => Promise<void>;

export type Admin = {
  s: Subjects;
  nc: NatsConnection;
  call<T extends z.ZodType>(subject: string, payload: unknown, schema: T): Promise<z.infer<T>>;
  /** what the last discovery of a gateway found (read from the catalog bucket); null before the first */
  catalog(gid: string): Promise<Catalog | null>;
  close(): Promise<void>;
};

/**
 * Connects as an operator: --server / NATS_URL with NATS_USER, NATS_PASSWORD or NATS_CREDS;
 * without a server, the embedded default's admin user from the data directory.
 */
export async function connectAdmin(opts: CliOptions): Promise<Admin> {
  const env = process.env;
  let url = opts.server ?? env.NATS_URL;
  let user = opts.user ?? env.NATS_USER;
  let password = opts.password ?? env.NATS_PASSWORD;
  if (!url) {
    url = `nats://127.0.0.1:${env.MCPGW_NATS_PORT ?? 4222}`;
    const file = join(secretsDir(env.MCPGW_DATA_DIR ?? "./data"), "nats-admin.password");
    if (!user && existsSync(file)) {
      user = "admin";
      password = readFileSync(file, "utf8").trim();
    }
  }
  // nats.conf lets admin and viewer read replies only under their own inbox prefix
  const nc = await connectNats({ url, user, password, credsFile: opts.creds ?? env.NATS_CREDS, name: "mcpgw-cli" });
  const timeoutMs = Number.parseInt(opts.timeout, 10) || 10_000;
  const s = subjects(opts.prefix ?? env.MCPGW_SUBJECT_PREFIX ?? undefined);
  let catalogKv: Promise<KV> | undefined;
  return {
    s,
    nc,
    // through a NATS node loss: asked again when nobody received it, or (a read) when it got no answer
    call: (subject, payload, schema) => requestThroughNodeLoss(nc, subject, payload, schema, { timeoutMs, readOnly: s.admin.readOnly.has(subject) }),
    async catalog(gid) {
      catalogKv ??= new Kvm(nc).open(buckets(s.prefix).catalog);
      return parseEntry(CatalogSchema, await getLive(await catalogKv, KEYS.catalog(gid)));
    },
    close: () => nc.close(),
  };
}

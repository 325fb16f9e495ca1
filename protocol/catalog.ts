import { z } from "zod";
import { GatewayIdSchema } from "./gateway.ts";

// MCP objects are kept as the upstream sent them; only the identifying fields are checked.
export const CatalogToolSchema = z.looseObject({ name: z.string().min(1) });
export const CatalogPromptSchema = z.looseObject({ name: z.string().min(1) });
export const CatalogResourceSchema = z.looseObject({ uri: z.string().min(1), name: z.string() });
export const CatalogResourceTemplateSchema = z.looseObject({ uriTemplate: z.string().min(1), name: z.string() });

export const CATALOG_LISTS = ["tools", "prompts", "resources", "resourceTemplates"] as const;
export type CatalogList = (typeof CATALOG_LISTS)[number];

/**
 * Which MCP revision a gateway's upstream speaks, as discovery found it: `session` (initialize
 * and a session: 2025-11-25 and older) or `stateless` (2026-07-28: `server/discover`, no session).
 */
export const UpstreamEraSchema = z.enum(["session", "stateless"]);
export type UpstreamEra = z.infer<typeof UpstreamEraSchema>;

/** Value of `cat.<gid>` in the catalog bucket: what discovery found, with a content hash. */
export const CatalogSchema = z.object({
  gid: GatewayIdSchema,
  /** sha256 of the canonical JSON of the four lists */
  hash: z.string(),
  discoveredAt: z.string(),
  /** the revision the upstream speaks; absent in a catalog discovered before eras were told apart (unknown) */
  era: UpstreamEraSchema.optional(),
  tools: z.array(CatalogToolSchema),
  prompts: z.array(CatalogPromptSchema),
  resources: z.array(CatalogResourceSchema),
  resourceTemplates: z.array(CatalogResourceTemplateSchema),
});
export type Catalog = z.infer<typeof CatalogSchema>;

const names = z.array(z.string());
const listDiff = z.object({ tools: names, prompts: names, resources: names, resourceTemplates: names });
export type CatalogListDiff = z.infer<typeof listDiff>;

/** What changed between two catalogs, by tool/prompt name, resource URI and template. */
export const CatalogDiffSchema = z.object({ added: listDiff, updated: listDiff, removed: listDiff });
export type CatalogDiff = z.infer<typeof CatalogDiffSchema>;

/** `mcpgw.evt.catalog.<gid>.changed` */
export const CatalogChangedEventSchema = z.object({ gid: GatewayIdSchema, hash: z.string(), at: z.string(), diff: CatalogDiffSchema });

/** Reply of `mcpgw.admin.gateway.refresh`. */
export const RefreshReplySchema = z.object({ gid: GatewayIdSchema, changed: z.boolean(), hash: z.string(), diff: CatalogDiffSchema });

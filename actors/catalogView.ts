import { createHash } from "node:crypto";
import type { Catalog } from "../protocol/catalog.ts";

/** What the edge knows about one gateway: its record's name and switch, its poller's verdict. */
export type GatewayFacts = { gid: string; name: string; enabled: boolean; healthy: boolean };

/** Where a name the client sees leads: the gateway and the upstream's own name. */
export type Route = { gid: string; gatewayName: string; original: string; healthy: boolean };

type Item = Record<string, unknown>;

/** The lists a client can be told changed. */
export const VIEW_LISTS = ["tools", "prompts", "resources"] as const;
export type ViewList = (typeof VIEW_LISTS)[number];

/**
 * What one downstream session sees: the federated catalog (scope null) or one gateway's
 * catalog under its original names (scope = gateway id).
 */
export type CatalogView = {
  tools: Item[];
  prompts: Item[];
  resources: Item[];
  resourceTemplates: Item[];
  toolRoutes: Map<string, Route>;
  promptRoutes: Map<string, Route>;
  /** resource URI → the gateway that serves it */
  resourceRoutes: Map<string, Route>;
  /** templates in routing order; a URI no resource claims is matched against these */
  templateRoutes: Array<{ uriTemplate: string; route: Route }>;
  /** content fingerprints per list, to tell which lists changed */
  fingerprints: Record<ViewList, string>;
  /** human-readable notes about names two gateways both offer, and how each was resolved */
  clashes: string[];
};

function fingerprint(...lists: Item[][]): string {
  const h = createHash("sha256");
  for (const l of lists) h.update(JSON.stringify(l)).update("\n");
  return h.digest("base64url");
}

/**
 * Builds the view of `scope` from every gateway's facts and catalog. Deterministic: gateways
 * in name order, each catalog in the order the upstream sent it. Unhealthy gateways are left
 * out of the lists but kept in the routes, so a call to them gets a clear "unavailable" error
 * instead of "unknown tool". A resource URI two gateways offer goes to the healthy one, then to
 * the first by name.
 */
export function buildView(gateways: GatewayFacts[], catalogs: ReadonlyMap<string, Catalog>, scope: string | null, separator: string): CatalogView {
  const picked = gateways
    .filter((g) => g.enabled && (scope === null || g.gid === scope))
    .sort((a, b) => Number(b.healthy) - Number(a.healthy) || a.name.localeCompare(b.name) || a.gid.localeCompare(b.gid));
  const view: CatalogView = {
    tools: [],
    prompts: [],
    resources: [],
    resourceTemplates: [],
    toolRoutes: new Map(),
    promptRoutes: new Map(),
    resourceRoutes: new Map(),
    templateRoutes: [],
    fingerprints: { tools: "", prompts: "", resources: "" },
    clashes: [],
  };
  const exposed = (g: GatewayFacts, name: string) => (scope === null ? `${g.name}${separator}${name}` : name);

  const addNamed = (g: GatewayFacts, items: Item[], list: Item[], routes: Map<string, Route>, what: string) => {
    for (const item of items) {
      const original = String(item.name);
      const name = exposed(g, original);
      const taken = routes.get(name);
      if (taken) {
        view.clashes.push(`${what} ${name} of gateway ${g.name} is hidden by the one of gateway ${taken.gatewayName}`);
        continue;
      }
      routes.set(name, { gid: g.gid, gatewayName: g.name, original, healthy: g.healthy });
      if (g.healthy) list.push(scope === null ? { ...item, name } : item);
    }
  };

  for (const g of picked) {
    const cat = catalogs.get(g.gid);
    if (!cat) continue;
    addNamed(g, cat.tools, view.tools, view.toolRoutes, "tool");
    addNamed(g, cat.prompts, view.prompts, view.promptRoutes, "prompt");
    for (const r of cat.resources) {
      const taken = view.resourceRoutes.get(r.uri);
      if (taken) {
        view.clashes.push(`resource ${r.uri} is offered by gateways ${taken.gatewayName} and ${g.name}; ${taken.gatewayName} serves it`);
        continue;
      }
      view.resourceRoutes.set(r.uri, { gid: g.gid, gatewayName: g.name, original: r.uri, healthy: g.healthy });
      if (g.healthy) view.resources.push(r);
    }
    for (const t of cat.resourceTemplates) {
      view.templateRoutes.push({ uriTemplate: t.uriTemplate, route: { gid: g.gid, gatewayName: g.name, original: t.uriTemplate, healthy: g.healthy } });
      if (g.healthy) view.resourceTemplates.push(t);
    }
  }
  view.fingerprints = {
    tools: fingerprint(view.tools),
    prompts: fingerprint(view.prompts),
    resources: fingerprint(view.resources, view.resourceTemplates),
  };
  return view;
}

/** The lists whose content differs between two views of the same scope. */
export function changedLists(before: CatalogView, after: CatalogView): ViewList[] {
  return VIEW_LISTS.filter((l) => before.fingerprints[l] !== after.fingerprints[l]);
}

/**
 * Matches a URI against an RFC 6570 template: `{var}` stands for text without `/`, `?` or `#`,
 * `{+var}` and `{#var}` for any text. Linear in the URI per template part (no regular
 * expression: a template with several wildcards would backtrack for ages on a long URI a
 * client sends).
 */
export function matchesTemplate(uriTemplate: string, uri: string): boolean {
  const n = uri.length;
  // reach[i]: the parts so far can match exactly uri[0, i)
  let reach = new Uint8Array(n + 1);
  reach[0] = 1;
  for (const part of uriTemplate.split(/(\{[^}]*\})/)) {
    if (part === "") continue;
    const next = new Uint8Array(n + 1);
    if (!part.startsWith("{")) {
      for (let i = 0; i + part.length <= n; i++) if (reach[i] && uri.startsWith(part, i)) next[i + part.length] = 1;
    } else {
      const anyText = part.startsWith("{+") || part.startsWith("{#");
      let open = false;
      for (let i = 0; i <= n; i++) {
        if (reach[i]) open = true;
        if (open) next[i] = 1;
        if (!anyText && i < n && "/?#".includes(uri[i]!)) open = false;
      }
    }
    reach = next;
  }
  return reach[n] === 1;
}

/** Where `resources/read` of `uri` goes: an exact resource first, then the first matching template. */
export function routeResource(view: CatalogView, uri: string): Route | undefined {
  return view.resourceRoutes.get(uri) ?? view.templateRoutes.find((t) => matchesTemplate(t.uriTemplate, uri))?.route;
}

/** Where a completion for a resource template goes. */
export function routeTemplate(view: CatalogView, uriTemplate: string): Route | undefined {
  return view.templateRoutes.find((t) => t.uriTemplate === uriTemplate)?.route ?? view.resourceRoutes.get(uriTemplate);
}

export class InvalidCursorError extends Error {
  override name = "InvalidCursorError";
}

/** One page of `items` after the opaque `cursor`; `nextCursor` is absent on the last page. */
export function paginate<T>(items: T[], cursor: string | undefined, pageSize: number): { page: T[]; nextCursor?: string } {
  let offset = 0;
  if (cursor !== undefined) {
    const m = /^o(\d{1,9})$/.exec(Buffer.from(cursor, "base64url").toString("utf8"));
    if (!m) throw new InvalidCursorError(`invalid cursor: ${JSON.stringify(cursor.slice(0, 64))}`);
    offset = Number(m[1]);
  }
  const end = offset + pageSize;
  const page = items.slice(offset, end);
  return end < items.length ? { page, nextCursor: Buffer.from(`o${end}`).toString("base64url") } : { page };
}

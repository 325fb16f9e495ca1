// The mcpgw web console. Every action is one call to /console/api/<admin call>, which the
// edge forwards to the admin subject of that name: the console can do nothing the CLI cannot.
// The edge token lives in sessionStorage (this tab only) and travels as a bearer header.
"use strict";

const TOKEN_KEY = "mcpgw-console-token";
const REFRESH_MS = 2000;
const MAX_EVENTS = 50;
/**
 * Gateways are shown a page at a time, in name order: each page is one gateway.list call (its
 * `after` the name before the page), so a refresh costs the same with 10,000 gateways as with 100.
 */
const GATEWAY_PAGE = 100;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let refreshTimer = null;
/**
 * Refreshes overlap (the timer, an event, an action's own): each is numbered when it starts, and
 * one that finishes after a later one has been shown is dropped, so an older view never replaces a
 * newer one (a stale row's button would act on what it no longer is).
 */
let refreshesStarted = 0;
let refreshShown = 0;
let eventsAbort = null;
/** the gateway the form edits; null when it adds one */
let editing = null;
/** gateway names by id, from the pages seen: catalog events carry only the id */
const gatewayNames = new Map();
/** the `after` of each page up to the one shown (the first page's is undefined) */
const pageStarts = [undefined];

class ApiError extends Error {
  constructor(status, error) {
    super(error.message + (error.issues ? ` (${error.issues.map((i) => `${i.path}: ${i.message}`).join("; ")})` : ""));
    this.status = status;
    this.code = error.code;
  }
}

async function call(name, body = {}) {
  const res = await fetch(`/console/api/${name}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  let env;
  try {
    env = await res.json();
  } catch {
    env = { ok: false, error: { code: "internal", message: `HTTP ${res.status}` } };
  }
  if (res.status === 401) logout("The token was refused.");
  if (!env.ok) throw new ApiError(res.status, env.error);
  return env.data;
}

/** An element with attributes and children (text is always text, never markup). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function ago(iso) {
  if (!iso) return "-";
  const ms = Date.now() - Date.parse(iso);
  const abs = Math.abs(ms);
  const text = abs < 1000 ? `${abs}ms` : abs < 60000 ? `${Math.round(abs / 1000)}s` : abs < 3600000 ? `${Math.round(abs / 60000)}m` : `${Math.round(abs / 3600000)}h`;
  return ms >= 0 ? `${text} ago` : `in ${text}`;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

/** Runs an action, says how it went, and refreshes the view. */
async function act(what, f) {
  try {
    say(`${what}…`);
    const out = await f();
    say(`${what}: ${typeof out === "string" ? out : "done"}`);
  } catch (err) {
    say(`${what}: ${err.message}`, true);
  }
  await refresh();
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "10", class: "sub" }, empty))]));
}

/** The page's place in the list, and whether there is one before and after it. */
function renderPager(shown, next) {
  const page = pageStarts.length;
  const first = (page - 1) * GATEWAY_PAGE + 1;
  $("gateway-range").textContent = shown ? `gateways ${first}–${first + shown - 1}${next ? "" : ` of ${first + shown - 1}`} · page ${page}` : "";
  $("gateway-prev").disabled = page === 1;
  $("gateway-next").disabled = !next;
  $("gateway-next").dataset.after = next ?? "";
}

function turnPage(forward) {
  if (forward) {
    const after = $("gateway-next").dataset.after;
    if (!after) return;
    pageStarts.push(after);
  } else if (pageStarts.length > 1) pageStarts.pop();
  void refresh();
}

function renderGateways(gateways) {
  for (const g of gateways) gatewayNames.set(g.id, g.name);
  fill(
    $("gateways").tBodies[0],
    gateways.map((g) => {
      const st = g.status;
      const target = g.transport === "stdio" ? `${g.stdio?.command ?? ""} ${(g.stdio?.args ?? []).join(" ")}` : g.url;
      return el(
        "tr",
        { "data-gateway": g.name },
        el("td", {}, el("strong", {}, g.name), g.description ? el("span", { class: "sub" }, g.description) : null),
        el("td", {}, g.transport),
        el("td", {}, target),
        el("td", { class: "enabled" }, g.enabled ? "yes" : "no"),
        el("td", {}, el("span", { class: `badge health ${st?.health ?? "unknown"}` }, st?.health ?? "unknown")),
        el("td", {}, el("span", { class: `badge ${st?.tier ?? ""}` }, st?.tier ?? "unclassified")),
        el("td", { class: "counts" }, st ? `${st.tools} / ${st.prompts} / ${st.resources}` : "-"),
        el("td", { class: "error" }, st?.lastError ?? ""),
        el("td", {}, ago(st?.nextPollAt)),
        el(
          "td",
          { class: "actions" },
          el("button", { type: "button", onclick: () => edit(g) }, "Edit"),
          " ",
          el("button", { type: "button", onclick: () => act(`${g.enabled ? "disable" : "enable"} ${g.name}`, () => call("gateway.update", { id: g.id, patch: { enabled: !g.enabled } }).then(() => "done")) }, g.enabled ? "Disable" : "Enable"),
          " ",
          el("button", { type: "button", onclick: () => act(`refresh ${g.name}`, () => call("gateway.refresh", { id: g.id }).then((r) => (r.changed ? "the catalog changed" : "no change"))) }, "Refresh"),
          " ",
          el("button", { type: "button", class: "danger", onclick: () => confirm(`Remove gateway ${g.name}?`) && act(`remove ${g.name}`, () => call("gateway.remove", { id: g.id }).then(() => "removed")) }, "Remove"),
        ),
      );
    }),
    "No gateways yet: add one below.",
  );
}

function renderWorkers(status) {
  $("summary").textContent = `${status.workers.length} worker(s) · ${status.gateways.healthy}/${status.gateways.enabled} enabled gateways healthy · ${status.clientSessions} client session(s) · leader ${status.leader?.holder ?? "none"}`;
  fill(
    $("workers").tBodies[0],
    status.workers.map((w) => el("tr", {}, el("td", {}, w.worker), el("td", {}, w.pollers), el("td", {}, w.upstreamSessions), el("td", {}, w.leader ? "leader" : ""))),
    "No worker answered.",
  );
}

function renderSessions(list) {
  fill(
    $("sessions").tBodies[0],
    list.sessions.map((x) =>
      el(
        "tr",
        { "data-session": x.sid },
        el("td", {}, el("code", {}, x.sid.slice(0, 12))),
        el("td", {}, x.gatewayName),
        el("td", {}, x.worker),
        el("td", {}, x.state),
        el("td", {}, x.useCount),
        el("td", {}, ago(x.createdAt).replace(" ago", "")),
        el("td", { class: "actions" }, el("button", { type: "button", class: "danger", onclick: () => act(`evict ${x.gatewayName} session`, () => call("session.evict", { sid: x.sid, gid: x.gid }).then((r) => `${r.evicted} evicted`)) }, "Evict")),
      ),
    ),
    "No live upstream sessions.",
  );
}

async function refresh() {
  clearTimeout(refreshTimer);
  if (!token) return;
  const generation = ++refreshesStarted;
  try {
    const after = pageStarts.at(-1);
    const [gateways, status, sessions] = await Promise.all([call("gateway.list", { limit: GATEWAY_PAGE, ...(after ? { after } : {}) }), call("status"), call("session.list")]);
    if (generation > refreshShown) {
      refreshShown = generation;
      // a page emptied by removals: show the one before it
      if (gateways.gateways.length === 0 && pageStarts.length > 1) {
        pageStarts.pop();
        refreshTimer = setTimeout(refresh, 0);
        return;
      }
      renderGateways(gateways.gateways);
      renderPager(gateways.gateways.length, gateways.next);
      renderWorkers(status);
      renderSessions(sessions);
    }
  } catch (err) {
    if (token && generation > refreshShown) say(`refresh failed: ${err.message}`, true);
  }
  // only the newest refresh plans the next: one timer, however many overlapped
  if (token && generation === refreshesStarted) refreshTimer = setTimeout(refresh, REFRESH_MS);
}

function describeEvent(subject, e) {
  const kind = subject.split(".").slice(2).filter((t) => !/^[a-f0-9]{16}$/.test(t) && t.length < 32).join(" ");
  const what = e.name ?? gatewayNames.get(e.gid) ?? e.gid ?? e.sid ?? "";
  const extra = e.type === "updated" ? ` (${e.changedFields.join(", ")})` : e.reason ? ` (${e.reason})` : e.diff ? ` (+${e.diff.added.tools.length} −${e.diff.removed.tools.length} tools)` : "";
  return `${kind} ${what}${extra}`;
}

/** Follows /console/api/events (server-sent events, read with fetch so the bearer header can go along). */
async function followEvents() {
  eventsAbort?.abort();
  eventsAbort = new AbortController();
  const signal = eventsAbort.signal;
  try {
    const res = await fetch("/console/api/events", { headers: { authorization: `Bearer ${token}` }, signal });
    if (!res.ok) return;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        const { subject, event } = JSON.parse(data);
        const list = $("events");
        list.prepend(el("li", { "data-subject": subject }, el("time", {}, new Date(event.at ?? Date.now()).toLocaleTimeString()), describeEvent(subject, event)));
        while (list.children.length > MAX_EVENTS) list.lastChild.remove();
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(refresh, 200);
      }
    }
  } catch {
    // aborted on logout, or the edge went away
  }
  if (!signal.aborted) setTimeout(() => token && followEvents(), 3000);
}

// ---- the gateway form: add, or edit one gateway ----

function resetForm() {
  $("gateway-form").reset();
  $("gateway-form").classList.remove("stdio");
  editing = null;
  $("form-title").textContent = "Add a gateway";
  $("gw-submit").textContent = "Add";
  $("gw-cancel").hidden = true;
  $("gw-transport").disabled = false;
  $("form-error").hidden = true;
}

function edit(g) {
  resetForm();
  editing = g;
  $("gw-name").value = g.name;
  $("gw-transport").value = g.transport;
  $("gw-transport").disabled = true;
  $("gateway-form").classList.toggle("stdio", g.transport === "stdio");
  $("gw-url").value = g.url ?? "";
  $("gw-command").value = g.stdio?.command ?? "";
  $("gw-args").value = (g.stdio?.args ?? []).join(" ");
  $("gw-description").value = g.description ?? "";
  $("gw-tags").value = g.tags.join(", ");
  $("form-title").textContent = `Edit ${g.name}`;
  $("gw-submit").textContent = "Save";
  $("gw-cancel").hidden = false;
  $("gw-name").focus();
}

function formFields() {
  const transport = $("gw-transport").value;
  const fields = {
    name: $("gw-name").value.trim(),
    description: $("gw-description").value.trim(),
    tags: $("gw-tags").value.split(",").map((t) => t.trim()).filter(Boolean),
  };
  if (transport === "stdio") fields.stdio = { command: $("gw-command").value.trim(), args: $("gw-args").value.split(/\s+/).filter(Boolean), env: {} };
  else fields.url = $("gw-url").value.trim();
  const bearer = $("gw-bearer").value;
  if (bearer) fields.auth = { type: "bearer", token: bearer };
  return { transport, fields };
}

async function submitGateway(ev) {
  ev.preventDefault();
  const { transport, fields } = formFields();
  try {
    if (editing) {
      // only what changed: an unchanged stdio block would send the masked env values back
      const before = { name: editing.name, description: editing.description ?? "", tags: editing.tags, url: editing.url, stdio: editing.stdio && { command: editing.stdio.command, args: editing.stdio.args, env: {} } };
      const patch = Object.fromEntries(Object.entries(fields).filter(([k, v]) => k === "auth" || JSON.stringify(v) !== JSON.stringify(before[k])));
      // the environment's values are secret (masked here), so they cannot be carried over
      if (patch.stdio && Object.keys(editing.stdio.env).length) throw new Error("this gateway has a secret stdio environment: change its command with the CLI (mcpgw gateway update --command … --env …)");
      await call("gateway.update", { id: editing.id, expectedRevision: editing.revision, patch });
      say(`saved ${fields.name}`);
    } else {
      await call("gateway.add", { ...fields, transport });
      say(`added ${fields.name}; its first discovery follows`);
    }
    resetForm();
  } catch (err) {
    $("form-error").textContent = err.message;
    $("form-error").hidden = false;
  }
  await refresh();
}

// ---- log in and out ----

function showApp(on) {
  $("login").hidden = on;
  $("app").hidden = !on;
  $("logout").hidden = !on;
}

function logout(reason) {
  token = null;
  pageStarts.length = 1;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(refreshTimer);
  eventsAbort?.abort();
  showApp(false);
  $("summary").textContent = "";
  $("login-error").textContent = reason ?? "";
  $("login-error").hidden = !reason;
}

async function login(candidate) {
  token = candidate;
  try {
    await call("status");
  } catch (err) {
    if (err.status !== 401) logout(`Cannot log in: ${err.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-error").hidden = true;
  showApp(true);
  void followEvents();
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    void login($("token").value.trim());
    $("token").value = "";
  });
  $("logout").addEventListener("click", () => logout());
  $("gateway-form").addEventListener("submit", submitGateway);
  $("gw-cancel").addEventListener("click", resetForm);
  $("gateway-prev").addEventListener("click", () => turnPage(false));
  $("gateway-next").addEventListener("click", () => turnPage(true));
  $("gw-transport").addEventListener("change", () => $("gateway-form").classList.toggle("stdio", $("gw-transport").value === "stdio"));
  if (token) void login(token);
});

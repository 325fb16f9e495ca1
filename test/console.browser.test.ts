import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { SessionListReplySchema } from "../protocol/upstream.ts";
import { subjects } from "../protocol/subjects.ts";
import { request } from "../runtime/bus.ts";
import { startFixtureHttp, type FixtureHttp } from "./fixtures/fixtureHttp.ts";
import { startNats, type TestNats } from "./helpers/nats.ts";
import { ROOT } from "./helpers/processes.ts";
import { startTestWorker, type TestWorker } from "./helpers/worker.ts";

const s = subjects();
const TOKEN = "console-test-token-0123456789";
/** a client's token: it reaches the MCP endpoint, never the console */
const CLIENT_TOKEN = "client-test-token-0123456789";
const WAIT = 30_000;

describe("web console in headless Chromium", () => {
  let nats: TestNats;
  let fixture: FixtureHttp;
  let worker: TestWorker;
  let browser: BrowserContext;
  let page: Page;
  let attacker: Server;
  let base: string;
  const profile = mkdtempSync(join(tmpdir(), "mcpgw-chromium-"));

  before(async () => {
    nats = await startNats();
    fixture = await startFixtureHttp();
    worker = await startTestWorker(nats, { MCPGW_EDGE_AUTH: "token", MCPGW_EDGE_TOKENS: CLIENT_TOKEN, MCPGW_CONSOLE_TOKENS: TOKEN, MCPGW_ALLOW_SHORT_INTERVALS: "1", MCPGW_HEALTH_INTERVAL: "1s" });
    base = `http://127.0.0.1:${worker.edge.port}`;
    // a page on another origin that frames the console and posts to its API
    attacker = createServer((_req, res) => res.writeHead(200, { "content-type": "text/html" }).end(`<iframe id="victim" src="${base}/console"></iframe>`));
    await new Promise<void>((r) => attacker.listen(0, "127.0.0.1", r));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on("dialog", (d) => void d.accept());
  });
  after(async () => {
    await browser?.close();
    attacker?.close();
    await worker?.stop();
    await fixture?.close();
    await nats?.stop();
    rmSync(profile, { recursive: true, force: true });
  });

  const row = (name: string) => page.locator(`tr[data-gateway="${name}"]`);

  it("refuses a wrong token, then logs in with the edge token", async () => {
    const res = await page.goto(`${base}/console`);
    assert.equal(res!.status(), 200);
    assert.equal(res!.headers()["x-frame-options"], "DENY");
    assert.match(res!.headers()["content-security-policy"]!, /frame-ancestors 'none'/);
    assert.match(res!.headers()["content-security-policy"]!, /script-src 'self';/);

    await page.fill("#token", "wrong-token-wrong-token");
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-error", { hasText: "The token was refused." }).waitFor({ timeout: WAIT });
    assert.equal(await page.locator("#app").isHidden(), true);

    await page.fill("#token", TOKEN);
    await page.click("#login-form button[type=submit]");
    await page.locator("#workers tbody tr", { hasText: worker.id }).waitFor({ timeout: WAIT });
  });

  it("adds a gateway and sees it turn healthy with its tool counts", async () => {
    await page.fill("#gw-name", "fx");
    await page.fill("#gw-url", fixture.url("fx"));
    await page.fill("#gw-description", "fixture upstream");
    await page.click("#gw-submit");
    await row("fx").locator(".health.healthy").waitFor({ timeout: WAIT });
    await row("fx").locator(".counts", { hasText: "14 / 1 / 1" }).waitFor({ timeout: WAIT });
    const g = await worker.registry.get({ name: "fx" });
    assert.deepEqual([g.url, g.description, g.enabled], [fixture.url("fx"), "fixture upstream", true]);
  });

  it("edits, disables, enables and refreshes it through the admin subjects", async () => {
    await row("fx").getByRole("button", { name: "Edit" }).click();
    await page.fill("#gw-description", "edited in the console");
    await page.fill("#gw-tags", "demo, browser");
    await page.click("#gw-submit");
    await row("fx").getByText("edited in the console").waitFor({ timeout: WAIT });
    const edited = await worker.registry.get({ name: "fx" });
    assert.deepEqual([edited.description, edited.tags, edited.url], ["edited in the console", ["demo", "browser"], fixture.url("fx")]);

    await row("fx").getByRole("button", { name: "Disable" }).click();
    await page.locator("#message", { hasText: /^disable fx: done$/ }).waitFor({ timeout: WAIT });
    await row("fx").locator(".enabled", { hasText: "no" }).waitFor({ timeout: WAIT });
    assert.equal((await worker.registry.get({ name: "fx" })).enabled, false);
    await row("fx").getByRole("button", { name: "Enable" }).click();
    await page.locator("#message", { hasText: /^enable fx: done$/ }).waitFor({ timeout: WAIT });
    await row("fx").locator(".enabled", { hasText: "yes" }).waitFor({ timeout: WAIT });
    assert.equal((await worker.registry.get({ name: "fx" })).enabled, true);

    await row("fx").getByRole("button", { name: "Refresh" }).click();
    await page.locator("#message", { hasText: /^refresh fx: (no change|the catalog changed)$/ }).waitFor({ timeout: WAIT });
    await page.locator("#events li", { hasText: "gateway updated fx (description, tags)" }).waitFor({ timeout: WAIT });
  });

  it("shows a live upstream session and evicts it", async () => {
    const client = new Client({ name: "console-test", version: "1.0.0" });
    await client.connect(new StreamableHTTPClientTransport(new URL(worker.edge.url), { requestInit: { headers: { authorization: `Bearer ${CLIENT_TOKEN}` } } }));
    await client.callTool({ name: "fx__echo", arguments: { text: "hi" } });
    const sessionRow = page.locator("#sessions tr[data-session]", { hasText: "fx" });
    await sessionRow.waitFor({ timeout: WAIT });
    await row("fx").locator(".health.healthy").waitFor({ timeout: WAIT });
    // the README's picture; rewritten only when asked, so a test run leaves the tree clean
    const shot = process.env.MCPGW_UPDATE_SCREENSHOT === "1" ? join(ROOT, "docs", "console.png") : join(profile, "console.png");
    mkdirSync(dirname(shot), { recursive: true });
    await page.setViewportSize({ width: 1400, height: 900 });
    assert.ok((await page.screenshot({ path: shot, fullPage: true })).length > 0);

    await sessionRow.getByRole("button", { name: "Evict" }).click();
    await page.locator("#message", { hasText: /^evict fx session: 1 evicted$/ }).waitFor({ timeout: WAIT });
    await sessionRow.waitFor({ state: "detached", timeout: WAIT });
    const left = await request(await nats.connect("admin"), s.admin.sessionList, {}, SessionListReplySchema, WAIT);
    assert.deepEqual(left.sessions, []);
    await client.close();
  });

  it("removes the gateway", async () => {
    await row("fx").getByRole("button", { name: "Remove" }).click();
    await row("fx").waitFor({ state: "detached", timeout: WAIT });
    assert.deepEqual(await worker.registry.list({}), { gateways: [] });
    await page.locator("#events li", { hasText: "gateway removed fx" }).waitFor({ timeout: WAIT });
  });

  it("pages through more gateways than one page shows, and acts on one past the first page", async () => {
    // disabled, so nothing polls them; names sort as numbered
    const names = Array.from({ length: 150 }, (_, i) => `pg-${String(i).padStart(3, "0")}`);
    for (const name of names) await worker.registry.add({ name, transport: "streamable-http", url: "http://127.0.0.1:9/mcp", enabled: false });
    await page.goto(`${base}/console`);
    await row("pg-000").waitFor({ timeout: WAIT });
    const firstPage = await page.locator("#gateways tr[data-gateway]").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-gateway")));
    assert.ok(firstPage.length < names.length && firstPage.length > 0, `the first page shows ${firstPage.length} of ${names.length}`);
    assert.deepEqual(firstPage, names.slice(0, firstPage.length), "the first page is the first names in order");
    assert.equal(await page.locator("#gateway-prev").isDisabled(), true);

    await page.click("#gateway-next");
    await row("pg-149").waitFor({ timeout: WAIT });
    await row("pg-000").waitFor({ state: "detached", timeout: WAIT });
    const secondPage = await page.locator("#gateways tr[data-gateway]").evaluateAll((rows) => rows.map((r) => r.getAttribute("data-gateway")));
    assert.deepEqual([...firstPage, ...secondPage], names, "the two pages show every gateway once");
    await page.locator("#gateway-range", { hasText: `of ${names.length}` }).waitFor({ timeout: WAIT });
    assert.equal(await page.locator("#gateway-next").isDisabled(), true);

    // the view stays on this page across refreshes, and its buttons act on its gateways
    await row("pg-149").getByRole("button", { name: "Enable" }).click();
    await page.locator("#message", { hasText: /^enable pg-149: done$/ }).waitFor({ timeout: WAIT });
    await row("pg-149").locator(".enabled", { hasText: "yes" }).waitFor({ timeout: WAIT });
    assert.equal((await worker.registry.get({ name: "pg-149" })).enabled, true);

    await page.click("#gateway-prev");
    await row("pg-000").waitFor({ timeout: WAIT });
    assert.equal(await row("pg-149").count(), 0);
    for (const name of names) await worker.registry.remove({ name });
  });

  it("cannot be framed by another site, nor driven by its requests (CSRF)", async () => {
    const evil = await browser.newPage();
    const origin = `http://127.0.0.1:${(attacker.address() as AddressInfo).port}`;
    await evil.goto(origin);
    const frame = evil.frames().find((f) => f !== evil.mainFrame());
    assert.ok(frame);
    await evil.waitForTimeout(500); // the frame's navigation settles (it is refused, so nothing loads)
    assert.equal(await frame.locator("#login-form").count(), 0, "the console did not render inside the frame");

    // a cross-site form-like POST, without the token (the attacker does not have it) and with it
    const statuses = await evil.evaluate(async ({ base, token }) => {
      const body = JSON.stringify({ name: "evil", transport: "streamable-http", url: "http://127.0.0.1:9/mcp" });
      const tries: Array<Record<string, string>> = [{}, { authorization: `Bearer ${token}`, "content-type": "application/json" }];
      const out: string[] = [];
      for (const headers of tries) {
        out.push(await fetch(`${base}/console/api/gateway.add`, { method: "POST", body, headers }).then((r) => String(r.status), (e: Error) => e.name));
      }
      return out;
    }, { base, token: TOKEN });
    await evil.close();
    // The edge refuses the foreign Origin; the browser may also block the credentialed preflight.
    assert.ok(statuses.every((st) => st === "403" || st === "TypeError"), statuses.join(","));
    await assert.rejects(worker.registry.get({ name: "evil" }), /no gateway named evil/);

    // without a browser: a valid token but no Origin, and a bad token, are refused too
    const add = (headers: Record<string, string>) =>
      fetch(`${base}/console/api/gateway.add`, { method: "POST", headers, body: JSON.stringify({ name: "evil", transport: "streamable-http", url: "http://127.0.0.1:9/mcp" }) });
    assert.equal((await add({ authorization: `Bearer ${TOKEN}` })).status, 403);
    assert.equal((await add({ authorization: "Bearer not-the-token-at-all", origin: base })).status, 401);
    // a client's token gives no admin rights: adding a stdio gateway would run a command on a worker
    assert.equal((await add({ authorization: `Bearer ${CLIENT_TOKEN}`, origin: base })).status, 401);
    await assert.rejects(worker.registry.get({ name: "evil" }), /no gateway named evil/);
  });
});

describe("web console without MCPGW_CONSOLE_TOKENS", () => {
  let nats: TestNats;
  let worker: TestWorker;
  before(async () => {
    nats = await startNats();
    worker = await startTestWorker(nats); // the test configuration has client auth off
  });
  after(async () => {
    await worker?.stop();
    await nats?.stop();
  });

  it("serves the page but refuses every API call: without a console credential nobody may administer", async () => {
    const base = `http://127.0.0.1:${worker.edge.port}`;
    assert.equal((await fetch(`${base}/console`)).status, 200);
    const add = await fetch(`${base}/console/api/gateway.add`, {
      method: "POST",
      headers: { origin: base, "content-type": "application/json" },
      body: JSON.stringify({ name: "open", transport: "stdio", stdio: { command: "true", args: [], env: {} } }),
    });
    assert.equal(add.status, 403);
    assert.deepEqual(await add.json(), { ok: false, error: { code: "unavailable", message: "the console is off: set MCPGW_CONSOLE_TOKENS to use it" } });
    assert.equal((await fetch(`${base}/console/api/events`)).status, 403);
    assert.deepEqual(await worker.registry.list({}), { gateways: [] });
  });
});

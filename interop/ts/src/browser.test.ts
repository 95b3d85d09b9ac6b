// Browser test: headless Chromium loads a page from another origin than
// the gateway's (a static server on another loopback port), and the page
// calls the real imagerecordsd binary with @connectrpc/connect-web and the
// generated client (browser/page.ts): List as a Connect GET, revalidated
// from the browser's cache, a server stream over fetch, errors in the
// Connect and gRPC-Web protocols, a call without a token. The gateway
// wants a bearer token, so every call from the page needs a CORS
// preflight. A page of the allowed origin gets every answer; the same page
// from another origin gets none, its preflights refused.
//
//   IMAGERECORDSD=/path/to/imagerecordsd CHROMIUM=/usr/bin/chromium npm run test:browser

import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";
import { chromium, type Browser } from "playwright-core";

import { startGateway, type Gateway } from "./gateway.js";

const TOKEN = "token-browser-test-0123456789";
// The 250-record sample desktop (the second the simulator logs): a stream
// of three messages.
const STREAM_DESKTOP_INDEX = 1;
const STREAM_RECORDS = 250;
const MISSING_DESKTOP = "ecd-nosuchdesktop1";
const LIST_CACHE_MAX_AGE_S = 60;
// Bounds the page's work; each of its calls has a 20 s timeout.
const PAGE_TIMEOUT_MS = 90_000;
// Flags that let Chromium run here: as root (Playwright adds --no-sandbox),
// and without its background connections, which this machine's closed
// network refuses.
const CHROMIUM_ARGS = [
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** What the page wrote into the DOM: one outcome per check. */
type Outcome = { ok: boolean; code?: string; message?: string; reason?: string } & Record<string, unknown>;
type Results = Record<string, Outcome>;

/** Serves the page and its bundle: one origin per server. */
async function servePage(bundle: string): Promise<{ server: Server; origin: string }> {
  const html =
    '<!doctype html><html><head><meta charset="utf-8"><title>imagerecords browser test</title></head>' +
    '<body><script type="module" src="/page.js"></script></body></html>';
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://page").pathname;
    if (path === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(html);
    } else if (path === "/page.js") {
      res.writeHead(200, { "Content-Type": "text/javascript; charset=utf-8" }).end(bundle);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

describe("connect-web in headless Chromium, from another origin", { timeout: 240_000 }, () => {
  const binary = process.env.IMAGERECORDSD;
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  let allowed: { server: Server; origin: string };
  let other: { server: Server; origin: string };
  let gateway: Gateway;
  let browser: Browser;
  let dir: string;
  let streamDesktop: string;

  before(async () => {
    assert.ok(binary, "set IMAGERECORDSD to the imagerecordsd binary");
    const bundled = await build({
      entryPoints: [fileURLToPath(new URL("../../browser/page.ts", import.meta.url))],
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "chrome120",
      write: false,
      logLevel: "warning",
    });
    const bundle = bundled.outputFiles[0].text;
    allowed = await servePage(bundle);
    other = await servePage(bundle);
    dir = await mkdtemp(join(tmpdir(), "imagerecords-browser-"));
    const tokens = join(dir, "tokens");
    await writeFile(tokens, `${TOKEN}\n`);
    gateway = await startGateway(binary, [
      "--cors-allowed-origins", allowed.origin,
      "--auth-tokens-file", tokens,
      "--list-cache-max-age", `${LIST_CACHE_MAX_AGE_S}s`,
    ]);
    streamDesktop = gateway.simulator.desktop_ids[STREAM_DESKTOP_INDEX];
    browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS, timeout: 60_000 });
  });

  after(async () => {
    await browser?.close();
    allowed?.server.close();
    other?.server.close();
    if (gateway) assert.equal(await gateway.stop(), 0, gateway.log());
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** One request of the page to the gateway, as Chromium's network saw it. */
  interface Exchange {
    type?: string;
    method?: string;
    path?: string;
    /** The If-None-Match the browser sent on its own. */
    ifNoneMatch?: string;
    /** The status on the wire (304 for a revalidation) and the one fetch reported. */
    wireStatus?: number;
    status?: number;
    /** Why the request failed: Chromium's CORS error, or its network error. */
    failed?: string;
  }

  const describeExchange = (x: Exchange): string =>
    `${x.type} ${x.method} ${x.path}: ` +
    (x.failed ? `failed (${x.failed})` : `${x.status}`) +
    (x.wireStatus !== undefined && x.wireStatus !== x.status ? ` (${x.wireStatus} on the wire)` : "") +
    (x.ifNoneMatch ? `, sent If-None-Match ${x.ifNoneMatch}` : "");

  /** Loads the page from origin and returns what it saw and what Chromium's network did. */
  async function visit(origin: string): Promise<{ results: Results; exchanges: Exchange[] }> {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      const consoleLines: string[] = [];
      page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
      // Chromium's own view of the network (DevTools protocol): it shows
      // preflights and revalidations, which fetch hides from the page.
      const cdp = await context.newCDPSession(page);
      const seen = new Map<string, Exchange>();
      const exchange = (id: string): Exchange => seen.get(id) ?? seen.set(id, {}).get(id)!;
      cdp.on("Network.requestWillBeSent", (e) => {
        const url = new URL(e.request.url);
        if (url.host === gateway.addr) Object.assign(exchange(e.requestId), { method: e.request.method, path: url.pathname, type: e.type });
      });
      cdp.on("Network.requestWillBeSentExtraInfo", (e) => {
        const inm = Object.entries(e.headers).find(([k]) => k.toLowerCase() === "if-none-match")?.[1];
        if (inm !== undefined) exchange(e.requestId).ifNoneMatch = String(inm);
      });
      cdp.on("Network.responseReceivedExtraInfo", (e) => (exchange(e.requestId).wireStatus = e.statusCode));
      cdp.on("Network.responseReceived", (e) => Object.assign(exchange(e.requestId), { status: e.response.status, type: e.type }));
      cdp.on("Network.loadingFailed", (e) => {
        exchange(e.requestId).failed = e.corsErrorStatus?.corsError ?? e.errorText;
      });
      await cdp.send("Network.enable");

      const query = new URLSearchParams({ gateway: `http://${gateway.addr}`, token: TOKEN, desktop: streamDesktop, missing: MISSING_DESKTOP });
      await page.goto(`${origin}/?${query}`);
      await page.waitForSelector("body[data-done]", { timeout: PAGE_TIMEOUT_MS });
      const results = JSON.parse((await page.textContent("#results")) ?? "{}") as Results;
      const exchanges = [...seen.values()].filter((x) => x.path !== undefined);
      console.log(`page of ${origin} (gateway http://${gateway.addr}, allowed origin ${allowed.origin}) saw:\n${JSON.stringify(results, null, 2)}`);
      console.log(`Chromium's requests to the gateway:\n  ${exchanges.map(describeExchange).join("\n  ")}`);
      console.log(`Chromium's console:\n  ${consoleLines.join("\n  ") || "(nothing)"}`);
      return { results, exchanges };
    } finally {
      await context.close();
    }
  }

  it("serves every call to a page of the allowed origin", async () => {
    const { results: r, exchanges } = await visit(allowed.origin);
    const preflights = exchanges.filter((x) => x.type === "Preflight");
    assert.ok(preflights.length >= 5, `a preflight before each call with a token: ${preflights.map(describeExchange)}`);
    for (const x of preflights) assert.equal(x.status, 204, describeExchange(x));
    const first = r["list: Connect GET"];
    assert.equal(first.ok, true, JSON.stringify(first));
    assert.equal(first.records, 3);
    assert.match(String(first.etag), /^W\/"[A-Za-z0-9_-]{22}"$/, "the ETag is exposed to the page");
    assert.equal(first.cacheControl, `private, max-age=${LIST_CACHE_MAX_AGE_S}`);

    // The browser asked again with If-None-Match, got 304 and used the
    // answer it had stored: a fresh answer has a new upstream request id.
    const again = r["list again: revalidated with If-None-Match"];
    assert.equal(again.ok, true, JSON.stringify(again));
    assert.equal(again.requestId, first.requestId, "the revalidated answer is the stored one");
    assert.equal(again.etag, first.etag);
    assert.ok(
      exchanges.some((x) => x.method === "GET" && x.ifNoneMatch === first.etag && x.wireStatus === 304),
      `no GET revalidated with 304: ${exchanges.map(describeExchange).join("; ")}`,
    );

    const stream = r["stream: Connect over fetch"];
    assert.deepEqual(stream, { ok: true, messages: 3, records: STREAM_RECORDS, lastResumeToken: "" });

    for (const name of ["error: Connect", "error: gRPC-Web (status in exposed headers)"]) {
      assert.equal(r[name].ok, false, name);
      assert.equal(r[name].code, "NotFound", `${name}: ${JSON.stringify(r[name])}`);
      assert.equal(r[name].reason, "InvalidDesktopId.NotFound", `${name}: the google.rpc.ErrorInfo detail is readable`);
    }
    assert.equal(r["no token: Connect"].code, "Unauthenticated", JSON.stringify(r["no token: Connect"]));
  });

  it("answers nothing a page of another origin can read", async () => {
    const { results: r, exchanges } = await visit(other.origin);
    assert.equal(Object.keys(r).length, 6);
    for (const [name, outcome] of Object.entries(r)) {
      assert.equal(outcome.ok, false, `${name}: ${JSON.stringify(outcome)}`);
      assert.equal(outcome.code, "Unknown", `${name}: the page read an answer: ${JSON.stringify(outcome)}`);
    }
    // Every call needed a preflight (the token, or Connect-Timeout-Ms);
    // the gateway answered each without Access-Control-Allow-Origin, so
    // Chromium sent none of the calls.
    const preflights = exchanges.filter((x) => x.type === "Preflight");
    assert.equal(preflights.length, 6, exchanges.map(describeExchange).join("; "));
    for (const x of preflights) assert.equal(x.status, 204, describeExchange(x));
    const calls = exchanges.filter((x) => x.type !== "Preflight");
    assert.ok(calls.length > 0 && calls.every((x) => x.status === undefined && x.failed === "PreflightMissingAllowOriginHeader"),
      `calls that Chromium sent anyway: ${calls.map(describeExchange).join("; ")}`);
  });
});

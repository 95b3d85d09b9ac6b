// The page of the browser test (src/browser.test.ts): served from another
// origin than the gateway's, it calls the gateway with
// @connectrpc/connect-web and the generated client, as a dashboard would,
// and writes what it saw into the DOM as JSON (<pre id="results">), then
// marks <body data-done>. The test bundles it with esbuild.
//
// Query parameters: gateway (base URL), token (bearer token), desktop
// (one with more than 100 records, so that the stream has several
// messages), missing (a desktop the upstream does not know).

import { Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

import { ImageRecordsService } from "../gen/ecd/imagerecords/v1/image_records_pb.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";

const params = new URLSearchParams(location.search);
const baseUrl = params.get("gateway") ?? "";
const token = params.get("token") ?? "";
const desktopId = params.get("desktop") ?? "";
const missing = params.get("missing") ?? "";
const regionId = "cn-hangzhou";
// Bounds every call, so that the page always finishes.
const timeoutMs = 20_000;

/** The bearer token of --auth-tokens-file, as a page would send it. */
const bearer: Interceptor = (next) => (req) => {
  req.header.set("Authorization", `Bearer ${token}`);
  return next(req);
};

/** Makes the browser revalidate its cached answer (If-None-Match) instead of reusing it. */
const revalidating: typeof fetch = (input, init) => globalThis.fetch(input, { ...init, cache: "no-cache" });

const connect = (opts: { auth?: boolean; revalidate?: boolean } = {}): Transport =>
  createConnectTransport({
    baseUrl,
    useHttpGet: true, // List is NO_SIDE_EFFECTS: a GET
    interceptors: opts.auth === false ? [] : [bearer],
    fetch: opts.revalidate ? revalidating : undefined,
  });

type Outcome = Record<string, unknown>;
const results: Record<string, Outcome> = {};

async function check(name: string, call: () => Promise<Outcome>): Promise<void> {
  try {
    results[name] = { ok: true, ...(await call()) };
  } catch (err) {
    const e = ConnectError.from(err);
    const info = e.findDetails(ErrorInfoSchema)[0];
    results[name] = { ok: false, code: Code[e.code], message: e.rawMessage, ...(info ? { reason: info.reason } : {}) };
  }
}

async function list(transport: Transport, desktop: string): Promise<Outcome> {
  let etag: string | null = null;
  let cacheControl: string | null = null;
  const page = await createClient(ImageRecordsService, transport).listImageModifiedRecords(
    { regionId, desktopId: desktop, pageSize: 3 },
    {
      timeoutMs,
      onHeader: (h) => {
        etag = h.get("Etag");
        cacheControl = h.get("Cache-Control");
      },
    },
  );
  return { records: page.records.length, totalCount: page.totalCount, requestId: page.requestId, etag, cacheControl };
}

async function main(): Promise<void> {
  await check("list: Connect GET", () => list(connect(), desktopId));
  await check("list again: revalidated with If-None-Match", () => list(connect({ revalidate: true }), desktopId));
  await check("stream: Connect over fetch", async () => {
    const client = createClient(ImageRecordsService, connect());
    let messages = 0;
    let records = 0;
    let lastResumeToken = "";
    for await (const m of client.streamImageModifiedRecords({ regionId, desktopId }, { timeoutMs })) {
      messages++;
      records += m.records.length;
      lastResumeToken = m.resumeToken;
    }
    return { messages, records, lastResumeToken };
  });
  await check("error: Connect", () => list(connect(), missing));
  await check("error: gRPC-Web (status in exposed headers)", () =>
    list(createGrpcWebTransport({ baseUrl, interceptors: [bearer] }), missing),
  );
  await check("no token: Connect", () => list(connect({ auth: false }), desktopId));

  const out = document.createElement("pre");
  out.id = "results";
  out.textContent = JSON.stringify(results, null, 2);
  document.body.append(out);
  document.body.dataset.done = "true";
}

void main();

// The bare pass-through proxy (bench/bare-proxy.ts) on Hono and @hono/node-server instead of
// node:http: what the service's HTTP framework costs by itself (`npm run bench:profile -- framework`).
import { serve } from "@hono/node-server";
import { Hono } from "hono";
import { randomUUID } from "node:crypto";
import type { AppEnv } from "../src/http/env.js";
import { readBody } from "../src/http/middleware/body.js";
import { createUpstreamClient, type UpstreamOperation } from "../src/upstream/client.js";

const upstream = createUpstreamClient({ baseUrl: new URL(process.env.UPSTREAM!), timeoutMs: 10_000 });
const apiKey = process.env.API_KEY!;
// The body read as the service reads it (from Node's IncomingMessage, with its limit).
const app = new Hono<AppEnv>();
app.use(readBody(32 * 1024)); // the service's MAX_BODY_BYTES
app.get("/healthz", (c) => c.text("ok"));
for (const [path, op] of [["/api/handle/create", "handle_create"], ["/api/handle/domain/enable", "domain_enable"]] as const) {
  app.post(path, async (c) => {
    let body: Record<string, string> = {};
    try {
      body = JSON.parse(c.get("bodyText") ?? "");
    } catch {
      // forwarded as {}
    }
    const r = await upstream.call(op as UpstreamOperation, { apiKey, requestId: randomUUID(), body });
    if (r.kind !== "answer") return c.body(null, 502);
    return c.body(r.body as unknown as ArrayBuffer, r.status as 200, { "content-type": "application/json" });
  });
}
serve({ fetch: app.fetch, hostname: "127.0.0.1", port: Number(process.env.PORT) });

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { OpenApiGeneratorV31, type OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { z } from "@hono/zod-openapi";
import { Hono } from "hono";
import { isMigrated } from "../../db/migrate.js";
import { describeError } from "../../log.js";
import type { AppEnv } from "../env.js";
import { requireMetricsReader } from "../middleware/auth.js";
import { JWKS_MAX_AGE_S, WAIT_AFTER_MS } from "../../services/tokens.js";
import { withTimeout } from "../../time.js";

/** How long a scrape waits for the database's count of our connections before going without it. */
const POOL_READ_TIMEOUT_MS = 500;

const require = createRequire(import.meta.url);
const swaggerDir = (() => {
  try {
    return require("swagger-ui-dist/absolute-path.js")() as string;
  } catch {
    return undefined;
  }
})();

// Served from our own origin: internal networks often reach no CDN.
const DOCS_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>haltman-bff API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>`;
const DOCS_INIT = `window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#ui", deepLinking: true });`;

export function opsRoutes(registry: OpenAPIRegistry, info: { version: string }) {
  const app = new Hono<AppEnv>();
  const doc = (path: string, summary: string, responses: Record<number, { description: string; schema?: z.ZodType; type?: string }>) =>
    registry.registerPath({
      method: "get",
      path,
      summary,
      tags: ["Operations"],
      responses: Object.fromEntries(
        Object.entries(responses).map(([status, r]) => [
          status,
          r.schema ? { description: r.description, content: { [r.type ?? "application/json"]: { schema: r.schema } } } : { description: r.description },
        ]),
      ),
    });
  const Status = z.object({
    status: z.string(),
    reason: z.string().optional(),
    error: z.string().optional(),
    message: z.string().optional(),
    request_id: z.string().optional(),
  });
  doc("/healthz", "The process lives", { 200: { description: "alive", schema: Status } });
  doc("/readyz", "The database answers and is migrated", { 200: { description: "ready", schema: Status }, 503: { description: "not ready", schema: Status } });
  doc("/metrics", "Prometheus metrics (Bearer METRICS_TOKEN, or an admin's access token)", {
    200: { description: "Prometheus text format", schema: z.string(), type: "text/plain" },
    401: { description: "no token, or not METRICS_TOKEN nor a valid access token", schema: Status },
    403: { description: "an access token of a user who is not an admin", schema: Status },
  });
  doc("/openapi.json", "This document (OpenAPI 3.1)", { 200: { description: "the document", schema: z.record(z.string(), z.unknown()) } });
  doc("/docs", "The browsable reference (Swagger UI) of this document", { 200: { description: "an HTML page", schema: z.string(), type: "text/html" } });
  doc("/.well-known/jwks.json", "Public keys that verify access tokens (ES256, with kid)", {
    200: { description: "a JWK set", schema: z.object({ keys: z.array(z.record(z.string(), z.unknown())) }) },
  });

  app.get("/healthz", (c) => c.json({ status: "ok" }));

  app.get("/readyz", async (c) => {
    // Not ready is an error answer like any other (the contract's body), with the probe's status.
    const notReady = (reason: string) =>
      c.json({ status: "not_ready", reason, error: "unavailable", message: `not ready: ${reason}`, request_id: c.get("requestId") }, 503);
    try {
      if (await isMigrated(c.get("deps").db)) return c.json({ status: "ready" });
      return notReady("database not migrated");
    } catch (err) {
      c.get("log").warn({ err: describeError(err) }, "readiness check failed");
      return notReady("database unreachable");
    }
  });

  app.get("/metrics", requireMetricsReader, async (c) => {
    const { metrics, database, passwords } = c.get("deps");
    metrics.dbPoolMax.set(database.poolMax);
    const hashing = passwords.stats();
    metrics.passwordHashes.set({ state: "running" }, hashing.running);
    metrics.passwordHashes.set({ state: "waiting" }, hashing.waiting);
    try {
      metrics.dbPoolConnections.reset();
      // (bounded: a database that has stopped answering must not hold the scrape, which needs none)
      for (const [state, n] of Object.entries(await withTimeout(database.poolConnections(), POOL_READ_TIMEOUT_MS))) {
        metrics.dbPoolConnections.set({ state }, n);
      }
    } catch {
      // the database being down is itself visible in the request metrics and /readyz
    }
    return c.text(await metrics.registry.metrics(), 200, { "Content-Type": metrics.registry.contentType });
  });

  app.get("/.well-known/jwks.json", async (c) => {
    const { tokens } = c.get("deps");
    const set = await tokens.jwks(); // (waits for a stale copy's read, a second at most)
    // A copy that could not be read again in time (the database down) is served, but not for caching:
    // PUBLISH_LEAD_MS counts on no cached JWKS older than WAIT_AFTER_MS + JWKS_MAX_AGE_S.
    c.header("Cache-Control", tokens.keysAgeMs() > WAIT_AFTER_MS ? "no-store" : `public, max-age=${JWKS_MAX_AGE_S}`);
    return c.json(set);
  });

  let document: unknown;
  app.get("/openapi.json", (c) => {
    document ??= new OpenApiGeneratorV31(registry.definitions).generateDocument({
      openapi: "3.1.0",
      info: {
        title: "haltman-bff",
        version: info.version,
        description:
          "Backend-for-frontend proxy and key vault for the Haltman mail-forwarding API: a team shares Haltman access without sharing keys.",
      },
      servers: [{ url: "/" }],
    });
    return c.json(document);
  });

  app.get("/docs", (c) => {
    c.header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'");
    return c.html(DOCS_HTML);
  });
  app.get("/docs/init.js", (c) => c.body(DOCS_INIT, 200, { "Content-Type": "text/javascript; charset=utf-8" }));
  const assets: Record<string, string> = { "swagger-ui.css": "text/css; charset=utf-8", "swagger-ui-bundle.js": "text/javascript; charset=utf-8" };
  const cache = new Map<string, Buffer>();
  app.get("/docs/assets/:file", (c) => {
    const file = c.req.param("file");
    const type = assets[file];
    if (!type || !swaggerDir) return c.notFound();
    let body = cache.get(file);
    if (!body) {
      body = readFileSync(join(swaggerDir, file));
      cache.set(file, body);
    }
    return c.body(new Uint8Array(body), 200, { "Content-Type": type, "Cache-Control": "public, max-age=86400" });
  });

  return app;
}

// createApp(deps): the whole HTTP surface, with no side effects of its own. The entry file wires
// real dependencies and listens; tests build the same app over a test database.
import { OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { Hono, type Context } from "hono";
import { cors } from "hono/cors";
import { HTTPException } from "hono/http-exception";
import type { Deps } from "./deps.js";
import { AppError, type ErrorCode } from "./errors.js";
import type { AppEnv } from "./http/env.js";
import { readBody } from "./http/middleware/body.js";
import { requestContext, requireHost } from "./http/middleware/request-context.js";
import { auditRoutes } from "./http/routes/audit.js";
import { authRoutes } from "./http/routes/auth.js";
import { keyRoutes } from "./http/routes/keys.js";
import { opsRoutes } from "./http/routes/ops.js";
import { proxyRoutes } from "./http/routes/proxy.js";
import { userRoutes } from "./http/routes/users.js";
import type { RefusedRequest } from "./http/server.js";
import { accessLogger, describeError } from "./log.js";
import { HashingUnavailable } from "./services/passwords.js";
import { isDatabaseUnavailable } from "./db/unavailable.js";

export const MAX_BODY_BYTES = 32 * 1024;
export const VERSION = "0.1.0";

export function errorBody(c: Context<AppEnv>, code: ErrorCode, message: string, extras: Record<string, unknown> = {}) {
  return { error: code, message, request_id: c.get("requestId"), ...extras };
}

/**
 * The log line and the metric sample of a request the server answered itself, before any route
 * (http/server.ts: one Node's parser refused, or that did not arrive in time), as the app's own
 * requests have theirs: its X-Request-Id is found in the log, and `route="unparsed"` counts them.
 */
export function refusedRequestRecorder(deps: Pick<Deps, "log" | "metrics">): (r: RefusedRequest) => void {
  const access = accessLogger(deps.log);
  return (r) => {
    deps.metrics.httpRequests.inc({ route: "unparsed", method: "unknown", status: String(r.status) });
    access.info({ ...(r.requestId ? { request_id: r.requestId } : {}), route: "unparsed", status: r.status, error: r.error, parser_code: r.code, ip: r.ip }, "request");
  };
}

export function createApp(deps: Deps) {
  const app = new Hono<AppEnv>();
  const registry = new OpenAPIRegistry();
  registry.registerComponent("securitySchemes", "bearerAuth", { type: "http", scheme: "bearer", bearerFormat: "JWT" });

  app.use(requestContext(deps));

  // One log line and one metric sample per request. The path logged is the route pattern plus
  // the path without its query string (queries carry audit filters, nothing secret, but unbounded).
  const access = accessLogger(deps.log);
  app.use(async (c, next) => {
    const started = performance.now();
    await next();
    const seconds = (performance.now() - started) / 1000;
    const route = c.req.routePath && c.req.routePath !== "/*" ? c.req.routePath : "unmatched";
    deps.metrics.httpRequests.inc({ route, method: c.req.method, status: String(c.res.status) });
    deps.metrics.httpDuration.observe({ route, method: c.req.method }, seconds);
    const user = c.get("user");
    access.info(
      {
        request_id: c.get("requestId"),
        method: c.req.method,
        // A long segment that is not one of our ids may be a key or token pasted into a URL.
        path: c.req.path.replace(/[^/]{40,}/g, "[redacted]"),
        route,
        status: c.res.status,
        ms: Math.round(seconds * 10_000) / 10,
        ip: c.get("clientIp"),
        ...(user ? { user_id: user.id } : {}),
      },
      "request",
    );
  });

  // Every answer may carry a token or user data: never cached, never sniffed.
  app.use(async (c, next) => {
    await next();
    c.res.headers.set("X-Content-Type-Options", "nosniff");
    if (!c.res.headers.has("Cache-Control")) c.res.headers.set("Cache-Control", "no-store");
    c.res.headers.set("Referrer-Policy", "no-referrer");
  });

  if (deps.config.corsOrigins.length > 0) {
    const allowed = new Set(deps.config.corsOrigins);
    app.use(
      cors({
        origin: (origin) => (allowed.has(origin) ? origin : null),
        allowMethods: ["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allowHeaders: ["Authorization", "Content-Type", "Idempotency-Key", "X-Key-Id", "X-Request-Id"],
        exposeHeaders: ["RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id", "Idempotent-Replayed"],
        maxAge: 600,
      }),
    );
  }

  app.use(requireHost());

  // First of the contract's checks: the size of the body, counted as it streams in.
  app.use(readBody(MAX_BODY_BYTES));

  app.route("/", opsRoutes(registry, { version: VERSION }));
  app.route("/", authRoutes(registry));
  app.route("/", userRoutes(registry));
  app.route("/", keyRoutes(registry));
  app.route("/", auditRoutes(registry));
  app.route("/", proxyRoutes(registry));

  app.notFound((c) => c.json(errorBody(c, "not_found", `no route for ${c.req.method} ${c.req.path}`), 404));

  app.onError((err, c) => {
    if (err instanceof AppError) {
      for (const [name, value] of Object.entries(err.headers)) c.header(name, value);
      if (err.extras.retry_after !== undefined) c.header("Retry-After", String(err.extras.retry_after));
      if (err.status >= 500) c.get("log").warn({ err: describeError(err.cause ?? err), error: err.code }, err.message);
      return c.json(errorBody(c, err.code, err.message, err.extras), err.status as 400);
    }
    if (err instanceof HashingUnavailable) {
      c.get("log").error({ err: describeError(err) }, "password hashing unavailable");
      return c.json(errorBody(c, "unavailable", "password hashing is unavailable right now; retry shortly"), 503);
    }
    if (isDatabaseUnavailable(err)) {
      c.get("log").error({ err: describeError(err) }, "database unavailable");
      return c.json(errorBody(c, "unavailable", "the service's database is unavailable; nothing was changed"), 503);
    }
    if (err instanceof HTTPException && err.status < 500) {
      const code: ErrorCode = err.status === 413 ? "payload_too_large" : err.status === 401 ? "unauthorized" : err.status === 404 ? "not_found" : "invalid_params";
      return c.json(errorBody(c, code, err.message || "bad request"), err.status);
    }
    c.get("log").error({ err: describeError(err) }, "unhandled error");
    return c.json(errorBody(c, "internal_error", "internal error; the request id identifies it in the service's logs"), 500);
  });

  return app;
}

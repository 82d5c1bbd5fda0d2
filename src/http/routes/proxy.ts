import type { OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { z } from "@hono/zod-openapi";
import { Hono, type Context } from "hono";
import { proxyCall } from "../../services/proxy.js";
import type { UpstreamOperation } from "../../upstream/client.js";
import type { AppEnv } from "../env.js";
import { requestMeta } from "../middleware/request-context.js";
import { defineRoute } from "../route.js";

const MAPPING =
  "Upstream's 200, 400, 403, 404 and 409 JSON answers pass through unchanged. Upstream 401 becomes 502 `upstream_key_rejected` " +
  "(the key is flagged); 429 becomes 429 `rate_limited` with `reason: upstream`; 5xx becomes 502 `upstream_error`; no answer in " +
  "time 504 `upstream_timeout`; refused, reset, redirect or non-JSON 502 `upstream_unavailable`. Every answer carries " +
  "`RateLimit-Policy` and `RateLimit` (policies `user`, `key`, `global`).";

const KeyHeader = z.object({
  "x-key-id": z.string().optional().openapi({ description: "the stored key to use; needed when the caller may use several" }),
});

export function proxyRoutes(registry: OpenAPIRegistry) {
  const app = new Hono<AppEnv>();
  const tags = ["Haltman (proxied)"];

  const handler = (op: UpstreamOperation) => async (c: Context<AppEnv>) => {
    const deps = c.get("deps");
    const user = c.get("user");
    const answer = await proxyCall(deps, op, {
      user,
      meta: requestMeta(c),
      text: c.get("bodyText") ?? "",
      contentType: c.req.header("content-type") ?? "",
      keyIdHeader: nonEmpty(c.req.header("x-key-id")),
      idempotencyKey: c.req.header("idempotency-key"),
      log: c.get("log"),
    });
    return c.body(answer.body, answer.status as 200, answer.headers);
  };

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/api/handle/create",
      summary: "Create a handle (upstream's path and body)",
      description: `${MAPPING} Takes \`Idempotency-Key\` (at most 255 characters): a repeat with the same body within 24 h replays the first answer (\`Idempotent-Replayed: true\`).`,
      tags,
      access: "user",
      headers: KeyHeader.extend({ "idempotency-key": z.string().max(255).optional() }),
      // Documented here; parsed and validated by the proxy itself, so that refusals are audited.
      docBody: z.object({ handle: z.string().openapi({ example: "alice" }) }),
      responses: {
        200: { description: "upstream's answer", schema: z.object({ ok: z.boolean(), created: z.boolean(), handle: z.string(), goto: z.string() }) },
        403: { description: "upstream's refusal, or `forbidden`: the caller may use no key" },
        404: { description: "`not_found`: an X-Key-Id the caller may not use" },
        409: { description: "upstream's alias_taken, or an Idempotency-Key still in flight" },
        422: { description: "idempotency_key_reused" },
        429: { description: "rate_limited" },
        502: { description: "upstream_unavailable, upstream_error, upstream_key_rejected" },
        503: { description: "unavailable: the database or audit store is down; nothing was sent upstream" },
        504: { description: "upstream_timeout" },
      },
    },
    handler("handle_create"),
  );

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/api/handle/domain/enable",
      summary: "Enable a domain for a handle (upstream's path and body)",
      description: MAPPING,
      tags,
      access: "user",
      headers: KeyHeader,
      docBody: z.object({ handle: z.string().openapi({ example: "alice" }), domain: z.string().openapi({ example: "example.com" }) }),
      responses: {
        200: { description: "upstream's answer", schema: z.object({ ok: z.boolean(), updated: z.boolean(), handle: z.string(), domain: z.string(), disabled: z.boolean() }) },
        403: { description: "upstream's refusal, or `forbidden`" },
        404: { description: "upstream's handle_not_found, or `not_found`" },
        409: { description: "upstream's conflict" },
        429: { description: "rate_limited" },
        502: { description: "upstream_unavailable, upstream_error, upstream_key_rejected" },
        503: { description: "unavailable" },
        504: { description: "upstream_timeout" },
      },
    },
    handler("domain_enable"),
  );

  return app;
}

const nonEmpty = (v: string | undefined) => (v !== undefined && v.trim() !== "" ? v : undefined);

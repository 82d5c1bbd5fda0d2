// Every route is declared once: its schema validates the request and documents it in OpenAPI.
// The middleware order is the contract's: (body size, in app.ts) -> authentication -> body
// parsing and validation -> the handler.
import { OpenAPIRegistry, type RouteConfig } from "@asteasolutions/zod-to-openapi";
import type { Context, Hono, MiddlewareHandler } from "hono";
import { z } from "@hono/zod-openapi";
import { invalidParams } from "../errors.js";
import type { AppEnv } from "./env.js";
import { requireAdmin, requireUser } from "./middleware/auth.js";
import { jsonBody, refuseUnstorableText } from "./middleware/json-body.js";
import { ErrorBody } from "./schemas.js";

export type Access = "public" | "user" | "admin";

type Responses = Record<number, { description: string; schema?: z.ZodType; contentType?: string | string[] }>;

export type RouteSpec<B extends z.ZodType | undefined, Q extends z.ZodType | undefined> = {
  method: "get" | "post" | "patch" | "delete";
  path: string;
  summary: string;
  description?: string;
  tags: string[];
  access: Access;
  body?: B;
  /** a body documented in OpenAPI but parsed by the handler itself */
  docBody?: z.ZodType;
  query?: Q;
  /** query parameters for which empty is a value for the schema to judge, not "unset" (the default) */
  emptyIsAValue?: readonly string[];
  /** extra middleware after validation (e.g. the proxy's key choice) */
  after?: MiddlewareHandler<AppEnv>[];
  headers?: z.ZodObject;
  responses: Responses;
};

type Input<B, Q> = {
  body: B extends z.ZodType ? z.infer<B> : undefined;
  query: Q extends z.ZodType ? z.infer<Q> : undefined;
};

// (503: the database is down, on every route)
const COMMON_ERRORS: Record<Access, number[]> = {
  public: [400, 429, 503],
  user: [400, 401, 503],
  admin: [400, 401, 403, 503],
};

export function defineRoute<B extends z.ZodType | undefined = undefined, Q extends z.ZodType | undefined = undefined>(
  app: Hono<AppEnv>,
  registry: OpenAPIRegistry,
  spec: RouteSpec<B, Q>,
  handler: (c: Context<AppEnv>, input: Input<B, Q>) => Response | Promise<Response>,
): void {
  const responses: RouteConfig["responses"] = {};
  for (const [status, r] of Object.entries(spec.responses)) {
    responses[status] = r.schema
      ? { description: r.description, content: Object.fromEntries([r.contentType ?? "application/json"].flat().map((t) => [t, { schema: r.schema! }])) }
      : { description: r.description };
  }
  for (const status of [...COMMON_ERRORS[spec.access], ...(spec.body ?? spec.docBody ? [413] : []), 500]) {
    responses[status] ??= { description: "error", content: { "application/json": { schema: ErrorBody } } };
  }
  registry.registerPath({
    method: spec.method,
    path: spec.path.replace(/:([A-Za-z_]+)/g, "{$1}"),
    summary: spec.summary,
    ...(spec.description ? { description: spec.description } : {}),
    tags: spec.tags,
    ...(spec.access === "public" ? {} : { security: [{ bearerAuth: [] }] }),
    request: {
      ...(spec.body ?? spec.docBody ? { body: { required: true, content: { "application/json": { schema: (spec.body ?? spec.docBody)! } } } } : {}),
      ...(spec.query ? { query: spec.query as z.ZodObject } : {}),
      ...(spec.headers ? { headers: spec.headers } : {}),
      ...(/:[A-Za-z_]+/.test(spec.path)
        ? { params: z.object(Object.fromEntries([...spec.path.matchAll(/:([A-Za-z_]+)/g)].map((m) => [m[1]!, z.string()]))) }
        : {}),
    },
    responses,
  });

  const chain: MiddlewareHandler<AppEnv>[] = [];
  if (spec.access !== "public") chain.push(requireUser);
  if (spec.access === "admin") chain.push(requireAdmin);
  if (spec.body) chain.push(jsonBody(spec.body));
  chain.push(...(spec.after ?? []));
  app.on([spec.method.toUpperCase()], [spec.path], ...chain, async (c) => {
    let query: unknown;
    if (spec.query) {
      // A parameter sent empty (`?actor=&handle=alice`, as a form sends every field) is unset,
      // unless the route says empty means something.
      const given = Object.fromEntries(Object.entries(c.req.query()).filter(([k, v]) => v !== "" || spec.emptyIsAValue?.includes(k)));
      const parsed = spec.query.safeParse(given);
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!;
        const field = issue.path.map(String).join(".") || "query";
        throw invalidParams(field, `${field}: ${issue.message}`);
      }
      refuseUnstorableText(parsed.data, "query");
      query = parsed.data;
    }
    return handler(c, { body: c.get("body"), query } as Input<B, Q>);
  });
}

import type { MiddlewareHandler } from "hono";
import type { z } from "zod";
import { AppError, invalidParams } from "../../errors.js";
import type { AppEnv } from "../env.js";

const JSON_TYPE = /^application\/([a-z0-9.+-]*\+)?json\s*(;|$)/i;

/**
 * Parses and validates a JSON body into c.var.body. Text that does not parse is `invalid_json`;
 * JSON of the wrong shape, or a body sent as another content type (not parsed, as upstream does),
 * is `invalid_params` naming the first bad field. Unknown fields are dropped by the schema.
 */
export function jsonBody<S extends z.ZodType>(schema: S): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    let value: unknown = {};
    const type = c.req.header("content-type") ?? "";
    const text = c.get("bodyText") ?? "";
    if (JSON_TYPE.test(type) && text.trim() !== "") {
      try {
        value = JSON.parse(text);
      } catch {
        throw new AppError("invalid_json", "the request body is not valid JSON");
      }
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw invalidParams("body", "the request body must be a JSON object");
    }
    const nul = fieldWithNul(value);
    if (nul !== undefined) throw invalidParams(nul, `${nul}: must not contain NUL characters`);
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const field = issue.path.map(String).join(".") || "body";
      const hint = JSON_TYPE.test(type) ? "" : " (send the body as JSON with Content-Type: application/json)";
      throw invalidParams(field, `${field}: ${issue.message}${hint}`);
    }
    c.set("body", parsed.data);
    await next();
  };
}

/**
 * The first field (dotted path) whose string, or key, holds a NUL character: PostgreSQL cannot
 * store one in text, so such input is refused here rather than failing in the database.
 */
export function fieldWithNul(value: unknown, path = ""): string | undefined {
  if (typeof value === "string") return value.includes("\0") ? path || "body" : undefined;
  if (value === null || typeof value !== "object") return undefined;
  for (const [k, v] of Object.entries(value)) {
    const here = path ? `${path}.${k}` : k;
    if (k.includes("\0")) return here;
    const found = fieldWithNul(v, here);
    if (found !== undefined) return found;
  }
  return undefined;
}

import type { MiddlewareHandler } from "hono";
import type { z } from "zod";
import { AppError, invalidParams } from "../../errors.js";
import type { AppEnv } from "../env.js";

const JSON_TYPE = /^application\/([a-z0-9.+-]*\+)?json\s*(;|$)/i;

/**
 * Parses and validates a JSON body into c.var.body. Text that does not parse is `invalid_json`;
 * JSON of the wrong shape is `invalid_params` naming the first bad field, and a body sent as
 * another content type (not parsed, as upstream does) `invalid_params` naming `body`; no body
 * at all is `{}`. Unknown fields are dropped by the schema, and
 * whatever is in them is never looked at.
 */
export function jsonBody<S extends z.ZodType>(schema: S): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    let value: unknown = {};
    const type = c.req.header("content-type") ?? "";
    const text = c.get("bodyText") ?? "";
    if (text.trim() !== "") {
      // A body of another type is not read (as upstream does), and not taken as no body either: a
      // PATCH whose every field is optional would answer 200 having changed nothing.
      if (!JSON_TYPE.test(type)) throw invalidParams("body", "the request body must be JSON, sent with Content-Type: application/json");
      try {
        value = JSON.parse(text);
      } catch {
        throw new AppError("invalid_json", "the request body is not valid JSON");
      }
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw invalidParams("body", "the request body must be a JSON object");
    }
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const field = issue.path.map(String).join(".") || "body";
      const hint = JSON_TYPE.test(type) ? "" : " (send the body as JSON with Content-Type: application/json)";
      throw invalidParams(field, `${field}: ${issue.message}${hint}`);
    }
    refuseUnstorableText(parsed.data, "body");
    c.set("body", parsed.data);
    await next();
  };
}

// A NUL, which PostgreSQL cannot store in text, or a UTF-16 surrogate without its pair (JSON's
// "\ud800"), which it refuses in jsonb (the audit records' detail): with the u flag a pair is one
// code point and only a lone surrogate is \p{Cs}.
const UNSTORABLE = /\0|\p{Cs}/u;

/**
 * The first field (dotted path) whose string, or key, PostgreSQL could not store (UNSTORABLE),
 * and why: such input is refused here rather than failing in the database as a 500.
 */
export function unstorableField(value: unknown, path = ""): { field: string; why: string } | undefined {
  const why = (s: string) => (s.includes("\0") ? "must not contain NUL characters" : "must be valid Unicode (it holds half of a surrogate pair)");
  if (typeof value === "string") return UNSTORABLE.test(value) ? { field: path, why: why(value) } : undefined;
  if (value === null || typeof value !== "object") return undefined;
  for (const [k, v] of Object.entries(value)) {
    const here = path ? `${path}.${k}` : k;
    if (UNSTORABLE.test(k)) return { field: here, why: why(k) };
    const found = unstorableField(v, here);
    if (found !== undefined) return found;
  }
  return undefined;
}

/** Throws `invalid_params` naming the first field of validated input that could not be stored. */
export function refuseUnstorableText(value: unknown, whole: string): void {
  const bad = unstorableField(value);
  if (bad) {
    const field = bad.field || whole;
    throw invalidParams(field, `${field}: ${bad.why}`);
  }
}

// Request and response shapes shared by the routers. `z` is zod with `.openapi()` metadata.
import { z } from "@hono/zod-openapi";
import { USERNAME_RE } from "../config.js";
import { PASSWORD_MAX, PASSWORD_MIN, passwordLength } from "../services/passwords.js";

export const ErrorBody = z
  .object({
    error: z.string().openapi({ example: "invalid_params" }),
    message: z.string(),
    request_id: z.string(),
    field: z.string().optional(),
    reason: z.string().optional(),
    retry_after: z.number().int().optional(),
    upstream_status: z.number().int().optional(),
  })
  .openapi("Error");

/** A password as given: never trimmed; 8 to 1024 characters (code points). */
export const Password = z
  .string({ error: "expected a string" })
  .refine((p) => passwordLength(p) >= PASSWORD_MIN && passwordLength(p) <= PASSWORD_MAX, {
    error: `expected ${PASSWORD_MIN} to ${PASSWORD_MAX} characters`,
  });

/** A new username: 3 to 64 of a-z 0-9 . _ -, compared and stored lower-cased. */
export const Username = z
  .string({ error: "expected a string" })
  .transform((u) => u.toLowerCase())
  .refine((u) => USERNAME_RE.test(u), { error: "expected 3 to 64 of a-z 0-9 . _ -" })
  .openapi({ example: "alice", type: "string" });

export const Role = z.enum(["admin", "member"], { error: 'expected "admin" or "member"' });

export const Uuid = z.uuid({ error: "expected a UUID" });

export const UserView = z
  .object({ id: z.string(), username: z.string(), role: Role })
  .openapi("User");

export const RatePolicyText = z
  .string({ error: "expected a string" })
  .regex(/^\d{1,9}\/(s|min|h|d)$/, { error: "expected <count>/<s|min|h|d>, e.g. 10/min" })
  .refine((s) => Number(s.split("/")[0]) >= 1, { error: "the count must be at least 1" });

export const UserAdminView = z
  .object({
    id: z.string(),
    username: z.string(),
    role: Role,
    disabled: z.boolean(),
    rate_limits: z.object({ handle_create: z.string().optional(), domain_enable: z.string().optional() }),
    created_at: z.string(),
  })
  .openapi("UserAdmin");

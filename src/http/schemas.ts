// Request and response shapes shared by the routers. `z` is zod with `.openapi()` metadata.
import { z } from "@hono/zod-openapi";
import { normaliseUsername } from "../config.js";
import { isRealInstant, parseInstant } from "../time.js";
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

/**
 * A password's half of a surrogate pair as argon2 has always hashed it: UTF-8 has no such thing,
 * and Node encodes it as U+FFFD. A password is never stored as text, so it is taken, not refused
 * (one set with it before must keep logging in).
 */
export const asHashed = (p: string) => p.replace(/\p{Cs}/gu, "\uFFFD");

/** A password as given: never trimmed; 8 to 1024 characters (code points). */
export const Password = z
  .string({ error: "expected a string" })
  .refine((p) => passwordLength(p) >= PASSWORD_MIN && passwordLength(p) <= PASSWORD_MAX, {
    error: `expected ${PASSWORD_MIN} to ${PASSWORD_MAX} characters`,
  })
  .transform(asHashed);

/** A new username: 3 to 64 of a-z 0-9 . _ -, compared and stored lower-cased. */
export const Username = z
  .string({ error: "expected a string" })
  .refine((u) => normaliseUsername(u) !== undefined, { error: "expected 3 to 64 of a-z 0-9 . _ -" })
  .transform((u) => normaliseUsername(u)!)
  .openapi({ example: "alice", type: "string" });

/**
 * An ISO 8601 date or date-time that names a real day ("2021-02-30" is refused, not moved to
 * March); without a zone, in UTC.
 */
export const Instant = z
  .string({ error: "expected an ISO 8601 date or time" })
  .refine(isRealInstant, { error: "expected an ISO 8601 date or time, e.g. 2026-11-23T10:00:00Z" })
  .transform(parseInstant);


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

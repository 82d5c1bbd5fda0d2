import { createHash, timingSafeEqual } from "node:crypto";
import type { MiddlewareHandler } from "hono";
import { forbidden, unauthorized } from "../../errors.js";
import type { AppEnv } from "../env.js";

/**
 * Bearer access token -> verified claims (signature checks cached per token) -> live session
 * (checked against the database at most every SESSION_CHECK_TTL_MS). Role and disabled state
 * come from the database, never from the token, so a demotion takes effect within that bound.
 */
export const requireUser: MiddlewareHandler<AppEnv> = async (c, next) => {
  const { tokens, sessions } = c.get("deps");
  const claims = await tokens.verify(bearerToken(c.req.header("authorization")));
  if (!claims) throw unauthorized("invalid or expired access token");
  const session = await sessions.check(claims.sid);
  if (!session || !session.active || session.userId !== claims.sub) throw unauthorized("this session has ended; log in again");
  c.set("user", { id: session.userId, username: session.username, role: session.role, sessionId: session.sessionId });
  await next();
};

export const requireAdmin: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (c.get("user").role !== "admin") throw forbidden("this needs the admin role");
  await next();
};

/** The token of an `Authorization: Bearer <token>` header, or a 401 for a missing or malformed one. */
function bearerToken(header: string | undefined): string {
  const m = header ? /^Bearer[ ]+([A-Za-z0-9._~+/-]+=*)$/i.exec(header) : null;
  if (!m) throw unauthorized(header ? "malformed Authorization header; expected: Bearer <access token>" : "missing bearer token");
  return m[1]!;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/**
 * /metrics: the scraper's static METRICS_TOKEN (compared in constant time; needs no database, so
 * the metrics stay readable while it is down), or an admin's access token.
 */
export const requireMetricsReader: MiddlewareHandler<AppEnv> = async (c, next) => {
  const expected = c.get("deps").config.metricsToken;
  if (expected !== undefined) {
    const token = bearerToken(c.req.header("authorization"));
    if (timingSafeEqual(digest(token), digest(expected))) return next();
  }
  return requireUser(c, async () => {
    await requireAdmin(c, next);
  });
};

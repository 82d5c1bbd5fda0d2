import type { OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { z } from "@hono/zod-openapi";
import { Hono } from "hono";
import { changePassword, login, logout, refresh } from "../../services/accounts.js";
import type { AppEnv } from "../env.js";
import { requestMeta } from "../middleware/request-context.js";
import { defineRoute } from "../route.js";
import { Password, UserView, asHashed } from "../schemas.js";

const TokenPair = z
  .object({
    access_token: z.string(),
    token_type: z.literal("Bearer"),
    expires_in: z.number().int().openapi({ description: "seconds until the access token expires" }),
    refresh_token: z.string(),
    user: UserView,
  })
  .openapi("TokenPair");

export function authRoutes(registry: OpenAPIRegistry) {
  const app = new Hono<AppEnv>();
  const tags = ["Accounts and tokens"];

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/v1/auth/login",
      summary: "Log in with a username and password",
      description:
        "The same 401 `invalid_credentials` whether the user is unknown, the password wrong or the account disabled. " +
        "Throttled per account and per client address (429 `rate_limited`, `reason: login`).",
      tags,
      access: "public",
      body: z.object({
        username: z.string({ error: "expected a string" }).min(1, { error: "required" }).max(256, { error: "too long" }),
        password: z.string({ error: "expected a string" }).min(1, { error: "required" }).max(4096, { error: "too long" }).transform(asHashed),
      }),
      responses: { 200: { description: "a new session", schema: TokenPair }, 401: { description: "invalid_credentials" } },
    },
    async (c, { body }) => c.json(await login(c.get("deps"), requestMeta(c), body)),
  );

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/v1/auth/refresh",
      summary: "Trade a refresh token for a new pair",
      description: "The refresh token is spent. Presenting a spent one again revokes its whole session (401).",
      tags,
      access: "public",
      body: z.object({ refresh_token: z.string({ error: "expected a string" }).min(1, { error: "required" }).max(512, { error: "too long" }) }),
      responses: { 200: { description: "a new pair", schema: TokenPair }, 401: { description: "unauthorized" } },
    },
    async (c, { body }) => c.json(await refresh(c.get("deps"), requestMeta(c), body.refresh_token)),
  );

  defineRoute(
    app,
    registry,
    { method: "post", path: "/v1/auth/logout", summary: "End this session", tags, access: "user", responses: { 204: { description: "logged out" } } },
    async (c) => {
      await logout(c.get("deps"), c.get("user"), requestMeta(c));
      return c.body(null, 204);
    },
  );

  defineRoute(
    app,
    registry,
    { method: "get", path: "/v1/auth/me", summary: "Who the token belongs to", tags, access: "user", responses: { 200: { description: "the caller", schema: UserView } } },
    (c) => {
      const { id, username, role } = c.get("user");
      return c.json({ id, username, role });
    },
  );

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/v1/auth/password",
      summary: "Change one's own password",
      description:
        "Every other session of the user is revoked; this one stays. A wrong current password is 400 `invalid_params` " +
        '`field: "current_password"` (not 401, which would make a frontend log its user out).',
      tags,
      access: "user",
      body: z.object({ current_password: z.string({ error: "expected a string" }).max(4096, { error: "too long" }).transform(asHashed), new_password: Password }),
      responses: { 204: { description: "changed" }, 429: { description: "rate_limited: too many wrong current passwords, or the password hashing queue is full" } },
    },
    async (c, { body }) => {
      await changePassword(c.get("deps"), c.get("user"), requestMeta(c), body);
      return c.body(null, 204);
    },
  );

  return app;
}

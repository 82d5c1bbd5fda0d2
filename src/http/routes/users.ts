import type { OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { z } from "@hono/zod-openapi";
import { Hono } from "hono";
import { notFound } from "../../errors.js";
import { createUser, listUsers, updateUser } from "../../services/accounts.js";
import type { AppEnv } from "../env.js";
import { requestMeta } from "../middleware/request-context.js";
import { defineRoute } from "../route.js";
import { Password, RatePolicyText, Role, UserAdminView, UserView, Username, Uuid } from "../schemas.js";

export function userRoutes(registry: OpenAPIRegistry) {
  const app = new Hono<AppEnv>();
  const tags = ["Users (admin)"];

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/v1/admin/users",
      summary: "Create a user",
      tags,
      access: "admin",
      body: z.object({ username: Username, password: Password, role: Role }),
      responses: {
        201: { description: "created", schema: UserView },
        409: { description: "conflict: username taken" },
        429: { description: "rate_limited: the password hashing queue is full" },
      },
    },
    async (c, { body }) => c.json(await createUser(c.get("deps"), c.get("user"), requestMeta(c), body), 201),
  );

  defineRoute(
    app,
    registry,
    {
      method: "get",
      path: "/v1/admin/users",
      summary: "List users",
      tags,
      access: "admin",
      responses: { 200: { description: "every user", schema: z.object({ users: z.array(UserAdminView) }) } },
    },
    async (c) => c.json({ users: await listUsers(c.get("deps").db) }),
  );

  const RateOverride = z.union([RatePolicyText, z.null(), z.literal("").transform(() => null)]).optional();
  defineRoute(
    app,
    registry,
    {
      method: "patch",
      path: "/v1/admin/users/:id",
      summary: "Change a user's role, disable or enable them, or override their rate limits",
      description:
        "Disabling revokes every session of the user. `rate_limits.handle_create` / `domain_enable` take `<count>/<s|min|h|d>`; " +
        "null or an empty string removes the override. The last active admin cannot be demoted or disabled.",
      tags,
      access: "admin",
      body: z.object({
        role: Role.optional(),
        disabled: z.boolean({ error: "expected true or false" }).optional(),
        rate_limits: z
          .object({ handle_create: RateOverride, domain_enable: RateOverride }, { error: "expected an object" })
          .optional(),
      }),
      responses: { 200: { description: "the user after the change", schema: UserAdminView }, 404: { description: "not_found" } },
    },
    async (c, { body }) => {
      const id = c.req.param("id")!;
      if (!Uuid.safeParse(id).success) throw notFound("user");
      return c.json(await updateUser(c.get("deps"), c.get("user"), requestMeta(c), id, body));
    },
  );

  return app;
}

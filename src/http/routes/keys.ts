import type { OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { z } from "@hono/zod-openapi";
import { Hono, type Context } from "hono";
import { createGrant, createKey, deleteKey, listGrants, listKeys, revokeGrant } from "../../services/vault.js";
import type { AppEnv } from "../env.js";
import { requestMeta } from "../middleware/request-context.js";
import { defineRoute } from "../route.js";
import { Instant } from "../schemas.js";

const KeyView = z
  .object({
    id: z.string(),
    name: z.string(),
    last4: z.string().openapi({ description: "the key's last four characters, for recognising it" }),
    status: z.enum(["ok", "rejected"]).openapi({ description: "rejected: upstream refused the key on its last use" }),
    owner: z.object({ id: z.string(), username: z.string() }),
    access: z.enum(["owner", "grant", "admin"]),
    created_at: z.string(),
    last_used_at: z.string().nullable(),
  })
  .openapi("Key");

const GrantView = z
  .object({
    id: z.string(),
    key_id: z.string(),
    user: z.object({ id: z.string(), username: z.string() }),
    expires_at: z.string().nullable(),
    created_at: z.string(),
  })
  .openapi("Grant");

const KeyName = z
  .string({ error: "expected a string" })
  .transform((s) => s.trim())
  .refine((s) => s.length >= 1 && s.length <= 100, { error: "expected 1 to 100 characters" })
  .openapi({ type: "string", example: "team key" });

/**
 * The keys these users may use changed (a key stored or deleted, a grant made or revoked): their
 * next call is decided by the database, which checks the key choice first, not refused by this
 * instance for a limit first (services/refusals.ts): the contract checks the key before the limits.
 */
function keysChanged(c: Context<AppEnv>, userIds: string[]): void {
  for (const id of userIds) c.get("deps").refusals.forgetUser(id);
}

export function keyRoutes(registry: OpenAPIRegistry) {
  const app = new Hono<AppEnv>();
  const tags = ["Key vault"];
  const caller = (c: Context<AppEnv>) => c.get("user");

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/v1/keys",
      summary: "Store a Haltman API key (encrypted; never shown again)",
      description:
        "`api_key` must be 64 hexadecimal characters after trimming (upper case is accepted and lower-cased). " +
        "409 `conflict` when that key is already stored, by anyone.",
      tags,
      access: "user",
      body: z.object({
        name: KeyName,
        // Bounded before normalising, so a huge string is refused cheaply; the exact rule is the vault's.
        api_key: z.string({ error: "expected a string" }).max(256, { error: "api_key must be 64 hexadecimal characters" }),
      }),
      responses: { 201: { description: "stored", schema: KeyView.omit({ owner: true, access: true, last_used_at: true }) }, 409: { description: "conflict" } },
    },
    async (c, { body }) => {
      const k = await createKey(c.get("deps").db, c.get("deps").vault, caller(c), requestMeta(c), body);
      keysChanged(c, [caller(c).id]);
      return c.json({ id: k.id, name: k.name, last4: k.last4, status: k.status, created_at: k.created_at }, 201);
    },
  );

  defineRoute(
    app,
    registry,
    {
      method: "get",
      path: "/v1/keys",
      summary: "Keys the caller owns or was granted (admins: ?all=true for every key)",
      tags,
      access: "user",
      query: z.object({ all: z.enum(["true", "false"], { error: "expected true or false" }).optional() }),
      responses: { 200: { description: "the keys", schema: z.object({ keys: z.array(KeyView) }) }, 403: { description: "all=true without the admin role" } },
    },
    async (c, { query }) => c.json({ keys: await listKeys(c.get("deps").db, caller(c), query.all === "true") }),
  );

  defineRoute(
    app,
    registry,
    {
      method: "delete",
      path: "/v1/keys/:id",
      summary: "Delete a stored key (owner or admin); its grants go with it",
      tags,
      access: "user",
      responses: { 204: { description: "deleted" }, 403: { description: "a grantee" }, 404: { description: "not_found" } },
    },
    async (c) => {
      const holders = await deleteKey(c.get("deps").db, caller(c), requestMeta(c), c.req.param("id")!);
      keysChanged(c, holders);
      return c.body(null, 204);
    },
  );

  defineRoute(
    app,
    registry,
    {
      method: "post",
      path: "/v1/keys/:id/grants",
      summary: "Let a teammate use the key (owner or admin)",
      description:
        '400 `invalid_params` `field:"username"` for an unknown user or the owner; 409 `conflict` if that user already holds an active grant.',
      tags,
      access: "user",
      body: z.object({
        username: z.string({ error: "expected a string" }).min(1, { error: "required" }).max(64, { error: "no user of that name" }),
        expires_at: Instant.nullable()
          .optional()
          .openapi({ type: "string", format: "date-time" }),
      }),
      responses: { 201: { description: "granted", schema: GrantView }, 404: { description: "not_found" }, 409: { description: "conflict" } },
    },
    async (c, { body }) => {
      const g = await createGrant(c.get("deps").db, caller(c), requestMeta(c), c.req.param("id")!, {
        username: body.username,
        expires_at: body.expires_at ?? undefined,
      });
      keysChanged(c, [g.user.id]);
      return c.json(g, 201);
    },
  );

  defineRoute(
    app,
    registry,
    {
      method: "get",
      path: "/v1/keys/:id/grants",
      summary: "The key's active grants (owner or admin)",
      tags,
      access: "user",
      responses: { 200: { description: "active grants", schema: z.object({ grants: z.array(GrantView) }) }, 404: { description: "not_found" } },
    },
    async (c) => c.json({ grants: await listGrants(c.get("deps").db, caller(c), c.req.param("id")!) }),
  );

  defineRoute(
    app,
    registry,
    {
      method: "delete",
      path: "/v1/keys/:id/grants/:grant_id",
      summary: "Revoke a grant (owner or admin): the grantee can no longer use the key",
      tags,
      access: "user",
      responses: { 204: { description: "revoked" }, 404: { description: "not_found" } },
    },
    async (c) => {
      const grantee = await revokeGrant(c.get("deps").db, caller(c), requestMeta(c), c.req.param("id")!, c.req.param("grant_id")!);
      keysChanged(c, [grantee]);
      return c.body(null, 204);
    },
  );

  return app;
}

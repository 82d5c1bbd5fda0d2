// The key vault: stored Haltman keys, who may use them, and which key a proxied call uses.
import { randomBytes, randomUUID } from "node:crypto";
import { and, desc, eq, gt, isNull, or, sql, type SQL } from "drizzle-orm";
import { fingerprint, sealApiKey } from "../crypto/envelope.js";
import type { Keyring } from "../crypto/keyring.js";
import { pgArray } from "../db/arrays.js";
import { type Database, type Db, type Executor } from "../db/client.js";
import { haltmanKeys, keyGrants, users, vaultSecrets, type UserRateLimits } from "../db/schema.js";
import { AppError, conflict, forbidden, invalidParams, notFound } from "../errors.js";
import { hasCode, isUniqueViolation } from "./accounts.js";
import { record, type RequestMeta } from "./audit.js";
import { isUuid } from "../ids.js";
import { batched, type BatchOptions } from "./batch.js";

export type Vault = { keyring: Keyring; fingerprintSecret: Buffer };
export type Caller = { id: string; username: string; role: "admin" | "member" };

export type KeyView = {
  id: string;
  name: string;
  last4: string;
  status: "ok" | "rejected";
  owner: { id: string; username: string };
  access: "owner" | "grant" | "admin";
  created_at: string;
  last_used_at: string | null;
};

export const secretBinding = (name: string) => ({ purpose: "vault-secret", table: "vault_secrets", id: name });

/** Loads the vault's own secrets, creating them at first start (once, whatever the number of instances). */
export async function loadVault(db: Db, keyring: Keyring): Promise<Vault> {
  const name = "fingerprint";
  const load = async (ex: Executor) => (await ex.select().from(vaultSecrets).where(eq(vaultSecrets.name, name)).limit(1))[0];
  let row = await load(db);
  if (!row) {
    row = await db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${0x56415554})`); // "VAUT"
      const raced = await load(tx);
      if (raced) return raced;
      const secret = randomBytes(32);
      const sealed = keyring.seal(secret, secretBinding(name));
      secret.fill(0);
      const [r] = await tx.insert(vaultSecrets).values({ name, sealed: sealed.box, keyringId: sealed.keyringId }).returning();
      return r!;
    });
  }
  return { keyring, fingerprintSecret: keyring.open({ keyringId: row.keyringId, box: row.sealed }, secretBinding(name)) };
}

/** Upstream's own normalisation: trimmed, lower-cased; then 64 hex characters (32 random bytes). */
export function normaliseApiKey(raw: string): string | undefined {
  const k = raw.trim().toLowerCase();
  return /^[0-9a-f]{64}$/.test(k) ? k : undefined;
}

// An active grant: not revoked, not expired, checked on the database's clock at each request.
const activeGrant = (keyId: SQL | typeof haltmanKeys.id, userId: string | SQL) =>
  sql`exists (select 1 from ${keyGrants} g where g.key_id = ${keyId} and g.user_id = ${userId}
      and g.revoked_at is null and (g.expires_at is null or g.expires_at > now()))`;

export async function createKey(
  db: Db,
  vault: Vault,
  caller: Caller,
  meta: RequestMeta,
  input: { name: string; api_key: string },
): Promise<KeyView> {
  const apiKey = normaliseApiKey(input.api_key);
  if (!apiKey) throw invalidParams("api_key", "api_key must be 64 hexadecimal characters (a Haltman API key)");
  const fp = fingerprint(vault.fingerprintSecret, apiKey);
  const id = randomUUID();
  const envelope = sealApiKey(vault.keyring, { id, ownerId: caller.id }, apiKey);
  const last4 = apiKey.slice(-4);
  try {
    const row = await db.transaction(async (tx) => {
      const [r] = await tx
        .insert(haltmanKeys)
        .values({ id, ownerId: caller.id, name: input.name, last4, fingerprint: fp, ...envelope })
        .returning();
      await record(tx, {
        action: "key.create",
        outcome: "success",
        actor: caller,
        meta,
        keyId: id,
        keyOwnerId: caller.id,
        detail: { name: input.name },
      });
      return r!;
    });
    return toView(row, { id: caller.id, username: caller.username }, "owner");
  } catch (err) {
    if (isUniqueViolation(err)) throw conflict("this Haltman key is already stored");
    throw err;
  }
}

function toView(r: typeof haltmanKeys.$inferSelect, owner: { id: string; username: string }, access: KeyView["access"]): KeyView {
  return {
    id: r.id,
    name: r.name,
    last4: r.last4,
    status: r.status,
    owner,
    access,
    created_at: r.createdAt.toISOString(),
    last_used_at: r.lastUsedAt ? r.lastUsedAt.toISOString() : null,
  };
}

/** Keys the caller owns or holds an active grant on; with `all` (admins only), every key. */
export async function listKeys(ex: Executor, caller: Caller, all: boolean): Promise<KeyView[]> {
  if (all && caller.role !== "admin") throw forbidden("?all=true needs the admin role");
  const rows = await ex
    .select({ key: haltmanKeys, ownerUsername: users.username, granted: activeGrant(haltmanKeys.id, caller.id).mapWith(Boolean) })
    .from(haltmanKeys)
    .innerJoin(users, eq(users.id, haltmanKeys.ownerId))
    .where(all ? undefined : or(eq(haltmanKeys.ownerId, caller.id), activeGrant(haltmanKeys.id, caller.id)))
    .orderBy(desc(haltmanKeys.createdAt));
  return rows.map((r) =>
    toView(r.key, { id: r.key.ownerId, username: r.ownerUsername }, r.key.ownerId === caller.id ? "owner" : r.granted ? "grant" : "admin"),
  );
}

export type KeyAccess = "owner" | "admin" | "grant";

/**
 * The key for its owner or an admin to manage. A key the caller may not see is `not_found`, exactly
 * as a key that does not exist; a grantee (who may see it) gets `forbidden`.
 */
export async function keyToManage(
  ex: Executor,
  caller: Caller,
  keyId: string,
  opts: { lock?: boolean } = {},
): Promise<{ key: typeof haltmanKeys.$inferSelect; ownerUsername: string; access: KeyAccess }> {
  if (!isUuid(keyId)) throw notFound("key");
  const query = ex
    .select({ key: haltmanKeys, ownerUsername: users.username, granted: activeGrant(haltmanKeys.id, caller.id).mapWith(Boolean) })
    .from(haltmanKeys)
    .innerJoin(users, eq(users.id, haltmanKeys.ownerId))
    .where(eq(haltmanKeys.id, keyId))
    .limit(1);
  // Managing holds the key's row until the transaction ends: a grant and a deletion of the same
  // key are serialised (the loser sees not_found), never a foreign-key error.
  const [r] = opts.lock !== false ? await query.for("update", { of: haltmanKeys }) : await query;
  if (!r) throw notFound("key");
  const access: KeyAccess | undefined =
    r.key.ownerId === caller.id ? "owner" : caller.role === "admin" ? "admin" : r.granted ? "grant" : undefined;
  if (!access) throw notFound("key");
  if (access === "grant") throw forbidden("only the key's owner or an admin can do this");
  return { key: r.key, ownerUsername: r.ownerUsername, access };
}

/** Deletes a key; answers the users who could use it (its owner and its grantees). */
export async function deleteKey(db: Db, caller: Caller, meta: RequestMeta, keyId: string): Promise<string[]> {
  return db.transaction(async (tx) => {
    const { key } = await keyToManage(tx, caller, keyId);
    const holders = await tx.select({ userId: keyGrants.userId }).from(keyGrants).where(and(eq(keyGrants.keyId, key.id), isNull(keyGrants.revokedAt)));
    const deleted = await tx.delete(haltmanKeys).where(eq(haltmanKeys.id, key.id)).returning({ id: haltmanKeys.id });
    if (deleted.length === 0) throw notFound("key");
    await record(tx, {
      action: "key.delete",
      outcome: "success",
      actor: caller,
      meta,
      keyId: key.id,
      keyOwnerId: key.ownerId,
      detail: { name: key.name },
    });
    return [key.ownerId, ...holders.map((h) => h.userId)];
  });
}

// ---- choosing a key for a proxied call -------------------------------------------------------

export type ChosenKey = {
  id: string;
  ownerId: string;
  /** the caller's own rate-limit overrides, read with the choice */
  userLimits: UserRateLimits;
  /** chosen as the caller's only usable key (no X-Key-Id) */
  only: boolean;
};

/**
 * The key a proxied call uses: the one named by X-Key-Id, or the caller's only usable key.
 * `key_required` when they may use several, `forbidden` when none, `not_found` for a key id they
 * may not use (owners and active grantees only: an admin's role manages keys, it does not use them).
 *
 * A choice is remembered (never the key's material: that is read by the admission that uses it),
 * and every use of it is checked by the admission statement (proxy_admit): a revoked or expired
 * grant, a deleted key, a second usable key or a changed override makes the admission answer
 * "stale", and the caller forgets the choice and asks again with `fresh`. So the memory saves a
 * round trip on almost every call without ever deciding on what the database no longer says.
 */
export type KeyChooser = {
  choose(caller: Caller, keyIdHeader: string | undefined, opts?: { fresh?: boolean }): Promise<ChosenKey>;
  forget(caller: Caller, keyIdHeader: string | undefined): void;
};

type KeyCandidate = { i: number; id: string | null; owner_id: string | null; rate_limits: UserRateLimits | string | null };

// The candidates of each request of a group: up to two keys the user may use (owner, or an
// active grant on the database's clock), with the user's rate-limit overrides.
const KEY_CANDIDATES = `with req(i, uid, kid) as (select * from unnest($1::int[], $2::uuid[], $3::uuid[]))
  select req.i, k.id, k.owner_id, u.rate_limits
  from req
  join users u on u.id = req.uid
  left join lateral (
    select k.id, k.owner_id from haltman_keys k
    where (req.kid is null or k.id = req.kid)
      and (k.owner_id = req.uid or exists (select 1 from key_grants g where g.key_id = k.id and g.user_id = req.uid
        and g.revoked_at is null and (g.expires_at is null or g.expires_at > now())))
    order by k.created_at
    limit 2
  ) k on true`;

/** How long a choice is remembered unused; its correctness never depends on it (see KeyChooser). */
const CHOICE_TTL_MS = 5 * 60_000;

export function createKeyChooser(
  database: Pick<Database, "query">,
  opts: BatchOptions & { maxEntries?: number; now?: () => number } = {},
): KeyChooser {
  const maxEntries = opts.maxEntries ?? 20_000;
  const now = opts.now ?? Date.now;
  const remembered = new Map<string, { key: ChosenKey; at: number }>();
  const cacheKey = (caller: Caller, keyId: string | undefined) => `${caller.id}|${keyId ?? ""}`;

  const lookup = batched<{ userId: string; keyId: string | null }, KeyCandidate[]>(async (reqs) => {
    const rows = await database.query<KeyCandidate>(KEY_CANDIDATES, [
      pgArray(reqs.map((_, i) => i)),
      pgArray(reqs.map((r) => r.userId)),
      pgArray(reqs.map((r) => r.keyId)),
    ]);
    const byReq: KeyCandidate[][] = reqs.map(() => []);
    for (const r of rows) byReq[Number(r.i)]!.push(r);
    return byReq;
  }, opts);

  return {
    async choose(caller, keyIdHeader, o = {}) {
      const keyId = keyIdHeader?.trim();
      if (keyId !== undefined && !isUuid(keyId)) throw notFound("key");
      const ck = cacheKey(caller, keyId);
      const hit = remembered.get(ck);
      if (hit && !o.fresh && now() - hit.at < CHOICE_TTL_MS) return hit.key;
      const found = (await lookup({ userId: caller.id, keyId: keyId ?? null })).filter((r) => r.id !== null);
      if (keyId !== undefined && found.length === 0) throw notFound("key");
      if (found.length === 0) throw forbidden("you may use no Haltman key: ask a key owner for a grant");
      if (found.length > 1) throw new AppError("key_required", "you may use several keys: name one with the X-Key-Id header");
      const row = found[0]!;
      const limits = (typeof row.rate_limits === "string" ? JSON.parse(row.rate_limits) : row.rate_limits) as UserRateLimits | null;
      const key: ChosenKey = { id: row.id!, ownerId: row.owner_id!, userLimits: limits ?? {}, only: keyId === undefined };
      remembered.delete(ck);
      if (remembered.size >= maxEntries) remembered.delete(remembered.keys().next().value!);
      remembered.set(ck, { key, at: now() });
      return key;
    },
    forget(caller, keyIdHeader) {
      remembered.delete(cacheKey(caller, keyIdHeader?.trim()));
    },
  };
}

export async function userLimitOverrides(ex: Executor, userId: string): Promise<UserRateLimits | null> {
  const [u] = await ex.select({ rateLimits: users.rateLimits }).from(users).where(eq(users.id, userId)).limit(1);
  return u?.rateLimits ?? null;
}


// ---- grants ----------------------------------------------------------------------------------

export type GrantView = { id: string; key_id: string; user: { id: string; username: string }; expires_at: string | null; created_at: string };

export async function createGrant(
  db: Db,
  caller: Caller,
  meta: RequestMeta,
  keyId: string,
  input: { username: string; expires_at?: Date | undefined },
): Promise<GrantView> {
  try {
    return await db.transaction(async (tx) => {
      const { key } = await keyToManage(tx, caller, keyId);
      const [grantee] = await tx.select().from(users).where(eq(users.username, input.username.trim().toLowerCase())).limit(1);
      if (!grantee) throw invalidParams("username", "no user of that name");
      if (grantee.id === key.ownerId) throw invalidParams("username", "the key's owner needs no grant");
      if (input.expires_at && input.expires_at.getTime() <= Date.now()) throw invalidParams("expires_at", "expires_at must be in the future");
      // A grant that has expired is closed now, so that the user can be granted again.
      await tx
        .update(keyGrants)
        .set({ revokedAt: sql`now()` })
        .where(and(eq(keyGrants.keyId, key.id), eq(keyGrants.userId, grantee.id), isNull(keyGrants.revokedAt), sql`${keyGrants.expiresAt} <= now()`));
      const [g] = await tx
        .insert(keyGrants)
        .values({ keyId: key.id, userId: grantee.id, grantedBy: caller.id, expiresAt: input.expires_at ?? null })
        .returning();
      await record(tx, {
        action: "grant.create",
        outcome: "success",
        actor: caller,
        meta,
        keyId: key.id,
        keyOwnerId: key.ownerId,
        subjectId: grantee.id,
        detail: { grant_id: g!.id, grantee: grantee.username, expires_at: g!.expiresAt?.toISOString() ?? null },
      });
      return grantView(g!, grantee);
    });
  } catch (err) {
    if (isUniqueViolation(err)) throw conflict("that user already holds an active grant on this key");
    if (hasCode(err, "23503")) throw notFound("key"); // deleted meanwhile (belt and braces: the row lock above)
    throw err;
  }
}

const grantView = (g: typeof keyGrants.$inferSelect, u: { id: string; username: string }): GrantView => ({
  id: g.id,
  key_id: g.keyId,
  user: { id: u.id, username: u.username },
  expires_at: g.expiresAt ? g.expiresAt.toISOString() : null,
  created_at: g.createdAt.toISOString(),
});

export async function listGrants(ex: Executor, caller: Caller, keyId: string): Promise<GrantView[]> {
  const { key } = await keyToManage(ex, caller, keyId, { lock: false });
  const rows = await ex
    .select({ g: keyGrants, username: users.username })
    .from(keyGrants)
    .innerJoin(users, eq(users.id, keyGrants.userId))
    .where(and(eq(keyGrants.keyId, key.id), isNull(keyGrants.revokedAt), or(isNull(keyGrants.expiresAt), gt(keyGrants.expiresAt, sql`now()`))))
    .orderBy(keyGrants.createdAt);
  return rows.map((r) => grantView(r.g, { id: r.g.userId, username: r.username }));
}

/** Revokes a grant; answers the grantee's user id. */
export async function revokeGrant(db: Db, caller: Caller, meta: RequestMeta, keyId: string, grantId: string): Promise<string> {
  return db.transaction(async (tx) => {
    const { key } = await keyToManage(tx, caller, keyId);
    if (!isUuid(grantId)) throw notFound("grant");
    const [g] = await tx
      .update(keyGrants)
      .set({ revokedAt: sql`now()`, revokedBy: caller.id })
      .where(and(eq(keyGrants.id, grantId), eq(keyGrants.keyId, key.id), isNull(keyGrants.revokedAt)))
      .returning();
    if (!g) throw notFound("grant");
    const [grantee] = await tx.select({ username: users.username }).from(users).where(eq(users.id, g.userId)).limit(1);
    await record(tx, {
      action: "grant.revoke",
      outcome: "success",
      actor: caller,
      meta,
      keyId: key.id,
      keyOwnerId: key.ownerId,
      subjectId: g.userId,
      detail: { grant_id: g.id, grantee: grantee?.username ?? null },
    });
    return g.userId;
  });
}

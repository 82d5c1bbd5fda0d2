// Accounts and their sessions. Plain functions over explicit dependencies; no HTTP in here.
import { createHmac } from "node:crypto";
import { asc, eq, sql } from "drizzle-orm";
import type { Deps } from "../deps.js";
import type { Executor } from "../db/client.js";
import { sessions, users, type UserRateLimits, type UserRole } from "../db/schema.js";
import { AppError, conflict, invalidParams, notFound, rateLimited, unauthorized, unavailable } from "../errors.js";
import { normaliseUsername } from "../config.js";
import { record, type Actor, type RequestMeta } from "./audit.js";
import { createSession, revokeSessions, rotateRefreshToken } from "./sessions.js";

type AccountDeps = Pick<Deps, "db" | "passwords" | "tokens" | "sessions" | "config" | "loginLimits" | "metrics" | "limiter" | "vault" | "refusals">;

export type UserView = { id: string; username: string; role: UserRole };
export type UserAdminView = UserView & { disabled: boolean; rate_limits: UserRateLimits; created_at: string };

export type TokenPair = {
  access_token: string;
  token_type: "Bearer";
  expires_in: number;
  refresh_token: string;
  user: UserView;
};

const view = (u: { id: string; username: string; role: UserRole }): UserView => ({ id: u.id, username: u.username, role: u.role });
const adminView = (u: typeof users.$inferSelect): UserAdminView => ({
  ...view(u),
  disabled: u.disabled,
  rate_limits: u.rateLimits ?? {},
  created_at: u.createdAt.toISOString(),
});

/** A SQLSTATE anywhere in the error's cause chain, whichever driver raised it (drizzle wraps it). */
export function hasCode(err: unknown, code: string): boolean {
  for (let e = err, i = 0; e && i < 4; e = (e as { cause?: unknown }).cause, i++) {
    if ((e as { code?: unknown }).code === code) return true;
  }
  return false;
}

export const isUniqueViolation = (err: unknown) => hasCode(err, "23505");

// ---- login, refresh, logout ---------------------------------------------------------------------

export async function login(
  deps: AccountDeps,
  meta: RequestMeta,
  input: { username: string; password: string },
): Promise<TokenPair> {
  const typed = input.username.trim();
  // Throttle before any hashing.
  const decision = await deps.limiter.decide([
    { name: "login_account", key: accountBucket(deps, typed.toLowerCase()), policy: deps.loginLimits.perAccount },
    ...(meta.ip ? [{ name: "login_address", key: `login:ip:${meta.ip}`, policy: deps.loginLimits.perAddress }] : []),
  ]);
  // A name no account can have is no account's, even where lower-casing would fold it into one
  // (U+212A KELVIN SIGN becomes "k"): it is an unknown user, answered as any other.
  const username = normaliseUsername(typed);
  let [user] = username === undefined ? [] : await deps.db.select().from(users).where(eq(users.username, username)).limit(1);
  if (!decision.allowed) {
    deps.metrics.rateLimitRefusals.inc({ reason: "login" });
    await record(deps.db, {
      action: "auth.login_failed",
      outcome: "rate_limited",
      actor: user ? { id: user.id, username: user.username } : null,
      meta,
      detail: { reason: decision.refusedBy === "login_address" ? "address_throttled" : "account_throttled" },
    });
    throw rateLimited("login", decision.retryAfterS, `too many login attempts; retry in ${Math.max(1, decision.retryAfterS)} s`);
  }

  // The password is checked against the row as read, which may change while it is (a hash takes
  // a while, and waits its turn in a storm): the session is made only if, under a lock on the row,
  // the account is still enabled and its hash still the one checked. Else it is judged again
  // against the row as it is now. A disabling or a password change that commits first is so
  // obeyed; one that commits after waits for the lock and then revokes the new session with the rest.
  for (let round = 0; ; round++) {
    let ok = false;
    let needsRehash = false;
    if (user) {
      ({ ok, needsRehash } = await deps.passwords.verify(user.passwordHash, input.password));
    } else {
      await deps.passwords.verifyDummy(input.password);
    }
    if (!user || !ok || user.disabled) {
      await record(deps.db, {
        action: "auth.login_failed",
        outcome: user?.disabled && ok ? "denied" : "invalid",
        actor: user ? { id: user.id, username: user.username } : null,
        meta,
        detail: { reason: !user ? "unknown_user" : !ok ? "wrong_password" : "disabled" },
      });
      throw new AppError("invalid_credentials", "unknown user or wrong password");
    }
    const checked = user;

    // Parameters were raised since this hash was made: upgrade it while we hold the password.
    const newHash = needsRehash ? await deps.passwords.hash(input.password) : undefined;
    const made = await deps.db.transaction(async (tx) => {
      const [now] = await tx
        .select({ passwordHash: users.passwordHash, disabled: users.disabled })
        .from(users)
        .where(eq(users.id, checked.id))
        .for(newHash ? "update" : "share")
        .limit(1);
      if (!now || now.disabled || now.passwordHash !== checked.passwordHash) return undefined;
      if (newHash) await tx.update(users).set({ passwordHash: newHash, updatedAt: new Date() }).where(eq(users.id, checked.id));
      const s = await createSession(tx, { userId: checked.id, refreshTtlS: deps.config.refreshTokenTtlS, ip: meta.ip, userAgent: meta.userAgent });
      await record(tx, {
        action: "auth.login",
        outcome: "success",
        actor: { id: checked.id, username: checked.username },
        meta,
        detail: { session_id: s.sessionId, ...(newHash ? { rehashed: true } : {}) },
      });
      return s;
    });
    if (made) return pair(deps, checked, made.sessionId, made.refreshToken);
    if (round === 2) throw unavailable("the account kept changing while this login was checked; nothing was changed, try again");
    [user] = await deps.db.select().from(users).where(eq(users.id, checked.id)).limit(1);
  }
}

/**
 * The per-account login bucket of a typed name. The name may be a password typed into the wrong
 * field: it is keyed by an HMAC under the vault's secret (never stored, nor an unsalted hash that a
 * dictionary would reverse).
 */
function accountBucket(deps: Pick<AccountDeps, "vault">, username: string): string {
  return `login:account:${createHmac("sha256", deps.vault.fingerprintSecret).update(`login:${username}`).digest("base64url").slice(0, 32)}`;
}

async function pair(deps: AccountDeps, user: UserView, sessionId: string, refreshToken: string): Promise<TokenPair> {
  const { token, expiresIn } = await deps.tokens.sign(user.id, sessionId);
  return { access_token: token, token_type: "Bearer", expires_in: expiresIn, refresh_token: refreshToken, user: view(user) };
}

export async function refresh(deps: AccountDeps, meta: RequestMeta, refreshToken: string): Promise<TokenPair> {
  const result = await deps.db.transaction(async (tx) => {
    const r = await rotateRefreshToken(tx, refreshToken, deps.config.refreshTokenTtlS);
    if (!r.ok && r.reason === "reused") {
      // A spent token came back: someone holds a copy. The session is revoked (above); say so.
      const [u] = await tx.select().from(users).where(eq(users.id, r.userId!)).limit(1);
      await record(tx, {
        action: "auth.refresh_reused",
        outcome: "denied",
        actor: u ? { id: u.id, username: u.username } : null,
        meta,
        detail: { session_id: r.sessionId, session_revoked: true },
      });
    }
    if (!r.ok) return r;
    const [u] = await tx.select().from(users).where(eq(users.id, r.userId)).limit(1);
    return { ...r, user: u! };
  });
  if (!result.ok) {
    if (result.sessionId) deps.sessions.forget(result.sessionId);
    throw unauthorized(result.reason === "reused" ? "refresh token already used; the session is revoked" : "invalid or expired refresh token");
  }
  return pair(deps, result.user, result.sessionId, result.refreshToken);
}

export async function logout(deps: AccountDeps, actor: Actor & { sessionId: string }, meta: RequestMeta): Promise<void> {
  await deps.db.transaction(async (tx) => {
    await revokeSessions(tx, { sessionId: actor.sessionId }, "logout");
    await record(tx, { action: "auth.logout", outcome: "success", actor, meta, detail: { session_id: actor.sessionId } });
  });
  deps.sessions.forget(actor.sessionId);
}

export async function changePassword(
  deps: AccountDeps,
  actor: Actor & { sessionId: string },
  meta: RequestMeta,
  input: { current_password: string; new_password: string },
): Promise<void> {
  let [user] = await deps.db.select().from(users).where(eq(users.id, actor.id)).limit(1);
  if (!user) throw unauthorized();
  // A stolen access token must not become a way to guess the password at hashing speed.
  const decision = await deps.limiter.decide([{ name: "login_account", key: accountBucket(deps, user.username), policy: deps.loginLimits.perAccount }]);
  if (!decision.allowed) {
    deps.metrics.rateLimitRefusals.inc({ reason: "login" });
    await record(deps.db, { action: "auth.password_change", outcome: "rate_limited", actor, meta });
    throw rateLimited("login", decision.retryAfterS, `too many password attempts; retry in ${Math.max(1, decision.retryAfterS)} s`);
  }
  // As at login: the change is made only if, under a lock on the row, the hash the current
  // password was checked against is still the user's, and the acting session was not revoked
  // meanwhile (by another change of the password, say); else it is judged again.
  for (let round = 0; ; round++) {
    const checked = user;
    const { ok } = await deps.passwords.verify(checked.passwordHash, input.current_password);
    if (!ok) {
      await record(deps.db, { action: "auth.password_change", outcome: "invalid", actor, meta, detail: { reason: "wrong_current_password" } });
      throw invalidParams("current_password", "current_password is wrong");
    }
    const hash = await deps.passwords.hash(input.new_password);
    const done = await deps.db.transaction(async (tx) => {
      const [now] = await tx.select({ passwordHash: users.passwordHash }).from(users).where(eq(users.id, actor.id)).for("update").limit(1);
      const [session] = await tx.select({ revokedAt: sessions.revokedAt }).from(sessions).where(eq(sessions.id, actor.sessionId)).limit(1);
      if (!now || !session || session.revokedAt) return { kind: "revoked" as const };
      if (now.passwordHash !== checked.passwordHash) return { kind: "changed" as const };
      await tx.update(users).set({ passwordHash: hash, updatedAt: new Date() }).where(eq(users.id, actor.id));
      const n = await revokeSessions(tx, { userId: actor.id, except: actor.sessionId }, "password_change");
      await record(tx, { action: "auth.password_change", outcome: "success", actor, meta, detail: { sessions_revoked: n } });
      return { kind: "changed_it" as const, revoked: n };
    });
    if (done.kind === "changed_it") {
      if (done.revoked > 0) deps.sessions.forgetUser(actor.id);
      return;
    }
    if (done.kind === "revoked") {
      deps.sessions.forget(actor.sessionId);
      throw unauthorized("this session was revoked");
    }
    if (round === 2) throw unavailable("the account kept changing while this change was checked; nothing was changed, try again");
    [user] = await deps.db.select().from(users).where(eq(users.id, actor.id)).limit(1);
    if (!user) throw unauthorized();
  }
}

// ---- users (admin) ------------------------------------------------------------------------------

export async function createUser(
  deps: Pick<AccountDeps, "db" | "passwords">,
  actor: Actor | null,
  meta: RequestMeta,
  input: { username: string; password: string; role: UserRole },
): Promise<UserView> {
  const existing = await deps.db.select({ id: users.id }).from(users).where(eq(users.username, input.username)).limit(1);
  if (existing.length > 0) throw conflict(`username "${input.username}" is taken`);
  const passwordHash = await deps.passwords.hash(input.password);
  try {
    return await deps.db.transaction(async (tx) => {
      const [u] = await tx.insert(users).values({ username: input.username, passwordHash, role: input.role }).returning();
      await record(tx, {
        action: "user.create",
        outcome: "success",
        actor,
        meta,
        subjectId: u!.id,
        detail: { username: u!.username, role: u!.role },
      });
      return view(u!);
    });
  } catch (err) {
    if (isUniqueViolation(err)) throw conflict(`username "${input.username}" is taken`);
    throw err;
  }
}

export async function listUsers(ex: Executor): Promise<UserAdminView[]> {
  const rows = await ex.select().from(users).orderBy(asc(users.createdAt), asc(users.username));
  return rows.map(adminView);
}

export async function updateUser(
  deps: Pick<AccountDeps, "db" | "sessions" | "refusals">,
  actor: Actor,
  meta: RequestMeta,
  id: string,
  patch: { role?: UserRole; disabled?: boolean; rate_limits?: { handle_create?: string | null; domain_enable?: string | null } },
): Promise<UserAdminView> {
  const updated = await deps.db.transaction(async (tx) => {
    // Changes of role or disabled state are serialised, so that two admins demoting each other at
    // once cannot both see the other as "another active admin" and leave none.
    if (patch.role !== undefined || patch.disabled !== undefined) await tx.execute(sql`select pg_advisory_xact_lock(${0x41444d4e})`); // "ADMN"
    const [before] = await tx.select().from(users).where(eq(users.id, id)).for("update").limit(1);
    if (!before) throw notFound("user");
    const changes: Record<string, { from: unknown; to: unknown }> = {};
    const set: Partial<typeof users.$inferInsert> = {};
    if (patch.role !== undefined && patch.role !== before.role) {
      if (before.role === "admin" && (await otherActiveAdmins(tx, id)) === 0) {
        throw invalidParams("role", "this is the last active admin; make another admin first");
      }
      set.role = patch.role;
      changes.role = { from: before.role, to: patch.role };
    }
    if (patch.disabled !== undefined && patch.disabled !== before.disabled) {
      if (patch.disabled && before.role === "admin" && (await otherActiveAdmins(tx, id)) === 0) {
        throw invalidParams("disabled", "this is the last active admin; make another admin first");
      }
      set.disabled = patch.disabled;
      changes.disabled = { from: before.disabled, to: patch.disabled };
    }
    if (patch.rate_limits !== undefined) {
      // A key given replaces that action's limit; null (or "") removes the override.
      const next: UserRateLimits = { ...(before.rateLimits ?? {}) };
      for (const k of ["handle_create", "domain_enable"] as const) {
        const v = patch.rate_limits[k];
        if (v === undefined) continue;
        if (v) next[k] = v;
        else delete next[k];
      }
      if (JSON.stringify(next) !== JSON.stringify(before.rateLimits ?? {})) {
        set.rateLimits = next;
        changes.rate_limits = { from: before.rateLimits ?? {}, to: next };
      }
    }
    if (Object.keys(set).length === 0) return { user: before, revoked: 0 };
    const [after] = await tx.update(users).set({ ...set, updatedAt: new Date() }).where(eq(users.id, id)).returning();
    const revoked = set.disabled ? await revokeSessions(tx, { userId: id }, "user_disabled") : 0;
    await record(tx, {
      action: "user.update",
      outcome: "success",
      actor,
      meta,
      subjectId: id,
      detail: { username: before.username, changes, ...(set.disabled ? { sessions_revoked: revoked } : {}) },
    });
    return { user: after!, revoked };
  });
  deps.sessions.forgetUser(id);
  // New limits apply from the next call: no refusal of this instance's outlives them.
  deps.refusals.forgetUser(id);
  return adminView(updated.user);
}

async function otherActiveAdmins(ex: Executor, exceptId: string): Promise<number> {
  const [r] = await ex
    .select({ n: sql<number>`count(*)::int` })
    .from(users)
    .where(sql`${users.role} = 'admin' and not ${users.disabled} and ${users.id} <> ${exceptId}`);
  return Number(r?.n ?? 0);
}

/** Creates the first admin when there is no user at all; false when users already exist. */
export async function bootstrapAdmin(
  deps: Pick<AccountDeps, "db" | "passwords">,
  input: { username: string; password: string },
  meta: RequestMeta,
): Promise<boolean> {
  const passwordHash = await deps.passwords.hash(input.password);
  return deps.db.transaction(async (tx) => {
    // Two instances starting at once must not both create one.
    await tx.execute(sql`select pg_advisory_xact_lock(${0x55534552})`); // "USER"
    const [any] = await tx.select({ id: users.id }).from(users).limit(1);
    if (any) return false;
    const [u] = await tx.insert(users).values({ username: input.username, passwordHash, role: "admin" }).returning();
    await record(tx, {
      action: "user.create",
      outcome: "success",
      actor: null,
      meta,
      subjectId: u!.id,
      detail: { username: u!.username, role: "admin", via: "bootstrap" },
    });
    return true;
  });
}

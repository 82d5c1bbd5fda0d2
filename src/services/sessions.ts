// Sessions: one per login. Refresh tokens rotate on every use; a spent one presented again is
// taken as theft and revokes the whole session. Access tokens are checked against their session
// through a short-lived cache: a revocation on another instance is seen within SESSION_CHECK_TTL_MS.
// A session in use is read again in the background once its state is half that old, so a call
// waits for the database only when no call of that session came in the second half of its
// state's life, or that read failed or is still under way at the TTL, not once every TTL.
import { createHash, randomBytes } from "node:crypto";
import { and, eq, isNull, ne, sql } from "drizzle-orm";
import type { Db, Executor } from "../db/client.js";
import { refreshTokens, sessions, users, type UserRole } from "../db/schema.js";

/** The most a revoked session's access token keeps working on another instance. */
export const SESSION_CHECK_TTL_MS = 2_000;

export type SessionState = {
  sessionId: string;
  userId: string;
  username: string;
  role: UserRole;
  /** not revoked, not expired, user not disabled */
  active: boolean;
};

export const hashRefreshToken = (token: string) => createHash("sha256").update(token, "utf8").digest();
export const newRefreshToken = () => randomBytes(32).toString("base64url");

export type SessionGate = {
  /** The session's state, from memory when read (asked for) less than SESSION_CHECK_TTL_MS ago. */
  check(sessionId: string): Promise<SessionState | undefined>;
  /** Forget what this instance knows (its own revocations are then seen at once). */
  forget(sessionId: string): void;
  forgetUser(userId: string): void;
  /** Resolves once the reads under way (background ones too) have ended. */
  settled(): Promise<void>;
};

export type SessionGateOptions = {
  ttlMs?: number;
  /** the age at which a check that is answered from memory also reads the state again, in the background (ttlMs / 2) */
  refreshAfterMs?: number;
  now?: () => number;
  maxEntries?: number;
  /** told how each check was answered: from memory, or after a read the call waited for */
  observe?: (answer: "memory" | "database") => void;
};

export function createSessionGate(db: Db, opts: SessionGateOptions = {}): SessionGate {
  const ttl = opts.ttlMs ?? SESSION_CHECK_TTL_MS;
  const refreshAfter = opts.refreshAfterMs ?? ttl / 2;
  const now = opts.now ?? (() => performance.now()); // monotonic: a clock step must not stretch the bound
  const maxEntries = opts.maxEntries ?? 50_000;
  const cache = new Map<string, { state: SessionState | undefined; at: number }>();
  // The read under way of each session, and when it was asked for; concurrent checks share it.
  const loading = new Map<string, { p: Promise<SessionState | undefined>; readAt: number }>();

  // Bumped by forget(): a load that started before it must not cache what it read.
  let generation = 0;

  async function load(sessionId: string, readAt: number): Promise<SessionState | undefined> {
    const startedAt = generation;
    const rows = await db
      .select({
        userId: users.id,
        username: users.username,
        role: users.role,
        disabled: users.disabled,
        revokedAt: sessions.revokedAt,
        live: sql<boolean>`${sessions.expiresAt} > now()`,
      })
      .from(sessions)
      .innerJoin(users, eq(users.id, sessions.userId))
      .where(eq(sessions.id, sessionId))
      .limit(1);
    const r = rows[0];
    const state = r && {
      sessionId,
      userId: r.userId,
      username: r.username,
      role: r.role,
      active: !r.disabled && r.revokedAt === null && r.live === true,
    };
    if (startedAt !== generation) return state; // answered for this request, not remembered
    const known = cache.get(sessionId);
    if (known && known.at > readAt) return state; // a later read came back first: it stays
    cache.delete(sessionId); // re-inserted last: the oldest entries are the ones to evict
    if (cache.size >= maxEntries) cache.delete(cache.keys().next().value!);
    cache.set(sessionId, { state, at: readAt });
    return state;
  }

  function start(sessionId: string): Promise<SessionState | undefined> {
    // A state is at least as old as the moment it was asked for: its age counts from there.
    const readAt = now();
    const entry = {
      readAt,
      p: load(sessionId, readAt).finally(() => {
        if (loading.get(sessionId) === entry) loading.delete(sessionId); // not a later read's
      }),
    };
    loading.set(sessionId, entry);
    return entry.p;
  }

  return {
    async check(sessionId) {
      const t = now();
      const hit = cache.get(sessionId);
      if (hit && t - hit.at < ttl) {
        // Past half the TTL, read it again meanwhile: one read at a time (after a failed one,
        // the next call in that window tries again; once the TTL has passed, a call waits).
        if (t - hit.at >= refreshAfter && !loading.has(sessionId)) start(sessionId).catch(() => {});
        opts.observe?.("memory");
        return hit.state;
      }
      opts.observe?.("database");
      // Join the read under way, unless it was asked for too long ago to keep the bound.
      const under = loading.get(sessionId);
      return under && t - under.readAt < ttl ? under.p : start(sessionId);
    },
    forget(sessionId) {
      generation++;
      cache.delete(sessionId);
      loading.delete(sessionId);
    },
    forgetUser(userId) {
      generation++;
      for (const [sid, v] of cache) if (v.state?.userId === userId) cache.delete(sid);
      loading.clear();
    },
    async settled() {
      await Promise.allSettled([...loading.values()].map((l) => l.p));
    },
  };
}

export async function createSession(
  ex: Executor,
  input: { userId: string; refreshTtlS: number; ip: string | null; userAgent: string | null },
): Promise<{ sessionId: string; refreshToken: string }> {
  const expiresAt = new Date(Date.now() + input.refreshTtlS * 1000);
  const [s] = await ex
    .insert(sessions)
    .values({ userId: input.userId, expiresAt, ip: input.ip, userAgent: input.userAgent })
    .returning({ id: sessions.id });
  const refreshToken = newRefreshToken();
  await ex.insert(refreshTokens).values({ tokenHash: hashRefreshToken(refreshToken), sessionId: s!.id, expiresAt });
  return { sessionId: s!.id, refreshToken };
}

export type RotateResult =
  | { ok: true; sessionId: string; userId: string; refreshToken: string }
  | { ok: false; reason: "unknown" | "expired" | "revoked" | "reused"; sessionId?: string; userId?: string };

/** Spends a refresh token and issues its successor, inside the caller's transaction. */
export async function rotateRefreshToken(ex: Executor, token: string, refreshTtlS: number): Promise<RotateResult> {
  const [row] = await ex
    .select({
      sessionId: refreshTokens.sessionId,
      spentAt: refreshTokens.spentAt,
      expired: sql<boolean>`${refreshTokens.expiresAt} <= now()`,
      revokedAt: sessions.revokedAt,
      userId: sessions.userId,
      disabled: users.disabled,
    })
    .from(refreshTokens)
    .innerJoin(sessions, eq(sessions.id, refreshTokens.sessionId))
    .innerJoin(users, eq(users.id, sessions.userId))
    .where(eq(refreshTokens.tokenHash, hashRefreshToken(token)))
    // The session's row too: a revocation (logout, password change, disabling) under way waits
    // for this rotation or this rotation for it, so a refresh never answers 200 for a session
    // whose revocation committed while it was deciding.
    .for("update", { of: [refreshTokens, sessions] })
    .limit(1);
  if (!row) return { ok: false, reason: "unknown" };
  const who = { sessionId: row.sessionId, userId: row.userId };
  if (row.revokedAt !== null || row.disabled) return { ok: false, reason: "revoked", ...who };
  if (row.spentAt !== null) {
    await revokeSessions(ex, { sessionId: row.sessionId }, "refresh_token_reused");
    return { ok: false, reason: "reused", ...who };
  }
  if (row.expired) return { ok: false, reason: "expired", ...who };

  const expiresAt = new Date(Date.now() + refreshTtlS * 1000);
  await ex.update(refreshTokens).set({ spentAt: new Date() }).where(eq(refreshTokens.tokenHash, hashRefreshToken(token)));
  const refreshToken = newRefreshToken();
  await ex.insert(refreshTokens).values({ tokenHash: hashRefreshToken(refreshToken), sessionId: row.sessionId, expiresAt });
  await ex.update(sessions).set({ expiresAt }).where(eq(sessions.id, row.sessionId));
  return { ok: true, refreshToken, ...who };
}

/** Revokes one session, or every session of a user (optionally but one). Returns how many. */
export async function revokeSessions(
  ex: Executor,
  which: { sessionId: string } | { userId: string; except?: string },
  reason: string,
): Promise<number> {
  const where =
    "sessionId" in which
      ? and(eq(sessions.id, which.sessionId), isNull(sessions.revokedAt))
      : and(eq(sessions.userId, which.userId), isNull(sessions.revokedAt), which.except ? ne(sessions.id, which.except) : undefined);
  const rows = await ex.update(sessions).set({ revokedAt: new Date(), revokedReason: reason }).where(where).returning({ id: sessions.id });
  return rows.length;
}

/**
 * Housekeeping: sessions ended (expired or revoked) a week ago, with their refresh tokens, and
 * refresh tokens past their own expiry (a spent one is kept until then to catch its reuse).
 */
export async function sweepSessions(ex: Executor): Promise<void> {
  await ex.execute(sql`delete from sessions where expires_at < now() - interval '7 days' or revoked_at < now() - interval '7 days'`);
  await ex.execute(sql`delete from refresh_tokens where expires_at < now() - interval '1 day'`);
}

// The one schema both drivers (PGlite and postgres.js) run. Migrations in drizzle/ are generated
// from it by drizzle-kit; the append-only triggers live in a hand-written migration beside them.
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  customType,
  doublePrecision,
  index,
  jsonb,
  pgTable,
  primaryKey,
  smallint,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from "drizzle-orm/pg-core";

/** bytea as Buffer on both drivers (PGlite hands back Uint8Array, postgres.js Buffer). */
export const bytea = customType<{ data: Buffer; driverData: Uint8Array }>({
  dataType: () => "bytea",
  fromDriver: (v) => (Buffer.isBuffer(v) ? v : Buffer.from(v)),
  toDriver: (v) => v,
});

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

export type UserRole = "admin" | "member";
export type UserRateLimits = { handle_create?: string; domain_enable?: string };

export const users = pgTable("users", {
  id: uuid("id").primaryKey().defaultRandom(),
  username: text("username").notNull().unique(),
  passwordHash: text("password_hash").notNull(),
  role: text("role").$type<UserRole>().notNull(),
  disabled: boolean("disabled").notNull().default(false),
  rateLimits: jsonb("rate_limits").$type<UserRateLimits>().notNull().default({}),
  createdAt: ts("created_at").notNull().defaultNow(),
  updatedAt: ts("updated_at").notNull().defaultNow(),
});

/** A login: the family of refresh tokens and the access tokens minted from them. */
export const sessions = pgTable(
  "sessions",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    userId: uuid("user_id").notNull().references(() => users.id, { onDelete: "cascade" }),
    createdAt: ts("created_at").notNull().defaultNow(),
    /** the current refresh token's expiry; refreshing slides it */
    expiresAt: ts("expires_at").notNull(),
    revokedAt: ts("revoked_at"),
    revokedReason: text("revoked_reason"),
    ip: text("ip"),
    userAgent: text("user_agent"),
  },
  (t) => [index("sessions_user_idx").on(t.userId)],
);

/** Opaque refresh tokens, stored as SHA-256 of the token; a spent one is kept to detect reuse. */
export const refreshTokens = pgTable(
  "refresh_tokens",
  {
    tokenHash: bytea("token_hash").primaryKey(),
    sessionId: uuid("session_id").notNull().references(() => sessions.id, { onDelete: "cascade" }),
    createdAt: ts("created_at").notNull().defaultNow(),
    expiresAt: ts("expires_at").notNull(),
    spentAt: ts("spent_at"),
  },
  (t) => [index("refresh_tokens_session_idx").on(t.sessionId)],
);

/** Keys that sign access tokens: public half in clear (served as JWKS), private half sealed. */
export const signingKeys = pgTable("signing_keys", {
  kid: text("kid").primaryKey(),
  alg: text("alg").notNull(),
  publicJwk: jsonb("public_jwk").$type<Record<string, unknown>>().notNull(),
  privateSealed: bytea("private_sealed").notNull(),
  keyringId: text("keyring_id").notNull(),
  createdAt: ts("created_at").notNull().defaultNow(),
  retiredAt: ts("retired_at"),
});

/** GCRA state: the theoretical arrival time of the next call, one row a bucket. */
export const rateLimitBuckets = pgTable("rate_limit_buckets", {
  key: text("key").primaryKey(),
  tat: ts("tat").notNull(),
  /**
   * The emission interval (period / limit, ms) the TAT was counted in. When a policy changes (an
   * admin override), the backlog is rescaled so that the calls already made still count as calls.
   */
  tMs: doublePrecision("t_ms"),
});

/**
 * The audit log: append-only (triggers refuse UPDATE, DELETE and TRUNCATE). A proxied call writes
 * its event with no outcome before it goes upstream, and its outcome into audit_event_outcomes
 * after: an event without an outcome row reads as `unknown`.
 */
export const auditEvents = pgTable(
  "audit_events",
  {
    seq: bigint("seq", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    id: uuid("id").notNull().unique(),
    at: ts("at").notNull().default(sql`clock_timestamp()`),
    requestId: text("request_id").notNull(),
    actorId: uuid("actor_id"),
    actorUsername: text("actor_username"),
    action: text("action").notNull(),
    /** null only for a proxied call whose outcome is written separately */
    outcome: text("outcome"),
    keyId: uuid("key_id"),
    /** the key's owner when the event happened: members see events on keys they own */
    keyOwnerId: uuid("key_owner_id"),
    /** the user an admin or owner acted on (user.*, grant.*) */
    subjectId: uuid("subject_id"),
    handle: text("handle"),
    domain: text("domain"),
    upstreamStatus: smallint("upstream_status"),
    ip: text("ip"),
    userAgent: text("user_agent"),
    detail: jsonb("detail").$type<Record<string, unknown>>(),
  },
  // Listed newest first by (at, seq): every filter has an index that ends in (at, seq), so a page
  // is an index range scan whatever the filter, time ranges included. An outcome is the event's
  // own (indexed here) or, for a proxied call, its outcome row's (indexed there, by the event's
  // position). Only `outcome=unknown` (a call whose outcome never came: rare) has none.
  (t) => [
    index("audit_events_at_seq_idx").on(t.at, t.seq),
    index("audit_events_actor_at_idx").on(t.actorId, t.at, t.seq),
    index("audit_events_key_owner_at_idx").on(t.keyOwnerId, t.at, t.seq),
    index("audit_events_key_at_idx").on(t.keyId, t.at, t.seq),
    index("audit_events_handle_at_idx").on(t.handle, t.at, t.seq),
    index("audit_events_action_at_idx").on(t.action, t.at, t.seq),
    index("audit_events_domain_at_idx").on(t.domain, t.at, t.seq).where(sql`${t.domain} is not null`),
    index("audit_events_outcome_at_idx").on(t.outcome, t.at, t.seq).where(sql`${t.outcome} is not null`),
  ],
);

export const auditEventOutcomes = pgTable(
  "audit_event_outcomes",
  {
    eventId: uuid("event_id").primaryKey(),
    at: ts("at").notNull().default(sql`clock_timestamp()`),
    outcome: text("outcome").notNull(),
    upstreamStatus: smallint("upstream_status"),
    detail: jsonb("detail").$type<Record<string, unknown>>(),
    /** the event's (at, seq), copied by a trigger on insert (migration 0010), for the index below */
    eventAt: ts("event_at"),
    eventSeq: bigint("event_seq", { mode: "number" }),
  },
  // Built concurrently after the migrations (db/online.ts), as are the two partial indexes of
  // audit_events above; the second holds the rows written before 0010 until they have their position.
  (t) => [
    index("audit_event_outcomes_outcome_at_idx").on(t.outcome, t.eventAt, t.eventSeq),
    index("audit_event_outcomes_unplaced_idx").on(t.outcome).where(sql`${t.eventAt} is null`),
  ],
);

/**
 * Stored Haltman API keys, envelope-encrypted: `sealed_key` is the key sealed by a data key of its
 * own; `wrapped_dek` is that data key sealed by the keyring entry `keyring_id`. Both are bound to
 * the row's id and owner. Rotation re-wraps the data key; the key's ciphertext never changes.
 */
export const haltmanKeys = pgTable(
  "haltman_keys",
  {
    id: uuid("id").primaryKey(),
    ownerId: uuid("owner_id").notNull().references(() => users.id),
    name: text("name").notNull(),
    last4: text("last4").notNull(),
    /** HMAC-SHA256 of the key under the vault's fingerprint secret: finds duplicates without plaintext */
    fingerprint: bytea("fingerprint").notNull().unique(),
    sealedKey: bytea("sealed_key").notNull(),
    wrappedDek: bytea("wrapped_dek").notNull(),
    keyringId: text("keyring_id").notNull(),
    /** ok | rejected (upstream refused the key; cleared by the next call it accepts) */
    status: text("status").$type<"ok" | "rejected">().notNull().default("ok"),
    statusReason: text("status_reason"),
    lastUsedAt: ts("last_used_at"),
    createdAt: ts("created_at").notNull().defaultNow(),
  },
  (t) => [index("haltman_keys_owner_idx").on(t.ownerId), index("haltman_keys_keyring_idx").on(t.keyringId)],
);

export const keyGrants = pgTable(
  "key_grants",
  {
    id: uuid("id").primaryKey().defaultRandom(),
    keyId: uuid("key_id").notNull().references(() => haltmanKeys.id, { onDelete: "cascade" }),
    userId: uuid("user_id").notNull().references(() => users.id),
    grantedBy: uuid("granted_by").notNull(),
    createdAt: ts("created_at").notNull().defaultNow(),
    expiresAt: ts("expires_at"),
    revokedAt: ts("revoked_at"),
    revokedBy: uuid("revoked_by"),
  },
  (t) => [
    // At most one grant per key and user that is not revoked (an expired one is revoked on regrant).
    uniqueIndex("key_grants_one_open_idx").on(t.keyId, t.userId).where(sql`${t.revokedAt} is null`),
    index("key_grants_user_idx").on(t.userId),
  ],
);

/** Secrets of the service itself (the fingerprint key), sealed by the keyring like everything else. */
export const vaultSecrets = pgTable("vault_secrets", {
  name: text("name").primaryKey(),
  sealed: bytea("sealed").notNull(),
  keyringId: text("keyring_id").notNull(),
  createdAt: ts("created_at").notNull().defaultNow(),
});

/**
 * Idempotency-Key records of proxied creates, per user: the first request's body hash and, once
 * upstream answered below 500, that answer, replayed to repeats for 24 hours.
 */
export const idempotencyKeys = pgTable(
  "idempotency_keys",
  {
    userId: uuid("user_id").notNull(),
    key: text("key").notNull(),
    requestHash: bytea("request_hash").notNull(),
    /** who holds the claim: only that request may complete or release it */
    claimToken: uuid("claim_token"),
    /** in_flight until the answer is stored */
    state: text("state").$type<"in_flight" | "done">().notNull(),
    status: smallint("status"),
    body: text("body"),
    createdAt: ts("created_at").notNull().default(sql`now()`),
  },
  (t) => [primaryKey({ columns: [t.userId, t.key] }), index("idempotency_keys_created_idx").on(t.createdAt)],
);

/**
 * Pauses that upstream asked for with a 429: a key's (per-key limit) or everyone's (per-address
 * limit). Checked with the rate limits, so every instance honours them.
 */
export const upstreamPauses = pgTable("upstream_pauses", {
  scope: text("scope").primaryKey(),
  until: ts("until").notNull(),
});

// Access tokens: ES256 JWTs signed with a key kept sealed in the database, so every instance signs
// and verifies with the same keys. Refresh tokens are opaque and live in services/sessions.ts.
//
// Signing keys rotate (`npm run cli -- signing-key rotate`): a new key is published at once and
// signs once it is WAIT_AFTER_MS old (every instance knows it by then); an older one verifies
// until its `retired_at`, then nothing it signed is accepted. Each instance reads the keys again
// once its copy is RELOAD_AFTER_MS old (in the background, when a token is signed or verified)
// and waits for that read once its copy is WAIT_AFTER_MS old, so a rotation reaches every
// instance within WAIT_AFTER_MS.
import { hash, randomBytes, randomUUID } from "node:crypto";
import { and, desc, gt, isNull, ne, or, sql } from "drizzle-orm";
import type { Logger } from "pino";
import {
  SignJWT,
  exportJWK,
  generateKeyPair,
  importJWK,
  jwtVerify,
  type CryptoKey,
  type JWK,
  type JWTPayload,
  type JWTHeaderParameters,
  type FlattenedJWSInput,
} from "jose";
import { KeyringError, type Keyring } from "../crypto/keyring.js";
import { isUuid } from "../ids.js";
import { rowsOf, type Db, type Executor } from "../db/client.js";
import { signingKeys } from "../db/schema.js";
import { describeError } from "../log.js";
import { atMost, withTimeout } from "../time.js";
import { record, type RequestMeta } from "./audit.js";

export const ACCESS_TOKEN_ALG = "ES256";
/** Clock skew accepted between instances and their clients, per the spine's contract (at most 30 s). */
export const CLOCK_TOLERANCE_S = 30;
/** A bearer token longer than this is refused before any parsing (ours are about 400 bytes). */
export const MAX_TOKEN_LENGTH = 2048;
/** An instance's copy of the signing keys is read again in the background once this old... */
export const RELOAD_AFTER_MS = 5_000;
/** ...and waited for (WAIT_BOUND_MS at most) once this old: the bound within which a retirement reaches every instance. */
export const WAIT_AFTER_MS = 10_000;
/** The longest a signature, a verification or the JWKS waits for that read before going on with its copy. */
export const WAIT_BOUND_MS = 1_000;
/** A read of the keys not answered by then is given up (the next may start); reads start at most once a second. */
export const READ_TIMEOUT_MS = 5_000;
/** How long a served JWKS may be cached (Cache-Control: max-age). */
export const JWKS_MAX_AGE_S = 60;
/**
 * A new key signs once it has been published this long (on the database's clock): every
 * instance has read it (WAIT_AFTER_MS); a JWKS served without it (from a copy read before it,
 * WAIT_AFTER_MS old at most, or served uncacheable) and cached (JWKS_MAX_AGE_S) has expired, and
 * a verifier that fetched it last could fetch again (jose's createRemoteJWKSet: 30 s after its
 * last fetch); and a margin.
 */
export const PUBLISH_LEAD_MS = WAIT_AFTER_MS + JWKS_MAX_AGE_S * 1000 + 30_000 + 20_000;
/**
 * After a planned rotation the previous keys verify for the access tokens' lifetime and this much
 * more: the lead before the new key signs, the clock tolerance, and a margin.
 */
export const ROTATION_GRACE_S = PUBLISH_LEAD_MS / 1000 + CLOCK_TOLERANCE_S + 30;

export type AccessClaims = { sub: string; sid: string; jti: string; iat: number; exp: number };

export type TokenService = {
  /** the key this instance signs with now */
  readonly kid: string;
  sign(userId: string, sessionId: string): Promise<{ token: string; expiresIn: number }>;
  /** The verified claims, or undefined for any token that is not one of ours and current. */
  verify(token: string): Promise<AccessClaims | undefined>;
  /** the public keys that verify now (this instance's copy, read again as for a verification) */
  jwks(): Promise<{ keys: JWK[] }>;
  /** how old this instance's copy of the keys is (ms): a JWKS from a copy over WAIT_AFTER_MS old must not be cached */
  keysAgeMs(): number;
};

export const signingBinding = (kid: string) => ({ purpose: "jwt-signing-key", table: "signing_keys", id: kid });

type KeyRow = typeof signingKeys.$inferSelect;

/** The key that signs: the newest one not retired (retiring ones only verify). */
const currentSigner = async (ex: Pick<Db, "select">) =>
  (await ex.select().from(signingKeys).where(isNull(signingKeys.retiredAt)).orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid)).limit(1))[0];

/** Serialises the creation of signing keys, whatever the number of instances and CLIs. */
const lockSigningKeys = (ex: Executor) => ex.execute(sql`select pg_advisory_xact_lock(${0x4b455953})`); // "KEYS"

async function insertSigningKey(ex: Executor, keyring: Keyring): Promise<KeyRow> {
  const { publicKey, privateKey } = await generateKeyPair(ACCESS_TOKEN_ALG, { extractable: true });
  const kid = randomUUID();
  const privateJwk = await exportJWK(privateKey);
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: ACCESS_TOKEN_ALG, use: "sig" };
  const sealed = keyring.seal(Buffer.from(JSON.stringify(privateJwk)), signingBinding(kid));
  const [row] = await ex
    .insert(signingKeys)
    // (clock_timestamp(): made now, not when its transaction began, which may have waited for the lock)
    .values({ kid, alg: ACCESS_TOKEN_ALG, publicJwk, privateSealed: sealed.box, keyringId: sealed.keyringId, createdAt: sql`clock_timestamp()` })
    .returning();
  return row!;
}

/** Loads the current signing key, creating one at first start (once, whatever the number of instances). */
async function loadOrCreateSigningKey(db: Db, keyring: Keyring): Promise<KeyRow> {
  const found = await currentSigner(db);
  if (found) return found;
  return db.transaction(async (tx) => {
    await lockSigningKeys(tx);
    return (await currentSigner(tx)) ?? (await insertSigningKey(tx, keyring));
  });
}

async function openSigningKey(keyring: Keyring, row: Pick<KeyRow, "kid" | "keyringId" | "privateSealed">): Promise<CryptoKey> {
  const privateJwk = JSON.parse(
    keyring.open({ keyringId: row.keyringId, box: row.privateSealed }, signingBinding(row.kid)).toString("utf8"),
  ) as JWK;
  return (await importJWK(privateJwk, ACCESS_TOKEN_ALG)) as CryptoKey;
}

export type SigningKeyRotation = { kid: string; createdAt: Date; retiring: { kid: string; retiresAt: Date }[] };

/**
 * A new signing key, published at once, which every instance signs with once it is PUBLISH_LEAD_MS old.
 * The keys before it verify for `graceS` more seconds (ROTATION_GRACE_S plus the access tokens'
 * lifetime for a planned rotation), or not at all with `graceS: 0` (a key thought leaked: every
 * access token it signed is refused, and frontends refresh theirs). A key already retiring keeps
 * the earlier of its time and the new one. Audited as `signing_key.rotate`, in the same
 * transaction.
 */
export async function rotateSigningKey(
  db: Db,
  keyring: Keyring,
  opts: { graceS: number; meta: RequestMeta; via: string },
): Promise<SigningKeyRotation> {
  return db.transaction(async (tx) => {
    await lockSigningKeys(tx);
    const row = await insertSigningKey(tx, keyring);
    const until = sql`clock_timestamp() + make_interval(secs => ${Math.max(0, opts.graceS)})`;
    const retiring = await tx
      .update(signingKeys)
      .set({ retiredAt: sql`least(coalesce(${signingKeys.retiredAt}, ${until}), ${until})` })
      .where(and(ne(signingKeys.kid, row.kid), or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, sql`clock_timestamp()`))))
      .returning({ kid: signingKeys.kid, retiresAt: signingKeys.retiredAt });
    const out = { kid: row.kid, createdAt: row.createdAt, retiring: retiring.map((r) => ({ kid: r.kid, retiresAt: r.retiresAt! })) };
    await record(tx, {
      action: "signing_key.rotate",
      outcome: "success",
      actor: null,
      meta: opts.meta,
      detail: {
        via: opts.via,
        kid: out.kid,
        immediate: opts.graceS <= 0,
        retiring: out.retiring.map((r) => ({ kid: r.kid, retires_at: r.retiresAt.toISOString() })),
      },
    });
    return out;
  });
}

type Dated = { createdAt: number; retiresAt: number | null };
const verifiesAt = (k: Dated, at: number) => k.retiresAt === null || at < k.retiresAt;

/**
 * The keys (given newest first) in the order an instance tries them for signing at `at`: the ones
 * published at least PUBLISH_LEAD_MS ago (every instance and every JWKS cache knows them, so a
 * token signed with them verifies everywhere), newest first; then the younger ones, oldest first
 * (the first key of all, or the new one when all the others were retired at once). Retired keys
 * are left out. Times are the database's clock, as the instance's copy carries them over (below).
 */
function signingOrder<K extends Dated>(newestFirst: K[], at: number): K[] {
  const keys = newestFirst.filter((k) => verifiesAt(k, at));
  const known = keys.filter((k) => k.createdAt <= at - PUBLISH_LEAD_MS);
  return [...known, ...keys.filter((k) => !known.includes(k)).reverse()];
}

export type SigningKeyState = {
  kid: string;
  keyringId: string;
  createdAt: Date;
  retiredAt: Date | null;
  /** signing: the instances sign with it; published: it verifies and will sign from `signsFrom`; verifying: it only verifies */
  state: "signing" | "published" | "verifying" | "retired";
  signsFrom?: Date;
};

/** Every signing key, newest first, and its state at `at` (default: the database's clock). */
export async function signingKeyStates(db: Db, at?: number): Promise<SigningKeyState[]> {
  const rows = await db.select().from(signingKeys).orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
  const t = at ?? (await rowsOf<{ ms: number }>(db, sql`select (extract(epoch from clock_timestamp()) * 1000)::float8 as ms`))[0]!.ms;
  const dated = rows.map((r) => ({ r, createdAt: r.createdAt.getTime(), retiresAt: r.retiredAt?.getTime() ?? null }));
  const signer = signingOrder(dated, t)[0]?.r;
  return dated.map(({ r, createdAt, retiresAt }) => {
    const base = { kid: r.kid, keyringId: r.keyringId, createdAt: r.createdAt, retiredAt: r.retiredAt };
    if (!verifiesAt({ createdAt, retiresAt }, t)) return { ...base, state: "retired" };
    if (r === signer) return { ...base, state: "signing" };
    if (createdAt > t - PUBLISH_LEAD_MS) return { ...base, state: "published", signsFrom: new Date(createdAt + PUBLISH_LEAD_MS) };
    return { ...base, state: "verifying" };
  });
}

type KnownKey = {
  jwk: JWK;
  key: CryptoKey;
  /** on this instance's clock (ms since the epoch), carried over from the database's */
  createdAt: number;
  /** likewise; null: not retiring */
  retiresAt: number | null;
  row: Pick<KeyRow, "kid" | "keyringId" | "privateSealed">;
};

export async function createTokenService(opts: {
  db: Db;
  keyring: Keyring;
  issuer: string;
  audience: string;
  accessTtlS: number;
  /** verified tokens kept, so a frontend re-sending its token skips the signature check */
  cacheSize?: number;
  /** the wall clock (tokens' iat and exp) */
  now?: () => number;
  /** the clock the copy of the keys is timed on (never stepped back); default performance.now, or `now` when given */
  monotonic?: () => number;
  log?: Logger;
}): Promise<TokenService> {
  const now = opts.now ?? Date.now;
  const mono = opts.monotonic ?? (opts.now ? now : () => performance.now());
  await loadOrCreateSigningKey(opts.db, opts.keyring);

  // The keys that verify, by kid, newest first, with their retirement. A read is asked for by a
  // stale copy (freshKeys) or an unknown kid (keyFor); reads start at most once a second, one at
  // a time, and one not answered in READ_TIMEOUT_MS is given up, so neither a forged kid nor a
  // database that has stopped answering costs more than a read a second. A key's times come as
  // ages on the database's clock and are carried over to this instance's at the read: a clock
  // that runs ahead of the database's must not sign with a key the others have not read. The copy
  // is timed on a monotonic clock: a wall clock stepped back must not stop the reads.
  let known = new Map<string, KnownKey>();
  let askedAt = -Infinity;
  let attemptedAt = -Infinity;
  let reads = 0;
  let applied = 0;
  let reading: Promise<void> | undefined;
  const usable = (k: KnownKey | undefined): k is KnownKey => k !== undefined && verifiesAt(k, mono());

  async function readKeys(): Promise<{ seq: number; asked: number; next: Map<string, KnownKey> }> {
    const seq = ++reads;
    const asked = mono();
    const rows = await opts.db
      .select({
        kid: signingKeys.kid,
        publicJwk: signingKeys.publicJwk,
        privateSealed: signingKeys.privateSealed,
        keyringId: signingKeys.keyringId,
        ageMs: sql<number>`(extract(epoch from clock_timestamp() - ${signingKeys.createdAt}) * 1000)::float8`,
        retiresInMs: sql<number | null>`(extract(epoch from ${signingKeys.retiredAt} - clock_timestamp()) * 1000)::float8`,
      })
      .from(signingKeys)
      .orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
    // Each time errs on the safe side of the read's duration: a key is as young as it was when the
    // answer came, and retires as soon as it would have when the read was asked.
    const received = mono();
    const next = new Map<string, KnownKey>();
    for (const r of rows) {
      if (r.retiresInMs !== null && r.retiresInMs <= 0) continue;
      const jwk = r.publicJwk as JWK;
      const key = known.get(r.kid)?.key ?? ((await importJWK(jwk, ACCESS_TOKEN_ALG)) as CryptoKey);
      const retiresAt = r.retiresInMs === null ? null : asked + r.retiresInMs;
      next.set(r.kid, { jwk, key, createdAt: received - r.ageMs, retiresAt, row: r });
    }
    return { seq, asked, next };
  }
  const apply = (read: { seq: number; asked: number; next: Map<string, KnownKey> }) => {
    if (read.seq < applied) return; // (a read given up, answered after a newer one)
    applied = read.seq;
    known = read.next;
    askedAt = read.asked;
  };
  /** The read under way, or a new one; undefined when one started less than a second ago. Never rejects. */
  function reload(): Promise<void> | undefined {
    if (reading) return reading;
    if (mono() - attemptedAt < 1_000) return undefined;
    attemptedAt = mono();
    const read = readKeys();
    read.then(apply, () => {}); // (also a read given up below, should it still answer)
    reading = withTimeout(read, READ_TIMEOUT_MS)
      .then(() => {}, (err: unknown) => {
        // The keys known so far stay in use, their retirements included; a later call asks again.
        opts.log?.warn({ err: describeError(err) }, "reading the signing keys failed");
      })
      .finally(() => (reading = undefined));
    return reading;
  }
  /** undefined when the copy may be used as it is; otherwise a wait of WAIT_BOUND_MS at most for its read */
  function freshKeys(): Promise<void> | undefined {
    const age = mono() - askedAt;
    if (age <= RELOAD_AFTER_MS) return undefined;
    const r = reload();
    return r && age > WAIT_AFTER_MS ? atMost(r, WAIT_BOUND_MS) : undefined;
  }
  apply(await readKeys()); // (fails the start when the keys cannot be read)

  // The private keys opened so far, by kid; a key this keyring cannot open is tried again after
  // the next read of the keys.
  const opened = new Map<string, CryptoKey>();
  const unopenable = new Map<string, number>();
  async function privateKey(k: KnownKey): Promise<CryptoKey | undefined> {
    const have = opened.get(k.row.kid);
    if (have) return have;
    if ((unopenable.get(k.row.kid) ?? -1) >= askedAt) return undefined;
    try {
      const key = await openSigningKey(opts.keyring, k.row);
      opened.set(k.row.kid, key);
      return key;
    } catch (err) {
      unopenable.set(k.row.kid, askedAt);
      opts.log?.error({ err: describeError(err), kid: k.row.kid }, "a signing key cannot be opened with this keyring");
      return undefined;
    }
  }
  /** The key to sign with now (signingOrder); a key this keyring cannot open is passed over for the next. */
  async function signer(): Promise<{ kid: string; key: CryptoKey }> {
    for (const k of signingOrder([...known.values()], mono())) {
      const key = await privateKey(k);
      if (key) {
        for (const kid of opened.keys()) if (!known.has(kid)) opened.delete(kid);
        return { kid: k.row.kid, key };
      }
    }
    // (at start: an entry whose id is right and whose material is not; later it cannot happen, the
    // key in use being open already)
    throw new KeyringError(["no signing key opens with it: an entry has the id of the one that sealed them but another key (check the entries' material, not only their ids)"]);
  }
  let current = await signer(); // (fails the start when no key can be opened)

  /** The key of a token's kid; `waited`: this verification has waited for a read already (one wait a call). */
  async function keyFor(header: JWTHeaderParameters, waited: boolean) {
    const kid = header.kid;
    if (typeof kid !== "string") throw new Error("no kid");
    let found = known.get(kid);
    if (!found) {
      const r = reload(); // (another instance may sign with a key made since our read)
      if (r && !waited) await atMost(r, WAIT_BOUND_MS);
      found = known.get(kid);
    }
    if (!usable(found)) throw new Error("unknown or retired kid");
    return found.key;
  }

  // The cache holds tokens whose signature and claims were checked; an entry lives no longer than
  // its token, nor than its key. Keyed by a hash of the token, so the map holds no bearer credential.
  const cacheSize = opts.cacheSize ?? 10_000;
  const verified = new Map<string, { claims: AccessClaims; kid: string }>();
  // (crypto.hash, one call: half the cost of a Hash object, on every authenticated request)
  const cacheKey = (token: string) => hash("sha256", token, "base64url");

  return {
    get kid() {
      return current.kid;
    },
    async sign(userId, sessionId) {
      const wait = freshKeys();
      if (wait) await wait;
      current = await signer();
      const signWith = current;
      const iat = Math.floor(now() / 1000);
      const token = await new SignJWT({ sid: sessionId })
        .setProtectedHeader({ alg: ACCESS_TOKEN_ALG, kid: signWith.kid, typ: "JWT" })
        .setIssuer(opts.issuer)
        .setAudience(opts.audience)
        .setSubject(userId)
        .setJti(randomBytes(12).toString("base64url"))
        .setIssuedAt(iat)
        .setExpirationTime(iat + opts.accessTtlS)
        .sign(signWith.key);
      return { token, expiresIn: opts.accessTtlS };
    },
    async verify(token) {
      if (token.length > MAX_TOKEN_LENGTH) return undefined;
      const wait = freshKeys();
      if (wait) await wait;
      const waited = wait !== undefined;
      const k = cacheKey(token);
      const hit = verified.get(k);
      const nowS = now() / 1000;
      if (hit) {
        if (hit.claims.exp + CLOCK_TOLERANCE_S > nowS && usable(known.get(hit.kid))) return hit.claims;
        verified.delete(k);
        return undefined;
      }
      let payload: JWTPayload;
      let kid: string;
      try {
        let header: JWTHeaderParameters;
        ({ payload, protectedHeader: header } = await jwtVerify(token, (h: JWTHeaderParameters, _input: FlattenedJWSInput) => keyFor(h, waited), {
          algorithms: [ACCESS_TOKEN_ALG],
          issuer: opts.issuer,
          audience: opts.audience,
          clockTolerance: CLOCK_TOLERANCE_S,
          requiredClaims: ["exp", "iat", "sub", "jti", "sid"],
          // also refuses an `iat` in the future (beyond the tolerance)
          maxTokenAge: opts.accessTtlS,
          currentDate: new Date(now()),
        }));
        kid = header.kid!;
      } catch {
        return undefined;
      }
      // Ours are UUIDs; anything else cannot name a session or a user (and must not reach SQL as one).
      if (typeof payload.sid !== "string" || !isUuid(payload.sid) || typeof payload.sub !== "string" || !isUuid(payload.sub)) return undefined;
      if (typeof payload.jti !== "string") return undefined;
      const claims: AccessClaims = { sub: payload.sub, sid: payload.sid, jti: payload.jti, iat: payload.iat!, exp: payload.exp! };
      if (verified.size >= cacheSize) verified.delete(verified.keys().next().value!);
      verified.set(k, { claims, kid });
      return claims;
    },
    async jwks() {
      const wait = freshKeys();
      if (wait) await wait;
      return { keys: [...known.values()].filter((k) => usable(k)).map((k) => k.jwk) };
    },
    keysAgeMs: () => mono() - askedAt,
  };
}

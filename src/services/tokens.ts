// Access tokens: ES256 JWTs signed with a key kept sealed in the database, so every instance signs
// and verifies with the same key. Refresh tokens are opaque and live in services/sessions.ts.
import { hash, randomBytes, randomUUID } from "node:crypto";
import { desc, isNull, sql } from "drizzle-orm";
import {
  SignJWT,
  exportJWK,
  generateKeyPair,
  importJWK,
  jwtVerify,
  type JWK,
  type JWTPayload,
  type JWTHeaderParameters,
  type FlattenedJWSInput,
} from "jose";
import type { Keyring } from "../crypto/keyring.js";
import { isUuid } from "../ids.js";
import type { Db } from "../db/client.js";
import { signingKeys } from "../db/schema.js";

export const ACCESS_TOKEN_ALG = "ES256";
/** Clock skew accepted between instances and their clients, per the spine's contract (at most 30 s). */
export const CLOCK_TOLERANCE_S = 30;
/** A bearer token longer than this is refused before any parsing (ours are about 400 bytes). */
export const MAX_TOKEN_LENGTH = 2048;

export type AccessClaims = { sub: string; sid: string; jti: string; iat: number; exp: number };

export type TokenService = {
  readonly kid: string;
  sign(userId: string, sessionId: string): Promise<{ token: string; expiresIn: number }>;
  /** The verified claims, or undefined for any token that is not one of ours and current. */
  verify(token: string): Promise<AccessClaims | undefined>;
  jwks(): { keys: JWK[] };
};

export const signingBinding = (kid: string) => ({ purpose: "jwt-signing-key", table: "signing_keys", id: kid });

type KeyRow = typeof signingKeys.$inferSelect;

/** Loads the current signing key, creating one at first start (once, whatever the number of instances). */
async function loadOrCreateSigningKey(db: Db, keyring: Keyring): Promise<KeyRow> {
  const current = async (ex: Pick<Db, "select">) =>
    (await ex.select().from(signingKeys).where(isNull(signingKeys.retiredAt)).orderBy(desc(signingKeys.createdAt)).limit(1))[0];
  const found = await current(db);
  if (found) return found;
  return db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${0x4b455953})`); // "KEYS"
    const raced = await current(tx);
    if (raced) return raced;
    const { publicKey, privateKey } = await generateKeyPair(ACCESS_TOKEN_ALG, { extractable: true });
    const kid = randomUUID();
    const privateJwk = await exportJWK(privateKey);
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: ACCESS_TOKEN_ALG, use: "sig" };
    const sealed = keyring.seal(Buffer.from(JSON.stringify(privateJwk)), signingBinding(kid));
    const [row] = await tx
      .insert(signingKeys)
      .values({ kid, alg: ACCESS_TOKEN_ALG, publicJwk, privateSealed: sealed.box, keyringId: sealed.keyringId })
      .returning();
    return row!;
  });
}

export async function createTokenService(opts: {
  db: Db;
  keyring: Keyring;
  issuer: string;
  audience: string;
  accessTtlS: number;
  /** verified tokens kept, so a frontend re-sending its token skips the signature check */
  cacheSize?: number;
  now?: () => number;
}): Promise<TokenService> {
  const now = opts.now ?? Date.now;
  const row = await loadOrCreateSigningKey(opts.db, opts.keyring);
  const privateJwk = JSON.parse(
    opts.keyring.open({ keyringId: row.keyringId, box: row.privateSealed }, signingBinding(row.kid)).toString("utf8"),
  ) as JWK;
  const signingKey = await importJWK(privateJwk, ACCESS_TOKEN_ALG);

  // Public keys by kid. An unknown kid triggers at most one reload a second (another instance
  // may have created a newer key); everything else is refused without touching the database.
  const publicKeys = new Map<string, { jwk: JWK; key: Awaited<ReturnType<typeof importJWK>> }>();
  let lastReload = 0;
  async function reloadPublicKeys() {
    const rows = await opts.db.select().from(signingKeys);
    for (const r of rows) {
      if (r.retiredAt || publicKeys.has(r.kid)) continue;
      const jwk = r.publicJwk as JWK;
      publicKeys.set(r.kid, { jwk, key: await importJWK(jwk, ACCESS_TOKEN_ALG) });
    }
    lastReload = now();
  }
  await reloadPublicKeys();

  async function keyFor(header: JWTHeaderParameters, _input: FlattenedJWSInput) {
    const kid = header.kid;
    if (typeof kid !== "string") throw new Error("no kid");
    let found = publicKeys.get(kid);
    if (!found && now() - lastReload > 1_000) {
      await reloadPublicKeys();
      found = publicKeys.get(kid);
    }
    if (!found) throw new Error("unknown kid");
    return found.key;
  }

  // The cache holds tokens whose signature and claims were checked; an entry lives no longer than
  // its token. Keyed by a hash of the token, so the map holds no bearer credential.
  const cacheSize = opts.cacheSize ?? 10_000;
  const verified = new Map<string, AccessClaims>();
  // (crypto.hash, one call: half the cost of a Hash object, on every authenticated request)
  const cacheKey = (token: string) => hash("sha256", token, "base64url");

  return {
    kid: row.kid,
    async sign(userId, sessionId) {
      const iat = Math.floor(now() / 1000);
      const token = await new SignJWT({ sid: sessionId })
        .setProtectedHeader({ alg: ACCESS_TOKEN_ALG, kid: row.kid, typ: "JWT" })
        .setIssuer(opts.issuer)
        .setAudience(opts.audience)
        .setSubject(userId)
        .setJti(randomBytes(12).toString("base64url"))
        .setIssuedAt(iat)
        .setExpirationTime(iat + opts.accessTtlS)
        .sign(signingKey);
      return { token, expiresIn: opts.accessTtlS };
    },
    async verify(token) {
      if (token.length > MAX_TOKEN_LENGTH) return undefined;
      const k = cacheKey(token);
      const hit = verified.get(k);
      const nowS = now() / 1000;
      if (hit) {
        if (hit.exp + CLOCK_TOLERANCE_S > nowS) return hit;
        verified.delete(k);
        return undefined;
      }
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, keyFor, {
          algorithms: [ACCESS_TOKEN_ALG],
          issuer: opts.issuer,
          audience: opts.audience,
          clockTolerance: CLOCK_TOLERANCE_S,
          requiredClaims: ["exp", "iat", "sub", "jti", "sid"],
          // also refuses an `iat` in the future (beyond the tolerance)
          maxTokenAge: opts.accessTtlS,
          currentDate: new Date(now()),
        }));
      } catch {
        return undefined;
      }
      // Ours are UUIDs; anything else cannot name a session or a user (and must not reach SQL as one).
      if (typeof payload.sid !== "string" || !isUuid(payload.sid) || typeof payload.sub !== "string" || !isUuid(payload.sub)) return undefined;
      if (typeof payload.jti !== "string") return undefined;
      const claims: AccessClaims = { sub: payload.sub, sid: payload.sid, jti: payload.jti, iat: payload.iat!, exp: payload.exp! };
      if (verified.size >= cacheSize) verified.delete(verified.keys().next().value!);
      verified.set(k, claims);
      return claims;
    },
    jwks: () => ({ keys: [...publicKeys.values()].map((k) => k.jwk) }),
  };
}

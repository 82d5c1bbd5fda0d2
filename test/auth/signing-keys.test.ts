// Rotating the access tokens' signing key (services/tokens.ts, `npm run cli -- signing-key rotate`):
// the newest key signs on every instance within WAIT_AFTER_MS, the previous ones verify until
// their retirement, and a retired key's tokens are refused, the verified-token cache included.
// Two token services on one database stand for two instances; each has its own clock, moved by
// the test, so the reload bounds are crossed without waiting for them.
import { decodeProtectedHeader } from "jose";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Keyring } from "../../src/crypto/keyring.js";
import { auditEvents, signingKeys } from "../../src/db/schema.js";
import {
  RELOAD_AFTER_MS,
  ROTATION_GRACE_S,
  WAIT_AFTER_MS,
  createTokenService,
  rotateSigningKey,
  signingKeyStates,
  type TokenService,
} from "../../src/services/tokens.js";
import { eq } from "drizzle-orm";
import { freshDatabase, sleep, type TestDatabase } from "../helpers/harness.js";

const material = (fill: number) => Buffer.alloc(32, fill).toString("base64");
const K1 = Keyring.parse(`s1:${material(0x31)}`);
const K2_FIRST = Keyring.parse(`s2:${material(0x32)},s1:${material(0x31)}`);
const TTL_S = 900;
const meta = { requestId: "test-rotation", ip: null, userAgent: "vitest" };

const kidOf = (token: string) => decodeProtectedHeader(token).kid!;

describe("signing-key rotation", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await freshDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  /** An instance's token service, on a clock the test moves (`at.ms` ahead of the real one). */
  async function instance(keyring = K1) {
    const at = { ms: 0 };
    const tokens = await createTokenService({ db: db.db, keyring, issuer: "haltman-bff", audience: "haltman-bff", accessTtlS: TTL_S, now: () => Date.now() + at.ms });
    return { tokens, at };
  }
  const user = randomUUID();
  const sign = async (t: TokenService) => (await t.sign(user, randomUUID())).token;

  it("a planned rotation: every instance signs with the new key once its copy is WAIT_AFTER_MS old; the old key verifies until its retirement, then neither it nor its cached tokens do", async () => {
    const a = await instance();
    const b = await instance();
    const kid1 = a.tokens.kid;
    expect(b.tokens.kid).toBe(kid1);
    const old = await sign(a.tokens);
    expect(await b.tokens.verify(old)).toMatchObject({ sub: user }); // b caches it

    const before = Date.now();
    const r = await rotateSigningKey(db.db, K1, { graceS: TTL_S + ROTATION_GRACE_S, meta, via: "test" });
    expect(r.kid).not.toBe(kid1);
    expect(r.retiring.map((k) => k.kid)).toEqual([kid1]);
    const retiresAt = r.retiring[0]!.retiresAt.getTime();
    expect(retiresAt).toBeGreaterThanOrEqual(before + (TTL_S + ROTATION_GRACE_S) * 1000 - 1000);
    expect(retiresAt).toBeLessThanOrEqual(Date.now() + (TTL_S + ROTATION_GRACE_S) * 1000 + 1000);

    // The new key is published at once and signs only once every instance knows it: an instance
    // started now (its copy of the keys the newest possible) publishes it and signs with the old.
    const c = await instance();
    expect((await c.tokens.jwks()).keys.map((k) => k.kid).sort()).toEqual([kid1, r.kid].sort());
    expect(kidOf(await sign(c.tokens))).toBe(kid1);
    expect(kidOf(await sign(b.tokens))).toBe(kid1);
    // WAIT_AFTER_MS later (no copy is older then), the instances sign with the new key.
    b.at.ms = WAIT_AFTER_MS + 1;
    const fresh = await sign(b.tokens);
    expect(kidOf(fresh)).toBe(r.kid);
    expect(b.tokens.kid).toBe(r.kid);
    c.at.ms = WAIT_AFTER_MS + 1;
    expect(kidOf(await sign(c.tokens))).toBe(r.kid);
    a.at.ms = WAIT_AFTER_MS + 1;
    expect(await a.tokens.verify(fresh)).toMatchObject({ sub: user });
    // the old key's token still verifies on both, and both keys are published
    expect(await a.tokens.verify(old)).toMatchObject({ sub: user });
    expect(await b.tokens.verify(old)).toMatchObject({ sub: user });
    expect((await b.tokens.jwks()).keys.map((k) => k.kid).sort()).toEqual([kid1, r.kid].sort());

    // Past its retirement (the tokens it signed have expired by then, but the cache and the JWKS
    // must drop it by the retirement itself): b refuses what it had cached and stops publishing it.
    b.at.ms = retiresAt - Date.now() + 1_000;
    expect(await b.tokens.verify(old)).toBeUndefined();
    expect((await b.tokens.jwks()).keys.map((k) => k.kid)).toEqual([r.kid]);
  });

  it("--now (graceS 0): a retired key's tokens are refused once the instance has read the keys, those it had cached included, and a new login's token works", async () => {
    const a = await instance();
    const onlyJwks = await instance(); // an instance that is asked for nothing but its JWKS
    const kid1 = a.tokens.kid;
    const cached = await sign(a.tokens);
    const uncached = await sign(a.tokens);
    expect(await a.tokens.verify(cached)).toBeDefined();

    const r = await rotateSigningKey(db.db, K1, { graceS: 0, meta, via: "test" });
    expect(r.retiring.map((k) => k.kid)).toContain(kid1);

    a.at.ms = WAIT_AFTER_MS + 1;
    expect(await a.tokens.verify(cached)).toBeUndefined();
    expect(await a.tokens.verify(uncached)).toBeUndefined();
    const next = await sign(a.tokens);
    expect(kidOf(next)).toBe(r.kid);
    expect(await a.tokens.verify(next)).toMatchObject({ sub: user });
    expect((await a.tokens.jwks()).keys.map((k) => k.kid)).toEqual([r.kid]);
    onlyJwks.at.ms = WAIT_AFTER_MS + 1;
    expect((await onlyJwks.tokens.jwks()).keys.map((k) => k.kid)).toEqual([r.kid]);
    // a new instance starts on the new key and refuses the old one's tokens from the start
    const c = await instance();
    expect(c.tokens.kid).toBe(r.kid);
    expect(await c.tokens.verify(cached)).toBeUndefined();
  });

  it("between RELOAD_AFTER_MS and WAIT_AFTER_MS the keys are read in the background: the call goes on with what it has, the next sees the read", async () => {
    const a = await instance();
    const kid1 = a.tokens.kid;
    const r = await rotateSigningKey(db.db, K1, { graceS: 0, meta, via: "test" });
    a.at.ms = RELOAD_AFTER_MS + 1;
    expect(kidOf(await sign(a.tokens))).toBe(kid1); // the read was not waited for
    let kid = kid1;
    for (let i = 0; i < 50 && kid !== r.kid; i++) {
      await sleep(20);
      kid = kidOf(await sign(a.tokens));
    }
    expect(kid).toBe(r.kid);
  });

  it("an instance whose keyring cannot open the new key goes on signing with its own, which still verifies; the new key's tokens verify there too", async () => {
    const a = await instance(K1);
    const kid1 = a.tokens.kid;
    const r = await rotateSigningKey(db.db, K2_FIRST, { graceS: TTL_S + ROTATION_GRACE_S, meta, via: "test" });
    const b = await instance(K2_FIRST);
    b.at.ms = WAIT_AFTER_MS + 1;
    expect(kidOf(await sign(b.tokens))).toBe(r.kid);
    a.at.ms = WAIT_AFTER_MS + 1;
    const mine = await sign(a.tokens);
    expect(kidOf(mine)).toBe(kid1);
    expect(await b.tokens.verify(mine)).toMatchObject({ sub: user });
    expect(await a.tokens.verify(await sign(b.tokens))).toMatchObject({ sub: user });
  });

  it("records each rotation in the audit log, without the private key, and lists the keys' states", async () => {
    const r = await rotateSigningKey(db.db, K1, { graceS: 60, meta, via: "test" });
    const events = await db.db.select().from(auditEvents).where(eq(auditEvents.action, "signing_key.rotate"));
    const mine = events.find((x) => (x.detail as { kid?: string }).kid === r.kid)!;
    expect(mine).toMatchObject({ outcome: "success", actorId: null });
    expect(mine.detail).toMatchObject({ via: "test", kid: r.kid, immediate: false });
    const [row] = await db.db.select().from(signingKeys).where(eq(signingKeys.kid, r.kid));
    expect(JSON.stringify(mine.detail)).not.toContain(row!.privateSealed.toString("base64"));
    expect(JSON.stringify(mine.detail)).not.toMatch(/"d"\s*:/);

    // just made, the key is listed first and does not sign yet; WAIT_AFTER_MS later it does
    const states = await signingKeyStates(db.db);
    expect(states[0]).toMatchObject({ kid: r.kid, signing: false, retiredAt: null });
    expect(states.filter((s) => s.signing)).toHaveLength(1);
    const later = await signingKeyStates(db.db, Date.now() + WAIT_AFTER_MS + 1);
    expect(later[0]).toMatchObject({ kid: r.kid, signing: true });
    expect(later.filter((s) => s.signing)).toHaveLength(1);
    for (const s of states.slice(1)) expect(s.retiredAt).toBeInstanceOf(Date);
    expect(states.every((s) => s.keyringId === "s1" || s.keyringId === "s2")).toBe(true);
  });
});

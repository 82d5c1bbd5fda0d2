// Rotating the access tokens' signing key (services/tokens.ts, `npm run cli -- signing-key rotate`):
// a new key is published at once and signs once it is PUBLISH_LEAD_MS old on the database's clock;
// the previous ones verify until their retirement, and a retired key's tokens are refused, the
// verified-token cache included. Token services on one database stand for instances. Each has its
// own clock, which the test moves to cross the bounds of its copy of the keys (RELOAD_AFTER_MS,
// WAIT_AFTER_MS); a key's age is the database's, so the test ages a key by moving its
// `created_at` (or `retired_at`) back, as the database's clock would.
import { eq, sql } from "drizzle-orm";
import { decodeProtectedHeader } from "jose";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Keyring, KeyringError } from "../../src/crypto/keyring.js";
import type { Db } from "../../src/db/client.js";
import { auditEvents, signingKeys } from "../../src/db/schema.js";
import { createLogger } from "../../src/log.js";
import {
  PUBLISH_LEAD_MS,
  RELOAD_AFTER_MS,
  ROTATION_GRACE_S,
  WAIT_AFTER_MS,
  WAIT_BOUND_MS,
  createTokenService,
  rotateSigningKey,
  signingKeyStates,
  type TokenService,
} from "../../src/services/tokens.js";
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
  async function instance(keyring = K1, opts: { ahead?: number; db?: Db; log?: ReturnType<typeof createLogger>; ownMonotonic?: boolean } = {}) {
    const at = { ms: opts.ahead ?? 0 };
    // the copy's clock: the same moved clock, or (ownMonotonic) one of its own, moved by `mono.ms`
    const mono = { ms: 0 };
    const tokens = await createTokenService({
      db: opts.db ?? db.db,
      keyring,
      issuer: "haltman-bff",
      audience: "haltman-bff",
      accessTtlS: TTL_S,
      now: () => Date.now() + at.ms,
      ...(opts.ownMonotonic ? { monotonic: () => performance.now() + mono.ms } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    });
    return { tokens, at, mono };
  }
  const user = randomUUID();
  const sign = async (t: TokenService) => (await t.sign(user, randomUUID())).token;
  /** As if the database's clock had moved `ms` on since the key was made. */
  const age = (kid: string, ms: number) => db.db.update(signingKeys).set({ createdAt: sql`${signingKeys.createdAt} - make_interval(secs => ${ms / 1000})` }).where(eq(signingKeys.kid, kid));
  const retireNow = (kid: string) => db.db.update(signingKeys).set({ retiredAt: sql`clock_timestamp() - interval '1 second'` }).where(eq(signingKeys.kid, kid));

  it("a planned rotation: the new key is published at once and signs once PUBLISH_LEAD_MS old; the old one verifies until its retirement, then neither it nor its cached tokens do", async () => {
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

    // Published at once (an instance started now has it) and not signing yet, on any instance,
    // whatever its own clock says, until the database's says the key is PUBLISH_LEAD_MS old.
    const c = await instance();
    expect((await c.tokens.jwks()).keys.map((k) => k.kid).sort()).toEqual([kid1, r.kid].sort());
    expect(kidOf(await sign(c.tokens))).toBe(kid1);
    b.at.ms = WAIT_AFTER_MS + 1; // b's copy read again: the key is still too young
    expect(kidOf(await sign(b.tokens))).toBe(kid1);

    await age(r.kid, PUBLISH_LEAD_MS + 1_000);
    b.at.ms += WAIT_AFTER_MS + 1;
    const fresh = await sign(b.tokens);
    expect(kidOf(fresh)).toBe(r.kid);
    expect(b.tokens.kid).toBe(r.kid);
    c.at.ms = WAIT_AFTER_MS + 1;
    expect(kidOf(await sign(c.tokens))).toBe(r.kid);
    // a, whose copy holds the new key, verifies its tokens; the old key's token still verifies on both
    a.at.ms = b.at.ms;
    expect(await a.tokens.verify(fresh)).toMatchObject({ sub: user });
    expect(await a.tokens.verify(old)).toMatchObject({ sub: user });
    expect(await b.tokens.verify(old)).toMatchObject({ sub: user });
    expect((await b.tokens.jwks()).keys.map((k) => k.kid).sort()).toEqual([kid1, r.kid].sort());

    // Retired (its tokens have expired by then, but the cache and the JWKS must drop it by the
    // retirement itself): b refuses what it had cached and stops publishing it.
    await retireNow(kid1);
    b.at.ms += WAIT_AFTER_MS + 1;
    expect(await b.tokens.verify(old)).toBeUndefined();
    expect((await b.tokens.jwks()).keys.map((k) => k.kid)).toEqual([r.kid]);
  });

  it("a key's age is the database's: an instance whose clock runs far ahead does not sign with a key just published, nor drop one retiring soon", async () => {
    const before = await instance();
    const r = await rotateSigningKey(db.db, K1, { graceS: 60, meta, via: "test" });
    const ahead = await instance(K1, { ahead: PUBLISH_LEAD_MS + 500 });
    expect(kidOf(await sign(ahead.tokens))).not.toBe(r.kid);
    expect(kidOf(await sign(ahead.tokens))).toBe(before.tokens.kid);
    // the key it signs with retires 60 s from now on the database's clock, not on its own
    expect((await ahead.tokens.jwks()).keys.map((k) => k.kid)).toContain(before.tokens.kid);
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
    expect(kidOf(next)).toBe(r.kid); // the only key left: it signs at once
    expect(await a.tokens.verify(next)).toMatchObject({ sub: user });
    expect((await a.tokens.jwks()).keys.map((k) => k.kid)).toEqual([r.kid]);
    // the JWKS reads a stale copy again as a verification does (between RELOAD_AFTER_MS and
    // WAIT_AFTER_MS in the background, past it waiting for the read)
    onlyJwks.at.ms = WAIT_AFTER_MS + 1;
    expect((await onlyJwks.tokens.jwks()).keys.map((k) => k.kid)).toEqual([r.kid]);
    expect(onlyJwks.tokens.keysAgeMs()).toBeLessThan(1_000);
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
    await age(r.kid, PUBLISH_LEAD_MS + 1_000);
    const b = await instance(K2_FIRST);
    expect(kidOf(await sign(b.tokens))).toBe(r.kid);
    a.at.ms = WAIT_AFTER_MS + 1;
    const mine = await sign(a.tokens);
    expect(kidOf(mine)).toBe(kid1);
    expect(await b.tokens.verify(mine)).toMatchObject({ sub: user });
    expect(await a.tokens.verify(await sign(b.tokens))).toMatchObject({ sub: user });
  });

  describe("a database that fails or stops answering", () => {
    /** db.db, whose select() fails (`down`) or never answers (`hang`), counting the calls. */
    function flaky() {
      const state = { mode: "up" as "up" | "down" | "hang", selects: 0, delayMs: 0 };
      const wrapped = new Proxy(db.db, {
        get(target, p, receiver) {
          if (p !== "select") return Reflect.get(target, p, receiver);
          return (...args: unknown[]) => {
            state.selects++;
            if (state.mode === "down") throw new Error("connection refused");
            if (state.mode === "hang") return { from: () => ({ orderBy: () => new Promise(() => {}) }) };
            const real = () => (target.select as (...a: unknown[]) => { from(t: unknown): { orderBy(...o: unknown[]): Promise<unknown> } })(...args);
            if (state.delayMs > 0) {
              // the query runs only once the delay is over (a busy pool): its clock_timestamp() is that late
              const d = state.delayMs;
              return { from: (t: unknown) => ({ orderBy: (...o: unknown[]) => sleep(d).then(() => real().from(t).orderBy(...o)) }) };
            }
            return real();
          };
        },
      });
      return { state, db: wrapped as Db };
    }

    it("forged kids start at most a read a second, and a failed read is logged once however many calls shared it", async () => {
      const f = flaky();
      const lines: string[] = [];
      const log = createLogger("warn", { write: (l: string) => void lines.push(l) });
      const a = await instance(K1, { db: f.db, log });
      const forged = (await sign(a.tokens)).replace(/^[^.]+/, Buffer.from(JSON.stringify({ alg: "ES256", kid: randomUUID(), typ: "JWT" })).toString("base64url"));
      f.state.mode = "down";
      a.at.ms = 2_000; // the copy is fresh: only the unknown kid asks for a read
      f.state.selects = 0;
      for (let i = 0; i < 50; i++) expect(await a.tokens.verify(forged)).toBeUndefined();
      expect(f.state.selects).toBe(1);
      // many calls at once past the waiting bound share one read, and its failure is one line
      a.at.ms = 4_000 + WAIT_AFTER_MS;
      f.state.selects = 0;
      lines.length = 0;
      const good = await sign(a.tokens); // (the copy's own key still signs and verifies)
      const all = await Promise.all(Array.from({ length: 200 }, () => a.tokens.verify(good)));
      expect(all.every((x) => x?.sub === user)).toBe(true);
      expect(f.state.selects).toBe(1);
      expect(lines.filter((l) => l.includes("reading the signing keys failed"))).toHaveLength(1);
    });

    it("a read that never answers holds a verification or the JWKS WAIT_BOUND_MS at most, an unknown kid's included (one wait a call); the copy's age says it is stale", async () => {
      const f = flaky();
      const a = await instance(K1, { db: f.db });
      const token = await sign(a.tokens);
      const forged = token.replace(/^[^.]+/, Buffer.from(JSON.stringify({ alg: "ES256", kid: randomUUID(), typ: "JWT" })).toString("base64url"));
      f.state.mode = "hang";
      a.at.ms = WAIT_AFTER_MS + 1;
      const timed = async <T>(f: () => Promise<T>) => {
        const t0 = performance.now();
        const v = await f();
        return { v, ms: performance.now() - t0 };
      };
      const jwks = await timed(() => a.tokens.jwks());
      expect(jwks.v.keys.length).toBeGreaterThan(0);
      expect(jwks.ms).toBeLessThan(WAIT_BOUND_MS + 500);
      expect(a.tokens.keysAgeMs()).toBeGreaterThan(WAIT_AFTER_MS);
      const verified = await timed(() => a.tokens.verify(token));
      expect(verified.v).toMatchObject({ sub: user });
      expect(verified.ms).toBeLessThan(WAIT_BOUND_MS + 500);
      const unknown = await timed(() => a.tokens.verify(forged));
      expect(unknown.v).toBeUndefined();
      expect(unknown.ms, "one wait, not one for the copy and one for the kid").toBeLessThan(WAIT_BOUND_MS + 300);
    });

    it("a read that waits before the database answers does not make a new key sign before it is PUBLISH_LEAD_MS old", async () => {
      const f = flaky();
      const a = await instance(K1, { db: f.db });
      await age(a.tokens.kid, 3_600_000); // the key it signs with: long published
      const r = await rotateSigningKey(db.db, K1, { graceS: TTL_S + ROTATION_GRACE_S, meta, via: "test" });
      await age(r.kid, PUBLISH_LEAD_MS - 6_000); // 6 s short of signing
      f.state.delayMs = 4_000; // the read runs 4 s after it was asked
      a.at.ms = WAIT_AFTER_MS + 1;
      expect(kidOf(await sign(a.tokens))).not.toBe(r.kid); // waited 1 s, went on with its copy
      await sleep(3_500); // the read has been answered: the key is ~2 s short of its lead on the database's clock
      f.state.delayMs = 0;
      const mine = (await signingKeyStates(db.db)).find((x) => x.kid === r.kid)!;
      expect(mine.state).toBe("published");
      expect(kidOf(await sign(a.tokens)), "signed with a key still short of its lead").not.toBe(r.kid);
    }, 20_000);
  });

  it("a wall clock stepped back does not stop the reads: a key retired meanwhile is refused", async () => {
    const a = await instance(K1, { ownMonotonic: true });
    const old = await sign(a.tokens);
    expect(await a.tokens.verify(old)).toBeDefined();
    a.at.ms = -120_000; // the wall clock steps back two minutes
    await rotateSigningKey(db.db, K1, { graceS: 0, meta, via: "test" });
    a.mono.ms = WAIT_AFTER_MS + 1; // ...while time goes on
    expect(await a.tokens.verify(old)).toBeUndefined();
  });

  it("a keyring whose entry has the right id and the wrong material fails the start with a KeyringError (exit 78), naming no material", async () => {
    const wrong = Keyring.parse(`s1:${material(0x77)},s2:${material(0x78)}`);
    const err = await instance(wrong).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KeyringError);
    expect(String((err as Error).message)).toMatch(/^VAULT_KEYRING: no signing key opens with it/);
    expect(String((err as Error).message)).not.toContain(material(0x77));
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

    // just made, the key is listed first and does not sign yet; PUBLISH_LEAD_MS later it does
    const states = await signingKeyStates(db.db);
    expect(states[0]).toMatchObject({ kid: r.kid, state: "published", retiredAt: null });
    expect(states[0]!.signsFrom!.getTime()).toBe(r.createdAt.getTime() + PUBLISH_LEAD_MS);
    expect(states.filter((s) => s.state === "signing")).toHaveLength(1);
    const later = await signingKeyStates(db.db, Date.now() + PUBLISH_LEAD_MS + 1_000);
    expect(later[0]).toMatchObject({ kid: r.kid, state: "signing" });
    expect(later.filter((s) => s.state === "signing")).toHaveLength(1);
    for (const s of states.slice(1)) expect(s.retiredAt).toBeInstanceOf(Date);
    expect(states.every((s) => s.keyringId === "s1" || s.keyringId === "s2")).toBe(true);
  });
});

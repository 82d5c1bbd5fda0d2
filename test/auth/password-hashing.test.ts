// The password hasher: production parameters, the cap on concurrent hashing, and the upgrade of a
// stored hash at login when the parameters were raised.
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { users } from "../../src/db/schema.js";
import { AppError } from "../../src/errors.js";
import { DEFAULT_HASH_PARAMS, createPasswordHasher, weakerThan } from "../../src/services/passwords.js";
import { FAST_HASH, freshDatabase, startService, type TestDatabase } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, createUser } from "./helpers.js";

// PHC string: $argon2id$v=19$<params>$<salt>$<hash>, params m, t, p in whatever order.
const ARGON2_RE = /^\$argon2id\$v=19\$([a-z]=\d+(?:,[a-z]=\d+)*)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/;

function params(hash: string) {
  const m = ARGON2_RE.exec(hash);
  if (!m) throw new Error(`not an argon2id v19 hash: ${hash.slice(0, 40)}`);
  const kv = Object.fromEntries(m[1]!.split(",").map((x) => x.split("=") as [string, string]));
  if (!kv.m || !kv.t || !kv.p) throw new Error(`argon2 parameters missing: ${m[1]}`);
  return { m: Number(kv.m), t: Number(kv.t), p: Number(kv.p) };
}

describe("the production hasher", () => {
  it("makes argon2id hashes at OWASP's minimum (m=19456, t=2, p=1) or stronger", async () => {
    const hasher = createPasswordHasher();
    const hash = await hasher.hash("correct horse battery");
    const p = params(hash);
    expect(p.m).toBeGreaterThanOrEqual(19_456);
    expect(p.t).toBeGreaterThanOrEqual(2);
    expect(p.p).toBeGreaterThanOrEqual(1);
    // at the minimum memory, OWASP asks for 2 passes; either dimension may be raised
    expect(p.m * p.t).toBeGreaterThanOrEqual(19_456 * 2);
    expect(hasher.params).toEqual(DEFAULT_HASH_PARAMS);
    expect(await hasher.verify(hash, "correct horse battery")).toEqual({ ok: true, needsRehash: false });
    expect((await hasher.verify(hash, "correct horse battery ")).ok).toBe(false);
    // a hash made weaker than the current parameters is flagged for upgrade
    const weak = await createPasswordHasher({ params: FAST_HASH }).hash("correct horse battery");
    expect(await hasher.verify(weak, "correct horse battery")).toEqual({ ok: true, needsRehash: true });
    // salted: the same password twice gives two hashes
    expect(await hasher.hash("correct horse battery")).not.toBe(hash);
  });
});

describe("the cap on concurrent hashing", () => {
  it("runs at most `concurrency` hashes, queues `maxWaiting`, refuses the rest with rate_limited", async () => {
    const hasher = createPasswordHasher({ params: { memoryCost: 8_192, timeCost: 2, parallelism: 1 }, concurrency: 1, maxWaiting: 1 });
    let maxRunning = 0;
    let maxWaiting = 0;
    const sample = () => {
      const s = hasher.stats();
      maxRunning = Math.max(maxRunning, s.running);
      maxWaiting = Math.max(maxWaiting, s.waiting);
    };
    const jobs = Array.from({ length: 5 }, (_, i) => {
      const p = hasher.hash(`password number ${i}`);
      sample();
      return p;
    });
    let done = false;
    const all = Promise.allSettled(jobs).finally(() => (done = true));
    while (!done) {
      sample();
      await new Promise((r) => setImmediate(r));
    }
    const results = await all;

    const fulfilled = results.filter((r) => r.status === "fulfilled");
    const rejected = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(fulfilled.length).toBe(2); // one running + one waiting
    expect(rejected.length).toBe(3);
    for (const r of rejected) {
      expect(r.reason).toBeInstanceOf(AppError);
      expect((r.reason as AppError).code).toBe("rate_limited");
      expect((r.reason as AppError).status).toBe(429);
      expect((r.reason as AppError).extras.retry_after).toBeGreaterThanOrEqual(1);
    }
    expect(maxRunning).toBe(1);
    expect(maxWaiting).toBeLessThanOrEqual(1);
    // every slot is given back, and the hasher works on
    expect(hasher.stats()).toEqual({ running: 0, waiting: 0 });
    for (const r of fulfilled) expect(params((r as PromiseFulfilledResult<string>).value).m).toBe(8_192);
    expect((await hasher.verify((fulfilled[0] as PromiseFulfilledResult<string>).value, "password number 0")).ok).toBe(true);
  });

  it("caps verifications (logins) the same way", async () => {
    const hasher = createPasswordHasher({ params: FAST_HASH, concurrency: 1, maxWaiting: 1 });
    const hash = await hasher.hash("some password");
    const results = await Promise.allSettled(Array.from({ length: 4 }, () => hasher.verify(hash, "some password")));
    expect(results.filter((r) => r.status === "fulfilled").length).toBe(2);
    const refusals = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(refusals.length).toBe(2);
    for (const r of refusals) expect((r.reason as AppError).code).toBe("rate_limited");
    expect(hasher.stats()).toEqual({ running: 0, waiting: 0 });
  });
});

describe("rehash at login when the parameters were raised", () => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await freshDatabase();
  });
  afterAll(() => database.drop());

  const storedHash = async (id: string) =>
    (await database.db.select({ h: users.passwordHash }).from(users).where(eq(users.id, id)))[0]!.h;

  it("stores the hash again with the new parameters, once, and the password keeps working", async () => {
    const weak = await startService({ database, passwords: createPasswordHasher({ params: FAST_HASH }), loginLimits: GENEROUS_LOGIN_LIMITS });
    const u = await createUser(weak);
    const before = await storedHash(u.id);
    expect(params(before).m).toBe(FAST_HASH.memoryCost);
    await weak.close();

    const stronger = { ...FAST_HASH, memoryCost: FAST_HASH.memoryCost * 2 };
    const strong = await startService({ database, passwords: createPasswordHasher({ params: stronger }), loginLimits: GENEROUS_LOGIN_LIMITS });
    try {
      // a wrong password changes nothing
      expectLoginFails(await strong.call("POST", "/v1/auth/login", { json: { username: u.username, password: "wrong password" } }));
      expect(await storedHash(u.id)).toBe(before);

      expect((await strong.call("POST", "/v1/auth/login", { json: { username: u.username, password: u.password } })).status).toBe(200);
      const after = await storedHash(u.id);
      expect(after).not.toBe(before);
      expect(params(after).m).toBe(stronger.memoryCost);

      // the upgraded hash is stable: the next login does not hash again
      expect((await strong.call("POST", "/v1/auth/login", { json: { username: u.username, password: u.password } })).status).toBe(200);
      expect(await storedHash(u.id)).toBe(after);
      expectLoginFails(await strong.call("POST", "/v1/auth/login", { json: { username: u.username, password: `${u.password} ` } }));
    } finally {
      await strong.close();
    }

    // Back to the weaker parameters (a rollback): the stronger hash is kept, not rewritten weaker.
    const rolledBack = await startService({ database, passwords: createPasswordHasher({ params: FAST_HASH }), loginLimits: GENEROUS_LOGIN_LIMITS });
    try {
      const strongHash = await storedHash(u.id);
      expect((await rolledBack.call("POST", "/v1/auth/login", { json: { username: u.username, password: u.password } })).status).toBe(200);
      expect(await storedHash(u.id)).toBe(strongHash);
    } finally {
      await rolledBack.close();
    }
  });

  it("judges a stored hash weaker only by a lower m, t or p, another type or version (argon2's needsRehash: any difference)", () => {
    const at = { memoryCost: 19_456, timeCost: 2, parallelism: 1 };
    const phc = (type: string, v: number, m: number, p: number, t: number) => `$${type}$v=${v}$m=${m},p=${p},t=${t}$c2FsdHNhbHQ$aGFzaGhhc2g`;
    expect(weakerThan(phc("argon2id", 19, 19_456, 1, 2), at)).toBe(false);
    expect(weakerThan(phc("argon2id", 19, 65_536, 4, 3), at)).toBe(false); // stronger: kept
    expect(weakerThan(phc("argon2id", 19, 19_455, 1, 2), at)).toBe(true);
    expect(weakerThan(phc("argon2id", 19, 19_456, 1, 1), at)).toBe(true);
    expect(weakerThan(phc("argon2id", 19, 19_456, 0, 2), at)).toBe(true);
    expect(weakerThan(phc("argon2i", 19, 65_536, 1, 3), at)).toBe(true); // not argon2id
    expect(weakerThan(phc("argon2d", 19, 65_536, 1, 3), at)).toBe(true);
    expect(weakerThan(phc("argon2id", 16, 65_536, 1, 3), at)).toBe(true); // version 1.0
    expect(weakerThan("not a hash", at)).toBe(true);
  });
});

function expectLoginFails(r: { status: number; json: { error?: string } }) {
  expect(r.status).toBe(401);
  expect(r.json.error).toBe("invalid_credentials");
}

describe("the default number of hashes at once", () => {
  it("is all the cores but one, at least one: the rest wait", async () => {
    const { availableParallelism } = await import("node:os");
    const hasher = createPasswordHasher({ params: FAST_HASH });
    const all = Array.from({ length: 6 }, (_, i) => hasher.hash(`password-${i}`));
    const cap = Math.max(1, availableParallelism() - 1);
    expect(hasher.stats()).toEqual({ running: Math.min(6, cap), waiting: Math.max(0, 6 - cap) });
    await Promise.all(all);
    expect(hasher.stats()).toEqual({ running: 0, waiting: 0 });
  });
});

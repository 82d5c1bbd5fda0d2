// A password check takes a while (a hash, and its turn in the queue during a login storm). What
// commits meanwhile decides: a login, or a password change, checked against a row that has since
// changed is judged again against the row as it is, never made on the old one. The hasher's
// `hold` keeps the first check open, once done, while the other change commits.
import argon2 from "argon2";
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { users } from "../../src/db/schema.js";
import { expectErrorBody, sleep, startService, type Service } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, auditEvents, countingHasher, createUser, type CountingHasher } from "./helpers.js";

let svc: Service;
let hasher: CountingHasher;
beforeAll(async () => {
  hasher = countingHasher();
  svc = await startService({ passwords: hasher, loginLimits: GENEROUS_LOGIN_LIMITS });
});
afterAll(() => svc.close());

const login = (username: string, password: string) => svc.call("POST", "/v1/auth/login", { json: { username, password } });

/** Starts `slow`, holds it once its password is checked, runs `meanwhile` to its end, then lets `slow` go on. */
async function whileChecking<T>(slow: () => Promise<T>, meanwhile: () => Promise<void>): Promise<T> {
  let release!: () => void;
  const until = new Promise<void>((r) => (release = r));
  const entered = new Promise<void>((r) => (hasher.hold = { entered: r, until }));
  const pending = slow();
  await entered;
  await meanwhile();
  release();
  return pending;
}

describe("a login whose password check is under way", () => {
  it("when an admin disables the account meanwhile: 401, and no session is made", async () => {
    const u = await createUser(svc);
    const r = await whileChecking(
      () => login(u.username, u.password),
      async () => {
        expect((await svc.call("PATCH", `/v1/admin/users/${u.id}`, { token: svc.admin.token, json: { disabled: true } })).status).toBe(200);
      },
    );
    expectErrorBody(r, 401, "invalid_credentials");
    const failed = await auditEvents(svc, { actor: u.id, action: "auth.login_failed" });
    expect(failed.map((e) => [e.outcome, e.detail?.reason])).toEqual([["denied", "disabled"]]);
    expect(await auditEvents(svc, { actor: u.id, action: "auth.login" })).toEqual([]);
  });

  it("when the password is changed meanwhile: the old password is judged against the new hash, 401", async () => {
    const u = await createUser(svc);
    const mine = await svc.login(u.username, u.password);
    const r = await whileChecking(
      () => login(u.username, u.password),
      async () => {
        const ch = await svc.call("POST", "/v1/auth/password", { token: mine.token, json: { current_password: u.password, new_password: "a brand new password" } });
        expect(ch.status).toBe(204);
      },
    );
    expectErrorBody(r, 401, "invalid_credentials");
    expect((await login(u.username, "a brand new password")).status).toBe(200);
  });

  it("upgrading an old hash does not undo a password change made meanwhile", async () => {
    const u = await createUser(svc);
    const s1 = await svc.login(u.username, u.password);
    const weak = await argon2.hash(u.password, { type: argon2.argon2id, memoryCost: 512, timeCost: 1, parallelism: 1 });
    await svc.database.db.update(users).set({ passwordHash: weak }).where(eq(users.id, u.id));
    const r = await whileChecking(
      () => login(u.username, u.password), // will rehash the old password
      async () => {
        const ch = await svc.call("POST", "/v1/auth/password", { token: s1.token, json: { current_password: u.password, new_password: "the new password" } });
        expect(ch.status).toBe(204);
      },
    );
    expectErrorBody(r, 401, "invalid_credentials");
    expect((await login(u.username, "the new password")).status).toBe(200);
    expect((await login(u.username, u.password)).status).toBe(401);
  });

  it("two logins at once that both upgrade an old hash both succeed (the second finds the first's hash, and checks again)", async () => {
    const u = await createUser(svc);
    const weak = await argon2.hash(u.password, { type: argon2.argon2id, memoryCost: 512, timeCost: 1, parallelism: 1 });
    await svc.database.db.update(users).set({ passwordHash: weak }).where(eq(users.id, u.id));
    const [a, b] = await Promise.all([login(u.username, u.password), login(u.username, u.password)]);
    expect([a.status, b.status]).toEqual([200, 200]);
  });
});

describe("a password change whose check is under way", () => {
  it("when another session changes the password first: this session was revoked by it, 401, and the first change stands", async () => {
    const u = await createUser(svc);
    const s1 = await svc.login(u.username, u.password);
    const s2 = await svc.login(u.username, u.password);
    const second = await whileChecking(
      () => svc.call("POST", "/v1/auth/password", { token: s2.token, json: { current_password: u.password, new_password: "second new password" } }),
      async () => {
        const first = await svc.call("POST", "/v1/auth/password", { token: s1.token, json: { current_password: u.password, new_password: "first new password" } });
        expect(first.status).toBe(204);
      },
    );
    expectErrorBody(second, 401, "unauthorized");
    expect((await login(u.username, "first new password")).status).toBe(200);
    expect((await login(u.username, "second new password")).status).toBe(401);
  });
});

describe("a refresh while the session's revocation is under way", () => {
  // Needs PostgreSQL: the revocation is held open on a connection of its own.
  it.skipIf(!process.env.TEST_DATABASE_URL)(
    "waits for it, then is 401: a logout that committed first is never answered by a new pair (skipped on PGlite: needs TEST_DATABASE_URL)",
    async () => {
      const { default: postgres } = await import("postgres");
      const u = await createUser(svc);
      const pair = await svc.login(u.username, u.password);
      const other = postgres(svc.database.url!, { max: 1, onnotice: () => {} });
      try {
        const reserved = await other.reserve();
        await reserved`begin`;
        await reserved`update sessions set revoked_at = now(), revoked_reason = 'logout' where user_id = ${u.id}`;
        const refresh = svc.call("POST", "/v1/auth/refresh", { json: { refresh_token: pair.refresh } });
        const settled = await Promise.race([refresh.then(() => "answered"), sleep(500).then(() => "waiting")]);
        expect(settled, "the refresh waits for the revocation's row").toBe("waiting");
        await reserved`commit`;
        reserved.release();
        expectErrorBody(await refresh, 401, "unauthorized");
      } finally {
        await other.end();
      }
    },
  );
});

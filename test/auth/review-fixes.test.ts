// Behaviours fixed after a review: each test fails without its fix.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { rowsOf } from "../../src/db/client.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";

describe("accounts: review fixes", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ loginLimits: { perAccount: parseRatePolicy("3/min")!, perAddress: parseRatePolicy("1000/min")! } });
  });
  afterAll(() => svc.close());

  it("guessing the current password is throttled like logins (a stolen token cannot brute-force it)", async () => {
    const u = await svc.addUser(svc.admin.token, "guesser");
    const codes: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await svc.call("POST", "/v1/auth/password", { token: u.token, json: { current_password: `wrong-${i}`, new_password: "another-password" } });
      codes.push(r.status);
      if (r.status === 429) {
        expectErrorBody(r, 429, "rate_limited");
        expect(r.json.reason).toBe("login");
      }
    }
    // addUser's login spent one of the 3: two guesses are judged, then refused before any hashing
    expect(codes).toEqual([400, 400, 429, 429, 429]);
  });

  it("a NUL character in a body field is 400 invalid_params naming it, and writes nothing", async () => {
    const before = await rowsOf<{ n: number }>(svc.database.db, sql`select count(*)::int as n from users`);
    const r = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username: "nul\u0000user", password: "password-1", role: "member" } });
    expectErrorBody(r, 400, "invalid_params");
    expect(r.json.field).toBe("username");
    const k = await svc.call("POST", "/v1/keys", { token: svc.admin.token, json: { name: "a\u0000b", api_key: "e".repeat(64) } });
    expectErrorBody(k, 400, "invalid_params");
    expect(k.json.field).toBe("name");
    const l = await svc.call("POST", "/v1/auth/login", { json: { username: "root\u0000", password: "x" } });
    expectErrorBody(l, 400, "invalid_params");
    const a = await svc.call("GET", "/v1/audit?handle=a%00b", { token: svc.admin.token });
    expectErrorBody(a, 400, "invalid_params");
    expect(a.json.field).toBe("handle");
    const after = await rowsOf<{ n: number }>(svc.database.db, sql`select count(*)::int as n from users`);
    expect(after[0]!.n).toBe(before[0]!.n);
  });

  it("a password holding half of a surrogate pair is taken as argon2 always hashed it (U+FFFD), not refused", async () => {
    // refused as unstorable text elsewhere (a key's name); a password is never stored as text, and
    // one set with it before the check must keep logging in
    const r = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username: "lone-half", password: "pass\ud800word-1", role: "member" } });
    expect(r.status, r.text).toBe(201);
    const login = await svc.call("POST", "/v1/auth/login", { json: { username: "lone-half", password: "pass\ud800word-1" } });
    expect(login.status, login.text).toBe(200);
    const same = await svc.call("POST", "/v1/auth/login", { json: { username: "lone-half", password: "pass\ufffdword-1" } });
    expect(same.status).toBe(200);
    const change = await svc.call("POST", "/v1/auth/password", { token: login.json.access_token, json: { current_password: "pass\udc00word-1", new_password: "new\ud83dpass-2" } });
    expect(change.status, change.text).toBe(204);
  });

  it("the login bucket of a typed name is not a plain hash of it", async () => {
    await svc.call("POST", "/v1/auth/login", { json: { username: "correct horse battery", password: "x-x-x-x-x" } });
    const { createHash } = await import("node:crypto");
    const plain = createHash("sha256").update("correct horse battery").digest("base64url");
    const rows = await rowsOf<{ key: string }>(svc.database.db, sql`select key from rate_limit_buckets where key like 'login:account:%'`);
    expect(rows.length).toBeGreaterThan(0);
    for (const r of rows) expect(r.key).not.toContain(plain.slice(0, 20));
  });

  it("a name no account can have does not log in as the account it lower-cases to (U+212A KELVIN SIGN into k)", async () => {
    const kate = await svc.addUser(svc.admin.token, "kelvin-kate");
    const spoof = "\u212Aelvin-kate";
    expect(spoof.toLowerCase()).toBe("kelvin-kate");
    const r = await svc.call("POST", "/v1/auth/login", { json: { username: spoof, password: kate.password } });
    expectErrorBody(r, 401, "invalid_credentials");
    const ok = await svc.call("POST", "/v1/auth/login", { json: { username: " Kelvin-Kate ", password: kate.password } });
    expect(ok.status, "the name as accounts have it, in any case and padded, still logs in").toBe(200);
  });
});

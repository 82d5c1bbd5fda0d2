// Issue 5, login throttling on the same limiter: a concurrent burst of failed logins for one
// account lets exactly `perAccount` attempts reach the password check; the others are 429
// `rate_limited` with reason "login", before any hashing. (Across processes: multi-process.test.ts.)
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { createPasswordHasher, type PasswordHasher } from "../../src/services/passwords.js";
import { FAST_HASH, startService, type Service } from "../helpers/harness.js";
import { expectRateLimited, statusCounts, uniqueName } from "./common.js";

/** The real hasher, counting the verifications that ran (the password checks). */
function countingHasher() {
  const inner = createPasswordHasher({ params: FAST_HASH });
  const counts = { verify: 0, verifyDummy: 0 };
  const hasher: PasswordHasher = {
    get params() {
      return inner.params;
    },
    hash: (p) => inner.hash(p),
    verify: (h, p) => {
      counts.verify++;
      return inner.verify(h, p);
    },
    verifyDummy: (p) => {
      counts.verifyDummy++;
      return inner.verifyDummy(p);
    },
    stats: () => inner.stats(),
  };
  return { hasher, counts };
}

let svc: Service;
const { hasher, counts } = countingHasher();

beforeAll(async () => {
  svc = await startService({
    passwords: hasher,
    loginLimits: { perAccount: parseRatePolicy("5/min")!, perAddress: parseRatePolicy("1000/min")! },
  });
});
afterAll(() => svc?.close());

/** A member made through the admin API, never logged in (a login would spend one of its 5). */
async function account() {
  const username = uniqueName("l");
  const password = `pw ${username} long`;
  const r = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username, password, role: "member" } });
  expect(r.status, r.text).toBe(201);
  return { id: r.json.id as string, username, password };
}

const login = (username: string, password: string) => svc.call("POST", "/v1/auth/login", { json: { username, password } });

describe("login throttling (5/min per account)", () => {
  it("20 concurrent wrong passwords: exactly 5 reach the password check (401), 15 are refused (429 login)", async () => {
    const a = await account();
    const verifiesBefore = counts.verify;
    const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => login(a.username, `wrong password ${i}`)));
    expect(statusCounts(rs)).toEqual({ 401: 5, 429: 15 });
    for (const r of rs.filter((x) => x.status === 401)) expect(r.json.error).toBe("invalid_credentials");
    for (const r of rs.filter((x) => x.status === 429)) expectRateLimited(r, "login");
    expect(counts.verify - verifiesBefore).toBe(5);

    // the right password now: still refused, and still no check
    expectRateLimited(await login(a.username, a.password), "login");
    expect(counts.verify - verifiesBefore).toBe(5);
    // another account is untouched: the right password logs in
    const b = await account();
    const ok = await login(b.username, b.password);
    expect(ok.status, ok.text).toBe(200);

    // the refusals are on record as such
    const ev = await svc.call("GET", `/v1/audit?action=auth.login_failed&actor=${a.id}&limit=100`, { token: svc.admin.token });
    expect(ev.status, ev.text).toBe(200);
    const outcomes = (ev.json.events as { outcome: string }[]).map((e) => e.outcome);
    expect(outcomes.filter((o) => o === "rate_limited")).toHaveLength(16);
    expect(outcomes.filter((o) => o === "invalid")).toHaveLength(5);
  });

  it("an unknown username is throttled the same: 5 dummy checks, 15 refusals", async () => {
    const ghost = uniqueName("ghost");
    const before = counts.verifyDummy;
    const rs = await Promise.all(Array.from({ length: 20 }, () => login(ghost, "some password")));
    expect(statusCounts(rs)).toEqual({ 401: 5, 429: 15 });
    for (const r of rs.filter((x) => x.status === 429)) expectRateLimited(r, "login");
    expect(counts.verifyDummy - before).toBe(5);
  });
});

// Login throttling: per account (whatever the address) and per client address (whatever the
// account). The service trusts one proxy (TRUST_PROXY=1), so each request picks its address with
// X-Forwarded-For and the harness's own logins (from 127.0.0.1) do not count against them.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { expectErrorBody, startService, type CallResult, type Service } from "../helpers/harness.js";
import { countingHasher, createUser, expectNoStore, uniqueName, type CountingHasher } from "./helpers.js";

function expectThrottled(r: CallResult) {
  expectErrorBody(r, 429, "rate_limited");
  expect(r.json.reason).toBe("login");
  expect(Number.isInteger(r.json.retry_after)).toBe(true);
  expect(r.json.retry_after).toBeGreaterThanOrEqual(1);
  expect(r.json.retry_after).toBeLessThanOrEqual(60);
  expect(r.headers.get("retry-after")).toBe(String(r.json.retry_after));
  expectNoStore(r);
}

const from = (ip: string) => ({ "x-forwarded-for": ip });

describe("login throttled per account (3/min)", () => {
  let svc: Service;
  let hasher: CountingHasher;
  beforeAll(async () => {
    hasher = countingHasher();
    svc = await startService({
      env: { TRUST_PROXY: "1" },
      passwords: hasher,
      loginLimits: { perAccount: parseRatePolicy("3/min")!, perAddress: parseRatePolicy("100/min")! },
    });
  });
  afterAll(() => svc.close());

  const login = (username: string, password: string, ip: string) =>
    svc.call("POST", "/v1/auth/login", { json: { username, password }, headers: from(ip) });

  it("refuses the 4th attempt on an account, from any address, even with the right password", async () => {
    const u = await createUser(svc);
    expectErrorBody(await login(u.username, "wrong password 1", "198.51.100.1"), 401, "invalid_credentials");
    expectErrorBody(await login(u.username.toUpperCase(), "wrong password 2", "198.51.100.2"), 401, "invalid_credentials");
    expect((await login(u.username, u.password, "198.51.100.3")).status).toBe(200);
    const hashesBefore = hasher.counts.verify + hasher.counts.verifyDummy;
    const fourth = await login(u.username, u.password, "198.51.100.4");
    expectThrottled(fourth);
    // refused before any password hashing
    expect(hasher.counts.verify + hasher.counts.verifyDummy).toBe(hashesBefore);
    // another account is not affected (from an address the first one used)
    const other = await createUser(svc);
    expect((await login(other.username, other.password, "198.51.100.4")).status).toBe(200);
  });

  it("throttles an unknown username like a known one", async () => {
    const ghost = uniqueName("ghost");
    for (let i = 1; i <= 3; i++) expectErrorBody(await login(ghost, "whatever pw", `198.51.100.${10 + i}`), 401, "invalid_credentials");
    expectThrottled(await login(ghost, "whatever pw", "198.51.100.20"));
  });

  it("records a throttled attempt as auth.login_failed with outcome rate_limited", async () => {
    const u = await createUser(svc);
    for (let i = 1; i <= 3; i++) await login(u.username, "wrong password", `198.51.100.${30 + i}`);
    expectThrottled(await login(u.username, "wrong password", "198.51.100.40"));
    const r = await svc.call("GET", `/v1/audit?action=auth.login_failed&actor=${u.id}`, { token: svc.admin.token });
    expect(r.status).toBe(200);
    expect(r.json.events.map((e: { outcome: string }) => e.outcome).sort()).toEqual(["invalid", "invalid", "invalid", "rate_limited"]);
  });
});

describe("login throttled per address (3/min)", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({
      env: { TRUST_PROXY: "1" },
      loginLimits: { perAccount: parseRatePolicy("100/min")!, perAddress: parseRatePolicy("3/min")! },
    });
  });
  afterAll(() => svc.close());

  const login = (username: string, password: string, ip: string) =>
    svc.call("POST", "/v1/auth/login", { json: { username, password }, headers: from(ip) });

  it("refuses the 4th attempt from an address, whatever the accounts, even with the right password", async () => {
    const u = await createUser(svc);
    const ip = "203.0.113.7";
    expectErrorBody(await login(uniqueName("a"), "password one", ip), 401, "invalid_credentials");
    expectErrorBody(await login(uniqueName("b"), "password two", ip), 401, "invalid_credentials");
    expect((await login(u.username, u.password, ip)).status).toBe(200);
    expectThrottled(await login(u.username, u.password, ip));
    expectThrottled(await login(uniqueName("c"), "password three", ip));
    // the same login from another address passes
    expect((await login(u.username, u.password, "203.0.113.8")).status).toBe(200);
  });

  it("counts IPv6 addresses one by one", async () => {
    const u = await createUser(svc);
    for (let i = 0; i < 3; i++) expectErrorBody(await login(uniqueName("v6"), "password x", "2001:db8::1"), 401, "invalid_credentials");
    expectThrottled(await login(u.username, u.password, "2001:db8::1"));
    expect((await login(u.username, u.password, "2001:db8::2")).status).toBe(200);
  });
});

// Every protected route refuses every bad token with 401 `unauthorized` (the contract's JSON body),
// and accepts the good one. New protected routes are one line each in PROTECTED_ROUTES.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { expectErrorBody, sleep, startService, uniqueName, type CallResult, type Service } from "../helpers/harness.js";
import { describeTokenAttacks, type ProtectedRoute } from "./token-attacks.js";

const PROTECTED_ROUTES: ProtectedRoute[] = [
  { method: "GET", path: "/v1/auth/me" },
  { method: "POST", path: "/v1/auth/logout", ok: 204, endsSession: true },
  { method: "POST", path: "/v1/auth/password", ok: 204, body: (c) => ({ current_password: c.caller.password, new_password: c.caller.password }) },
  { method: "POST", path: "/v1/admin/users", as: "admin", ok: 201, body: () => ({ username: uniqueName("made"), password: "a long password", role: "member" }) },
  { method: "GET", path: "/v1/admin/users", as: "admin" },
  { name: "PATCH /v1/admin/users/:id", method: "PATCH", path: (c) => `/v1/admin/users/${c.target.id}`, as: "admin", body: { disabled: false } },
  { method: "GET", path: "/v1/audit" },
  { method: "GET", path: "/v1/audit/export" },
  // later: keys, grants, proxied calls, e.g.
  // { method: "GET", path: "/v1/keys" },
];

describe("bearer tokens on every protected route", () => {
  let svc: Service;
  beforeAll(async () => {
    // The suite changes one user's password many times: its attempts are throttled like logins.
    svc = await startService({ loginLimits: { perAccount: parseRatePolicy("1000/min")!, perAddress: parseRatePolicy("1000/min")! } });
  });
  afterAll(() => svc.close());

  for (const route of PROTECTED_ROUTES) describeTokenAttacks(() => svc, route);
});

// A revocation on one instance reaches the others through the database, within the session-check
// bound (SESSION_CHECK_TTL_MS, 2 s); the instance that revokes forgets its own cache at once.
describe("revocation across instances sharing a database", () => {
  const BOUND_MS = 2_500;
  let a: Service;
  let b: Service;
  let instant: Service;
  const limits = { perAccount: parseRatePolicy("1000/min")!, perAddress: parseRatePolicy("1000/min")! };

  beforeAll(async () => {
    a = await startService({ loginLimits: limits });
    b = await startService({ database: a.database, loginLimits: limits });
    instant = await startService({ database: a.database, loginLimits: limits, sessionCheckTtlMs: 0 });
  });
  afterAll(async () => {
    await instant?.close();
    await b?.close();
    await a?.close();
  });

  /** Polls `svc` until it refuses `token`; every answer before that must be 200. Returns ms since t0. */
  async function refusedWithin(svc: Service, token: string, t0: number, boundMs: number): Promise<number> {
    let last: CallResult | undefined;
    while (Date.now() - t0 <= boundMs) {
      last = await svc.call("GET", "/v1/auth/me", { token });
      if (last.status === 401) {
        expectErrorBody(last, 401, "unauthorized");
        return Date.now() - t0;
      }
      expect(last.status, last.text).toBe(200);
      await sleep(50);
    }
    throw new Error(`still accepted ${Date.now() - t0} ms after the revocation (last: ${last?.status})`);
  }

  /** A new member, logged in on A. */
  async function member() {
    const username = uniqueName();
    const u = await a.addUser(a.admin.token, username);
    return { id: u.id, username, password: u.password, token: u.token };
  }

  it("a logout on A is refused by B within 2.5 s (accepted right before)", async () => {
    const m = await member();
    const token = m.token;
    // B has seen the session (and caches it) right before the revocation
    expect((await b.call("GET", "/v1/auth/me", { token })).status).toBe(200);
    const t0 = Date.now();
    expect((await a.call("POST", "/v1/auth/logout", { token })).status).toBe(204);
    // A forgets its cache at once
    expectErrorBody(await a.call("GET", "/v1/auth/me", { token }), 401, "unauthorized");
    // an instance that does not cache sees it at once too
    expectErrorBody(await instant.call("GET", "/v1/auth/me", { token }), 401, "unauthorized");
    const ms = await refusedWithin(b, token, t0, BOUND_MS);
    expect(ms).toBeLessThanOrEqual(BOUND_MS);
    // and it stays refused
    expectErrorBody(await b.call("GET", "/v1/auth/me", { token }), 401, "unauthorized");
  });

  it("disabling a user on A is seen by B within 2.5 s (accepted right before)", async () => {
    const m = await member();
    const token = m.token;
    expect((await b.call("GET", "/v1/auth/me", { token })).status).toBe(200);
    const t0 = Date.now();
    const r = await a.call("PATCH", `/v1/admin/users/${m.id}`, { token: a.admin.token, json: { disabled: true } });
    expect(r.status, r.text).toBe(200);
    expectErrorBody(await a.call("GET", "/v1/auth/me", { token }), 401, "unauthorized");
    expect(await refusedWithin(b, token, t0, BOUND_MS)).toBeLessThanOrEqual(BOUND_MS);
  });

  it("a password change on A ends the user's other sessions on B within 2.5 s, and keeps the one that changed it", async () => {
    const m = await member();
    const other = await a.login(m.username, m.password);
    expect((await b.call("GET", "/v1/auth/me", { token: other.token })).status).toBe(200);
    expect((await b.call("GET", "/v1/auth/me", { token: m.token })).status).toBe(200);
    const t0 = Date.now();
    const r = await a.call("POST", "/v1/auth/password", {
      token: m.token,
      json: { current_password: m.password, new_password: "a brand new password" },
    });
    expect(r.status, r.text).toBe(204);
    expect(await refusedWithin(b, other.token, t0, BOUND_MS)).toBeLessThanOrEqual(BOUND_MS);
    expect((await b.call("GET", "/v1/auth/me", { token: m.token })).status).toBe(200);
  });
});

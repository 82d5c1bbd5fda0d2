// POST /v1/auth/refresh: rotation, and reuse of a spent refresh token taken as theft.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, createUser, decodeJwt, expectNoStore } from "./helpers.js";

describe("POST /v1/auth/refresh", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ loginLimits: GENEROUS_LOGIN_LIMITS });
  });
  afterAll(() => svc.close());

  const refresh = (refresh_token: unknown) => svc.call("POST", "/v1/auth/refresh", { json: { refresh_token } });
  const me = (token: string) => svc.call("GET", "/v1/auth/me", { token });

  async function session() {
    const u = await createUser(svc);
    return { user: u, ...(await svc.login(u.username, u.password)) };
  }

  it("trades a refresh token for a new pair of the same session, never cached", async () => {
    const s = await session();
    const r = await refresh(s.refresh);
    expect(r.status, r.text).toBe(200);
    expectNoStore(r);
    expect(Object.keys(r.json).sort()).toEqual(["access_token", "expires_in", "refresh_token", "token_type", "user"]);
    expect(r.json.token_type).toBe("Bearer");
    expect(r.json.expires_in).toBe(svc.config.accessTokenTtlS);
    expect(r.json.user).toEqual({ id: s.userId, username: s.user.username, role: "member" });
    expect(r.json.refresh_token).not.toBe(s.refresh);
    expect(r.json.access_token).not.toBe(s.token);
    expect(decodeJwt(r.json.access_token).payload.sid).toBe(decodeJwt(s.token).payload.sid);
    expect((await me(r.json.access_token)).status).toBe(200);
    // the access token from before the refresh still works (it is the same session)
    expect((await me(s.token)).status).toBe(200);
    // and the new refresh token rotates again
    const again = await refresh(r.json.refresh_token);
    expect(again.status, again.text).toBe(200);
  });

  it("spends the old refresh token: presenting it again is 401 and revokes the whole session", async () => {
    // control: a session whose refresh token is not reused keeps working, refresh after refresh
    const calm = await session();
    const calm1 = await refresh(calm.refresh);
    expect(calm1.status).toBe(200);
    const calm2 = await refresh(calm1.json.refresh_token);
    expect(calm2.status).toBe(200);
    expect((await me(calm2.json.access_token)).status).toBe(200);

    const s = await session();
    const first = await refresh(s.refresh);
    expect(first.status).toBe(200);
    expect((await me(first.json.access_token)).status).toBe(200);
    expect((await me(s.token)).status).toBe(200);

    // the spent token comes back
    const reuse = await refresh(s.refresh);
    expectErrorBody(reuse, 401, "unauthorized");
    // the whole session is gone: the successor refresh token and every access token of the session
    expectErrorBody(await refresh(first.json.refresh_token), 401, "unauthorized");
    expectErrorBody(await me(first.json.access_token), 401, "unauthorized");
    expectErrorBody(await me(s.token), 401, "unauthorized");
    // the user's other sessions are untouched, and the user can log in again
    const fresh = await svc.login(s.user.username, s.user.password);
    expect((await me(fresh.token)).status).toBe(200);
    expect((await refresh(fresh.refresh)).status).toBe(200);
  });

  it("lets exactly one of two concurrent refreshes with the same token win", async () => {
    const s = await session();
    const [a, b] = await Promise.all([refresh(s.refresh), refresh(s.refresh)]);
    const statuses = [a.status, b.status].sort();
    expect(statuses).toEqual([200, 401]);
    const loser = a.status === 401 ? a : b;
    expectErrorBody(loser, 401, "unauthorized");
    // the second presentation was a reuse: the session is revoked, the winner's pair included
    const winner = a.status === 200 ? a : b;
    expectErrorBody(await me(winner.json.access_token), 401, "unauthorized");
    expectErrorBody(await refresh(winner.json.refresh_token), 401, "unauthorized");
  });

  it("refuses an unknown refresh token, and an access token in its place", async () => {
    const s = await session();
    for (const token of ["x".repeat(43), `${s.refresh}x`, s.refresh.slice(0, -1), s.token.slice(0, 500)]) {
      expectErrorBody(await refresh(token), 401, "unauthorized");
    }
    // none of those harmed the real one
    expect((await refresh(s.refresh)).status).toBe(200);
  });

  it("refuses the refresh token of a session that logged out", async () => {
    const a = await session();
    const b = await svc.login(a.user.username, a.user.password);
    expect((await svc.call("POST", "/v1/auth/logout", { token: a.token })).status).toBe(204);
    expectErrorBody(await refresh(a.refresh), 401, "unauthorized");
    expect((await refresh(b.refresh)).status).toBe(200); // the other session of the same user
  });

  it("refuses the refresh token of a disabled user", async () => {
    const s = await session();
    const t = await session();
    const off = await svc.call("PATCH", `/v1/admin/users/${s.userId}`, { token: svc.admin.token, json: { disabled: true } });
    expect(off.status).toBe(200);
    expectErrorBody(await refresh(s.refresh), 401, "unauthorized");
    expect((await refresh(t.refresh)).status).toBe(200);
    // enabling the user again does not bring the revoked session back
    expect((await svc.call("PATCH", `/v1/admin/users/${s.userId}`, { token: svc.admin.token, json: { disabled: false } })).status).toBe(200);
    expectErrorBody(await refresh(s.refresh), 401, "unauthorized");
  });

  it("refuses bodies of the wrong shape with 400", async () => {
    const raw = (body: string) => svc.call("POST", "/v1/auth/refresh", { body, headers: { "content-type": "application/json" } });
    expectErrorBody(await raw("{"), 400, "invalid_json");
    expectErrorBody(await raw("null"), 400, "invalid_params");
    const missing = await svc.call("POST", "/v1/auth/refresh", { json: {} });
    expectErrorBody(missing, 400, "invalid_params");
    expect(missing.json.field).toBe("refresh_token");
    const number = await refresh(42);
    expectErrorBody(number, 400, "invalid_params");
    expect(number.json.field).toBe("refresh_token");
  });
});

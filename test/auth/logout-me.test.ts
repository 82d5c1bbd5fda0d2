// POST /v1/auth/logout and GET /v1/auth/me.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, createUser, expectNoStore } from "./helpers.js";

describe("POST /v1/auth/logout and GET /v1/auth/me", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ loginLimits: GENEROUS_LOGIN_LIMITS });
  });
  afterAll(() => svc.close());

  const me = (token?: string) => svc.call("GET", "/v1/auth/me", token ? { token } : {});
  const logout = (token?: string) => svc.call("POST", "/v1/auth/logout", token ? { token } : {});
  const refresh = (refresh_token: string) => svc.call("POST", "/v1/auth/refresh", { json: { refresh_token } });

  it("GET /v1/auth/me answers exactly {id, username, role}, never cached", async () => {
    const m = await createUser(svc);
    const s = await svc.login(m.username, m.password);
    const r = await me(s.token);
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ id: m.id, username: m.username, role: "member" });
    expectNoStore(r);
    const a = await me(svc.admin.token);
    expect(a.json).toEqual({ id: svc.admin.id, username: "root", role: "admin" });
    expectErrorBody(await me(), 401, "unauthorized");
  });

  it("GET /v1/auth/me shows a role changed by an admin at once (role comes from the database, not the token)", async () => {
    const m = await createUser(svc);
    const s = await svc.login(m.username, m.password);
    expect((await me(s.token)).json.role).toBe("member");
    const r = await svc.call("PATCH", `/v1/admin/users/${m.id}`, { token: svc.admin.token, json: { role: "admin" } });
    expect(r.status).toBe(200);
    expect((await me(s.token)).json.role).toBe("admin");
    expect((await svc.call("GET", "/v1/admin/users", { token: s.token })).status).toBe(200);
    await svc.call("PATCH", `/v1/admin/users/${m.id}`, { token: svc.admin.token, json: { role: "member" } });
    expect((await me(s.token)).json.role).toBe("member");
    expectErrorBody(await svc.call("GET", "/v1/admin/users", { token: s.token }), 403, "forbidden");
  });

  it("logout answers 204 with no body and ends that session's access and refresh tokens", async () => {
    const m = await createUser(svc);
    const s = await svc.login(m.username, m.password);
    // a second access token of the same session (from a refresh), and another session of the user
    const rotated = await refresh(s.refresh);
    expect(rotated.status).toBe(200);
    const other = await svc.login(m.username, m.password);
    expect((await me(s.token)).status).toBe(200);
    expect((await me(rotated.json.access_token)).status).toBe(200);

    const r = await logout(s.token);
    expect(r.status).toBe(204);
    expect(r.text).toBe("");

    expectErrorBody(await me(s.token), 401, "unauthorized");
    expectErrorBody(await me(rotated.json.access_token), 401, "unauthorized");
    expectErrorBody(await refresh(rotated.json.refresh_token), 401, "unauthorized");
    // logging out twice is 401: the token is no longer valid
    expectErrorBody(await logout(s.token), 401, "unauthorized");
    // the other session of the same user is untouched
    expect((await me(other.token)).status).toBe(200);
    expect((await refresh(other.refresh)).status).toBe(200);
  });

  it("logout needs a token", async () => {
    expectErrorBody(await logout(), 401, "unauthorized");
    const m = await createUser(svc);
    const s = await svc.login(m.username, m.password);
    expect((await logout(s.token)).status).toBe(204);
  });
});

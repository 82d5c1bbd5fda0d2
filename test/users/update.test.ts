// PATCH /v1/admin/users/:id: role, disabled (which revokes sessions), rate-limit overrides, the
// last-admin guard, 404s, and the audit record of each change (none for a refusal).
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { auditCount, auditEvents } from "./common.js";

const LOGIN_LIMITS = { perAccount: parseRatePolicy("100/min")!, perAddress: parseRatePolicy("1000/min")! };

describe("PATCH /v1/admin/users/:id", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ loginLimits: LOGIN_LIMITS });
    // a second active admin, so that the last-admin guard never interferes in this block
    await svc.addUser(svc.admin.token, "backup-admin", "admin");
  });
  afterAll(() => svc.close());

  const patch = (id: string, body: unknown, token = svc.admin.token) =>
    svc.call("PATCH", `/v1/admin/users/${id}`, { token, json: body });

  async function listed(id: string) {
    const r = await svc.call("GET", "/v1/admin/users", { token: svc.admin.token });
    return r.json.users.find((u: { id: string }) => u.id === id);
  }

  it("changes the role and answers 200 with the user", async () => {
    const u = await svc.addUser(svc.admin.token, "promote-me");
    const r = await patch(u.id, { role: "admin" });
    expect(r.status).toBe(200);
    expect(r.json).toEqual({
      id: u.id,
      username: "promote-me",
      role: "admin",
      disabled: false,
      created_at: expect.any(String),
      rate_limits: {},
    });
    expect((await listed(u.id)).role).toBe("admin");
    // the change takes effect for the user's existing token
    expect((await svc.call("GET", "/v1/admin/users", { token: u.token })).status).toBe(200);
    const back = await patch(u.id, { role: "member" });
    expect(back.status).toBe(200);
    expect(back.json.role).toBe("member");
    expectErrorBody(await svc.call("GET", "/v1/admin/users", { token: u.token }), 403, "forbidden");
  });

  it("refuses a bad role and a non-boolean disabled (400 invalid_params with the field)", async () => {
    const u = await svc.addUser(svc.admin.token, "bad-patch");
    const before = await auditCount(svc);
    for (const [body, field] of [
      [{ role: "owner" }, "role"],
      [{ role: null }, "role"],
      [{ disabled: "yes" }, "disabled"],
      [{ disabled: 1 }, "disabled"],
      [{ rate_limits: "10/min" }, "rate_limits"],
    ] as const) {
      const r = await patch(u.id, body);
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field).toBe(field);
    }
    expect(await auditCount(svc)).toBe(before);
    expect(await listed(u.id)).toMatchObject({ role: "member", disabled: false, rate_limits: {} });
  });

  it("answers 404 not_found for an unknown id and for a non-UUID id", async () => {
    const before = await auditCount(svc);
    expectErrorBody(await patch(randomUUID(), { role: "admin" }), 404, "not_found");
    expectErrorBody(await patch("not-a-uuid", { role: "admin" }), 404, "not_found");
    expectErrorBody(await patch("12345", { disabled: true }), 404, "not_found");
    expectErrorBody(await patch(`${svc.admin.id}x`, { disabled: true }), 404, "not_found");
    expect(await auditCount(svc)).toBe(before);
  });

  it("disabling revokes every session: tokens 401, refresh 401, login 401 invalid_credentials", async () => {
    const u = await svc.addUser(svc.admin.token, "to-disable", "member", "disable-me-pw");
    const second = await svc.login("to-disable", "disable-me-pw");
    // the good case first: both sessions work
    expect((await svc.call("GET", "/v1/auth/me", { token: u.token })).status).toBe(200);
    expect((await svc.call("GET", "/v1/auth/me", { token: second.token })).status).toBe(200);

    const r = await patch(u.id, { disabled: true });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ id: u.id, disabled: true });
    expect((await listed(u.id)).disabled).toBe(true);

    expectErrorBody(await svc.call("GET", "/v1/auth/me", { token: u.token }), 401, "unauthorized");
    expectErrorBody(await svc.call("GET", "/v1/auth/me", { token: second.token }), 401, "unauthorized");
    expectErrorBody(await svc.call("POST", "/v1/auth/refresh", { json: { refresh_token: second.refresh } }), 401, "unauthorized");
    expectErrorBody(
      await svc.call("POST", "/v1/auth/login", { json: { username: "to-disable", password: "disable-me-pw" } }),
      401,
      "invalid_credentials",
    );

    // re-enabled: a new login works; the sessions revoked by the disabling stay revoked
    const enabled = await patch(u.id, { disabled: false });
    expect(enabled.status).toBe(200);
    expect(enabled.json.disabled).toBe(false);
    const fresh = await svc.login("to-disable", "disable-me-pw");
    expect((await svc.call("GET", "/v1/auth/me", { token: fresh.token })).status).toBe(200);
    expectErrorBody(await svc.call("GET", "/v1/auth/me", { token: u.token }), 401, "unauthorized");
  });

  it("sets, replaces and clears rate-limit overrides (null and empty string clear)", async () => {
    const u = await svc.addUser(svc.admin.token, "limited");
    let r = await patch(u.id, { rate_limits: { handle_create: "5/min" } });
    expect(r.status).toBe(200);
    expect(r.json.rate_limits).toEqual({ handle_create: "5/min" });
    r = await patch(u.id, { rate_limits: { domain_enable: "100/h" } });
    expect(r.json.rate_limits).toEqual({ handle_create: "5/min", domain_enable: "100/h" });
    expect((await listed(u.id)).rate_limits).toEqual({ handle_create: "5/min", domain_enable: "100/h" });
    r = await patch(u.id, { rate_limits: { handle_create: "7/s" } });
    expect(r.json.rate_limits).toEqual({ handle_create: "7/s", domain_enable: "100/h" });
    r = await patch(u.id, { rate_limits: { handle_create: null } });
    expect(r.status).toBe(200);
    expect(r.json.rate_limits).toEqual({ domain_enable: "100/h" });
    r = await patch(u.id, { rate_limits: { domain_enable: "" } });
    expect(r.status).toBe(200);
    expect(r.json.rate_limits).toEqual({});
    expect((await listed(u.id)).rate_limits).toEqual({});
  });

  it.each([
    ["10/week", "rate_limits.handle_create", { handle_create: "10/week" }],
    ["0/min", "rate_limits.handle_create", { handle_create: "0/min" }],
    ["a number", "rate_limits.handle_create", { handle_create: 10 }],
    ["10/minute", "rate_limits.domain_enable", { domain_enable: "10/minute" }],
    ["10 / min", "rate_limits.domain_enable", { domain_enable: "10 / min" }],
  ])("refuses the rate-limit form %s with field %s", async (_, field, rateLimits) => {
    const u = await svc.addUser(svc.admin.token, `rl-${randomUUID().slice(0, 8)}`);
    const ok = await patch(u.id, { rate_limits: { handle_create: "3/min" } });
    expect(ok.status).toBe(200);
    const before = await auditCount(svc);
    const r = await patch(u.id, { rate_limits: rateLimits });
    expectErrorBody(r, 400, "invalid_params");
    expect(r.json.field).toBe(field);
    expect(await auditCount(svc)).toBe(before);
    expect((await listed(u.id)).rate_limits).toEqual({ handle_create: "3/min" });
  });

  it("writes exactly one user.update event per change, with subject_id, and none for a refusal", async () => {
    const u = await svc.addUser(svc.admin.token, "update-audited");
    const before = await auditCount(svc);
    const r = await patch(u.id, { role: "admin", rate_limits: { handle_create: "4/min" } });
    expect(r.status).toBe(200);
    expect(await auditCount(svc)).toBe(before + 1);
    const events = (await auditEvents(svc, "action=user.update")).filter((e) => e.subject_id === u.id);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      action: "user.update",
      outcome: "success",
      subject_id: u.id,
      actor: { id: svc.admin.id, username: "root" },
    });

    // refusals: a bad value, an unknown user, a member calling
    const member = await svc.addUser(svc.admin.token, "update-member");
    const mid = await auditCount(svc);
    expectErrorBody(await patch(u.id, { role: "root" }), 400, "invalid_params");
    expectErrorBody(await patch(randomUUID(), { role: "member" }), 404, "not_found");
    expectErrorBody(await patch(u.id, { role: "member" }, member.token), 403, "forbidden");
    expect(await auditCount(svc)).toBe(mid);
    expect((await auditEvents(svc, "action=user.update")).filter((e) => e.subject_id === u.id)).toHaveLength(1);

    // the disabling is one event too, and a second one for the re-enabling
    await patch(u.id, { disabled: true });
    await patch(u.id, { disabled: false });
    expect((await auditEvents(svc, "action=user.update")).filter((e) => e.subject_id === u.id)).toHaveLength(3);
  });
});

describe("the last active admin", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ loginLimits: LOGIN_LIMITS });
  });
  afterAll(() => svc.close());

  const patch = (id: string, body: unknown, token = svc.admin.token) =>
    svc.call("PATCH", `/v1/admin/users/${id}`, { token, json: body });

  it("cannot be demoted or disabled (400 invalid_params), and nothing is written", async () => {
    const before = await auditCount(svc);
    const demote = await patch(svc.admin.id, { role: "member" });
    expectErrorBody(demote, 400, "invalid_params");
    expect(demote.json.field).toBe("role");
    const disable = await patch(svc.admin.id, { disabled: true });
    expectErrorBody(disable, 400, "invalid_params");
    expect(disable.json.field).toBe("disabled");
    expect(await auditCount(svc)).toBe(before);
    const me = await svc.call("GET", "/v1/auth/me", { token: svc.admin.token });
    expect(me.json.role).toBe("admin");
  });

  it("a disabled admin does not count as another active admin", async () => {
    const other = await svc.addUser(svc.admin.token, "other-admin", "admin");
    expect((await patch(other.id, { disabled: true })).status).toBe(200);
    const demote = await patch(svc.admin.id, { role: "member" });
    expectErrorBody(demote, 400, "invalid_params");
    expect(demote.json.field).toBe("role");
    expectErrorBody(await patch(svc.admin.id, { disabled: true }), 400, "invalid_params");
    // once the other admin is active again, root may step down
    expect((await patch(other.id, { disabled: false })).status).toBe(200);
    const ok = await patch(svc.admin.id, { role: "member" });
    expect(ok.status).toBe(200);
    expect(ok.json.role).toBe("member");
    // and now the other admin is the last one
    const { token } = await svc.login("other-admin", other.password);
    const last = await patch(other.id, { role: "member" }, token);
    expectErrorBody(last, 400, "invalid_params");
    expect(last.json.field).toBe("role");
    const lastDisable = await patch(other.id, { disabled: true }, token);
    expectErrorBody(lastDisable, 400, "invalid_params");
    expect(lastDisable.json.field).toBe("disabled");
    // a no-op patch of the last admin (same role) is not a demotion
    expect((await patch(other.id, { role: "admin" }, token)).status).toBe(200);
  });
});

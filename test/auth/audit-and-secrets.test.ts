// Every auth action leaves exactly one audit event; no password, refresh token or access token
// ever reaches a log line or an audit event, and a username that matches no account is not stored.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, auditEvents, createUser, type AuditEvent } from "./helpers.js";

describe("audit events and secrets of the auth routes", () => {
  let svc: Service;
  /** every password, refresh token and access token the suite used */
  const secrets = new Set<string>();
  /** usernames typed that match no account (may be passwords typed in the wrong field) */
  const typedNames = new Set<string>();
  const rid = (what: string) => `t-${what}-${randomBytes(6).toString("hex")}`;

  beforeAll(async () => {
    svc = await startService({ loginLimits: GENEROUS_LOGIN_LIMITS });
    secrets.add(svc.admin.password);
    secrets.add(svc.admin.token);
  });
  afterAll(() => svc.close());

  async function member() {
    const u = await createUser(svc, { password: `secret-${randomBytes(8).toString("hex")}` });
    secrets.add(u.password);
    return u;
  }
  async function login(username: string, password: string, requestId: string) {
    secrets.add(password);
    const r = await svc.call("POST", "/v1/auth/login", { json: { username, password }, headers: { "x-request-id": requestId } });
    if (r.status === 200) {
      secrets.add(r.json.access_token);
      secrets.add(r.json.refresh_token);
    }
    return r;
  }

  /** The events of `action` carrying `requestId`, and checks there is exactly one. */
  async function theOneEvent(action: string, requestId: string, actorId?: string): Promise<AuditEvent> {
    const events = await auditEvents(svc, { action, ...(actorId ? { actor: actorId } : {}) });
    for (const e of events) expect(e.action).toBe(action);
    const mine = events.filter((e) => e.request_id === requestId);
    expect(mine, `${action} events of request ${requestId}`).toHaveLength(1);
    if (actorId) expect(events, `${action} events of actor ${actorId}`).toHaveLength(1);
    return mine[0]!;
  }

  it("records a login as exactly one auth.login event", async () => {
    const u = await member();
    const id = rid("login");
    expect((await login(u.username, u.password, id)).status).toBe(200);
    const e = await theOneEvent("auth.login", id, u.id);
    expect(e.outcome).toBe("success");
    expect(e.actor).toEqual({ id: u.id, username: u.username });
    expect(e.ip).toBe("127.0.0.1");
  });

  it("records a wrong password as exactly one auth.login_failed event with the account as actor", async () => {
    const u = await member();
    const id = rid("wrongpw");
    const wrong = `wrong-${randomBytes(8).toString("hex")}`;
    expectErrorBody(await login(u.username, wrong, id), 401, "invalid_credentials");
    const e = await theOneEvent("auth.login_failed", id, u.id);
    expect(e.actor).toEqual({ id: u.id, username: u.username });
    expect(e.outcome).not.toBe("success");
  });

  it("records an unknown username as exactly one auth.login_failed event, actor null, the name not stored", async () => {
    // what a person who typed their password into the username field would send
    const typed = `Hunter2.${randomBytes(6).toString("hex")}`;
    typedNames.add(typed);
    typedNames.add(typed.toLowerCase());
    const id = rid("unknown");
    expectErrorBody(await login(typed, `pw-${randomBytes(8).toString("hex")}`, id), 401, "invalid_credentials");
    const e = await theOneEvent("auth.login_failed", id);
    expect(e.actor).toBeNull();
    const text = JSON.stringify(e);
    expect(text).not.toContain(typed);
    expect(text).not.toContain(typed.toLowerCase());
    expect(text.toLowerCase()).not.toContain(typed.toLowerCase().slice(8)); // not even its random part
    // and the export carries nothing of it either
    const exported = await svc.call("GET", "/v1/audit/export?format=ndjson&action=auth.login_failed", { token: svc.admin.token });
    expect(exported.status).toBe(200);
    expect(exported.text).toContain(id);
    expect(exported.text.toLowerCase()).not.toContain(typed.toLowerCase());
  });

  it("records a logout as exactly one auth.logout event", async () => {
    const u = await member();
    const s = await login(u.username, u.password, rid("login"));
    const id = rid("logout");
    const r = await svc.call("POST", "/v1/auth/logout", { token: s.json.access_token, headers: { "x-request-id": id } });
    expect(r.status).toBe(204);
    const e = await theOneEvent("auth.logout", id, u.id);
    expect(e.outcome).toBe("success");
    expect(e.actor).toEqual({ id: u.id, username: u.username });
  });

  it("records a password change as exactly one auth.password_change event", async () => {
    const u = await member();
    const s = await login(u.username, u.password, rid("login"));
    const next = `new-secret-${randomBytes(8).toString("hex")}`;
    secrets.add(next);
    const id = rid("pwchange");
    const r = await svc.call("POST", "/v1/auth/password", {
      token: s.json.access_token,
      json: { current_password: u.password, new_password: next },
      headers: { "x-request-id": id },
    });
    expect(r.status).toBe(204);
    const e = await theOneEvent("auth.password_change", id, u.id);
    expect(e.outcome).toBe("success");
    expect((await login(u.username, next, rid("login"))).status).toBe(200);
  });

  it("keeps secrets out of audit events through every other auth flow too", async () => {
    // refresh, reuse of a spent refresh token, a wrong current password, a disabled account
    const u = await member();
    const s = await login(u.username, u.password, rid("login"));
    const r1 = await svc.call("POST", "/v1/auth/refresh", { json: { refresh_token: s.json.refresh_token } });
    expect(r1.status).toBe(200);
    secrets.add(r1.json.access_token);
    secrets.add(r1.json.refresh_token);
    expectErrorBody(await svc.call("POST", "/v1/auth/refresh", { json: { refresh_token: s.json.refresh_token } }), 401, "unauthorized");

    const v = await member();
    const vs = await login(v.username, v.password, rid("login"));
    const wrongCurrent = `not-it-${randomBytes(8).toString("hex")}`;
    const rejectedNew = `rejected-new-${randomBytes(8).toString("hex")}`;
    secrets.add(wrongCurrent);
    secrets.add(rejectedNew);
    const bad = await svc.call("POST", "/v1/auth/password", {
      token: vs.json.access_token,
      json: { current_password: wrongCurrent, new_password: rejectedNew },
    });
    expectErrorBody(bad, 400, "invalid_params");
    expect(bad.text).not.toContain(wrongCurrent);
    expect(bad.text).not.toContain(rejectedNew);

    const off = await svc.call("PATCH", `/v1/admin/users/${v.id}`, { token: svc.admin.token, json: { disabled: true } });
    expect(off.status).toBe(200);
    expectErrorBody(await login(v.username, v.password, rid("disabled")), 401, "invalid_credentials");

    // a user created with a password: the user.create event holds no password
    await member();
  });

  it("never wrote a password, token or unknown username to a log line or an audit event", async () => {
    expect(secrets.size).toBeGreaterThan(15);
    expect(typedNames.size).toBeGreaterThan(0);
    const everything = await auditEvents(svc);
    expect(everything.length).toBeGreaterThan(10);
    const csv = await svc.call("GET", "/v1/audit/export?format=csv", { token: svc.admin.token });
    const ndjson = await svc.call("GET", "/v1/audit/export?format=ndjson", { token: svc.admin.token });
    expect(csv.status).toBe(200);
    expect(ndjson.status).toBe(200);
    const stores: Array<[string, string]> = [
      ["the logs", svc.rawLogs.join("\n")],
      ["GET /v1/audit", JSON.stringify(everything)],
      ["the CSV export", csv.text],
      ["the NDJSON export", ndjson.text],
    ];
    expect(svc.rawLogs.length).toBeGreaterThan(20); // the logs were captured at all
    for (const [where, text] of stores) {
      for (const secret of secrets) {
        if (text.includes(secret)) throw new Error(`${where} contain a secret (${secret.slice(0, 6)}…)`);
      }
      for (const name of typedNames) {
        if (text.toLowerCase().includes(name.toLowerCase())) throw new Error(`${where} contain an unknown username typed at login`);
      }
    }
    // the search does find what is there: known usernames and request ids
    const someone = everything.find((e) => e.action === "auth.login" && e.actor);
    expect(stores[1]![1]).toContain(someone!.actor!.username);
    expect(stores[0]![1]).toContain(someone!.request_id);
  });
});

// POST /v1/admin/users and GET /v1/admin/users: shapes, username and password rules, roles,
// conflicts, admin-only access, and the audit record of each creation (none for a refusal).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { UUID_RE, auditCount, auditEvents, userCount } from "./common.js";

let svc: Service;
beforeAll(async () => {
  // every login here comes from 127.0.0.1: lift the per-address login throttle out of the way
  svc = await startService({ loginLimits: { perAccount: parseRatePolicy("100/min")!, perAddress: parseRatePolicy("1000/min")! } });
});
afterAll(() => svc.close());

const create = (body: unknown, token = svc.admin.token) => svc.call("POST", "/v1/admin/users", { token, json: body });

/** Asserts a refusal with invalid_params naming `field`, and that nothing was written. */
async function expectRefused(body: unknown, field: string) {
  const usersBefore = await userCount(svc);
  const auditBefore = await auditCount(svc);
  const r = await create(body);
  expectErrorBody(r, 400, "invalid_params");
  expect(r.json.field).toBe(field);
  expect(await userCount(svc)).toBe(usersBefore);
  expect(await auditCount(svc)).toBe(auditBefore);
}

describe("POST /v1/admin/users", () => {
  it("creates a user: 201 {id, username, role} and the user can log in", async () => {
    const r = await create({ username: "alice", password: "alice-password", role: "member" });
    expect(r.status).toBe(201);
    expect(r.json).toEqual({ id: expect.stringMatching(UUID_RE), username: "alice", role: "member" });
    const session = await svc.login("alice", "alice-password");
    expect(session.userId).toBe(r.json.id);
    const me = await svc.call("GET", "/v1/auth/me", { token: session.token });
    expect(me.json).toEqual({ id: r.json.id, username: "alice", role: "member" });
  });

  it("creates an admin who may use the admin API", async () => {
    const r = await create({ username: "second-admin", password: "second-admin-pw", role: "admin" });
    expect(r.status).toBe(201);
    expect(r.json.role).toBe("admin");
    const { token } = await svc.login("second-admin", "second-admin-pw");
    expect((await svc.call("GET", "/v1/admin/users", { token })).status).toBe(200);
  });

  it("stores usernames lower-cased and refuses a taken name in any case with 409 conflict", async () => {
    const r = await create({ username: "Bob", password: "bob-password", role: "member" });
    expect(r.status).toBe(201);
    expect(r.json.username).toBe("bob");
    // logging in with either case works: names are compared lower-cased
    await svc.login("bob", "bob-password");
    await svc.login("BOB", "bob-password");

    const usersBefore = await userCount(svc);
    const auditBefore = await auditCount(svc);
    for (const name of ["bob", "Bob", "BOB", "bOb"]) {
      const again = await create({ username: name, password: "another-password", role: "admin" });
      expectErrorBody(again, 409, "conflict");
    }
    expect(await userCount(svc)).toBe(usersBefore);
    expect(await auditCount(svc)).toBe(auditBefore);
    // the original account is untouched: the old password still works, the role is still member
    const { token } = await svc.login("bob", "bob-password");
    expect((await svc.call("GET", "/v1/auth/me", { token })).json.role).toBe("member");
  });

  it("refuses the bootstrap admin's name too (409), whatever the case", async () => {
    expectErrorBody(await create({ username: "ROOT", password: "whatever-pw", role: "member" }), 409, "conflict");
  });

  it("accepts usernames of 3 and 64 characters and refuses 2 and 65", async () => {
    expect((await create({ username: "abc", password: "password-3", role: "member" })).status).toBe(201);
    const long64 = "a".repeat(60) + ".b_-";
    expect(long64).toHaveLength(64);
    const r = await create({ username: long64, password: "password-64", role: "member" });
    expect(r.status).toBe(201);
    expect(r.json.username).toBe(long64);
    await expectRefused({ username: "ab", password: "password-2", role: "member" }, "username");
    await expectRefused({ username: "c".repeat(65), password: "password-65", role: "member" }, "username");
    await expectRefused({ username: "C".repeat(65), password: "password-65", role: "member" }, "username");
  });

  it("accepts every allowed character: a-z 0-9 . _ -", async () => {
    const r = await create({ username: "a.b_c-d09", password: "chars-password", role: "member" });
    expect(r.status).toBe(201);
    expect(r.json.username).toBe("a.b_c-d09");
  });

  it.each([
    ["a space", "bob smith"],
    ["an at sign", "bob@example"],
    ["a slash", "bob/x"],
    ["a plus", "bob+1"],
    ["a colon", "bob:x"],
    ["a non-ASCII letter", "bøb"],
    ["an emoji", "bob😀"],
    ["a NUL", "bob\u0000x"],
    ["a newline", "bob\nx"],
    ["leading whitespace", " bob2"],
    ["the empty string", ""],
  ])("refuses a username with %s (400 invalid_params field username)", async (_, username) => {
    await expectRefused({ username, password: "long-enough-pw", role: "member" }, "username");
  });

  it("refuses a non-ASCII letter that lower-cases into a-z (KELVIN SIGN, U+212A)", async () => {
    // "\u212Aelvin".toLowerCase() === "kelvin": the name as given is not of a-z 0-9 . _ -
    await expectRefused({ username: "\u212Aelvin", password: "long-enough-pw", role: "member" }, "username");
  });

  it("accepts passwords of 8 and 1024 characters and refuses 7 and 1025", async () => {
    expect((await create({ username: "pw8", password: "12345678", role: "member" })).status).toBe(201);
    await svc.login("pw8", "12345678");
    const p1024 = "x".repeat(1024);
    expect((await create({ username: "pw1024", password: p1024, role: "member" })).status).toBe(201);
    await svc.login("pw1024", p1024);
    await expectRefused({ username: "pw7", password: "1234567", role: "member" }, "password");
    await expectRefused({ username: "pw1025", password: "x".repeat(1025), role: "member" }, "password");
    await expectRefused({ username: "pw0", password: "", role: "member" }, "password");
  });

  it("counts password length in code points, not UTF-16 units", async () => {
    // 8 emoji = 16 UTF-16 units; 7 emoji = 14 units but 7 characters
    expect((await create({ username: "emoji8", password: "😀".repeat(8), role: "member" })).status).toBe(201);
    await svc.login("emoji8", "😀".repeat(8));
    await expectRefused({ username: "emoji7", password: "😀".repeat(7), role: "member" }, "password");
    // 1024 emoji = 2048 units: still 1024 characters
    expect((await create({ username: "emoji1024", password: "😀".repeat(1024), role: "member" })).status).toBe(201);
    await expectRefused({ username: "emoji1025", password: "😀".repeat(1025), role: "member" }, "password");
  });

  it("never trims passwords", async () => {
    const password = "  spaced pw  ";
    expect((await create({ username: "spacey", password, role: "member" })).status).toBe(201);
    await svc.login("spacey", password);
    const trimmed = await svc.call("POST", "/v1/auth/login", { json: { username: "spacey", password: password.trim() } });
    expectErrorBody(trimmed, 401, "invalid_credentials");
    // 8 characters only with its spaces: accepted (a trimming check would count 6)
    expect((await create({ username: "spacey8", password: " abcdef ", role: "member" })).status).toBe(201);
    await svc.login("spacey8", " abcdef ");
    expectErrorBody(await svc.call("POST", "/v1/auth/login", { json: { username: "spacey8", password: "abcdef" } }), 401, "invalid_credentials");
  });

  it.each([
    ["an unknown role", "owner"],
    ["a differently cased role", "Admin"],
    ["a number", 1],
    ["null", null],
  ])("refuses %s as role", async (_, role) => {
    await expectRefused({ username: "roley", password: "long-enough-pw", role }, "role");
  });

  it("refuses a missing role, username or password", async () => {
    await expectRefused({ username: "norole", password: "long-enough-pw" }, "role");
    await expectRefused({ password: "long-enough-pw", role: "member" }, "username");
    await expectRefused({ username: "nopass", role: "member" }, "password");
  });
});

describe("GET /v1/admin/users", () => {
  it("lists every user with {id, username, role, disabled, created_at, rate_limits}", async () => {
    const made = await create({ username: "listed", password: "listed-password", role: "member" });
    expect(made.status).toBe(201);
    const r = await svc.call("GET", "/v1/admin/users", { token: svc.admin.token });
    expect(r.status).toBe(200);
    expect(Object.keys(r.json)).toEqual(["users"]);
    expect(Array.isArray(r.json.users)).toBe(true);
    for (const u of r.json.users) {
      expect(Object.keys(u).sort()).toEqual(["created_at", "disabled", "id", "rate_limits", "role", "username"]);
      expect(u.id).toMatch(UUID_RE);
      expect(typeof u.username).toBe("string");
      expect(["admin", "member"]).toContain(u.role);
      expect(typeof u.disabled).toBe("boolean");
      expect(typeof u.rate_limits).toBe("object");
      expect(Number.isNaN(Date.parse(u.created_at))).toBe(false);
      expect(new Date(u.created_at).toISOString()).toBe(u.created_at);
    }
    const listed = r.json.users.find((u: { id: string }) => u.id === made.json.id);
    expect(listed).toEqual({
      id: made.json.id,
      username: "listed",
      role: "member",
      disabled: false,
      created_at: expect.any(String),
      rate_limits: {},
    });
    expect(Math.abs(Date.parse(listed.created_at) - Date.now())).toBeLessThan(60_000);
    const root = r.json.users.find((u: { username: string }) => u.username === "root");
    expect(root).toMatchObject({ id: svc.admin.id, role: "admin", disabled: false });
    // no hash, no secret of any kind
    expect(r.text).not.toMatch(/argon2|password/i);
  });
});

describe("admin only", () => {
  it("a member gets 403 forbidden on POST, GET and PATCH, and nothing is written", async () => {
    const member = await svc.addUser(svc.admin.token, "plain-member");
    const usersBefore = await userCount(svc);
    const auditBefore = await auditCount(svc);
    expectErrorBody(await create({ username: "by-member", password: "long-enough-pw", role: "admin" }, member.token), 403, "forbidden");
    expectErrorBody(await svc.call("GET", "/v1/admin/users", { token: member.token }), 403, "forbidden");
    expectErrorBody(
      await svc.call("PATCH", `/v1/admin/users/${member.id}`, { token: member.token, json: { role: "admin" } }),
      403,
      "forbidden",
    );
    // even on the member's own PATCH with a bad body: the role is checked before the body
    expectErrorBody(
      await svc.call("PATCH", `/v1/admin/users/${member.id}`, { token: member.token, json: { role: 5 } }),
      403,
      "forbidden",
    );
    expect(await userCount(svc)).toBe(usersBefore);
    expect(await auditCount(svc)).toBe(auditBefore);
    const me = await svc.call("GET", "/v1/auth/me", { token: member.token });
    expect(me.json.role).toBe("member");
  });

  it("no token is 401 on all three", async () => {
    expectErrorBody(await svc.call("POST", "/v1/admin/users", { json: { username: "x-anon", password: "long-enough-pw", role: "admin" } }), 401, "unauthorized");
    expectErrorBody(await svc.call("GET", "/v1/admin/users"), 401, "unauthorized");
    expectErrorBody(await svc.call("PATCH", `/v1/admin/users/${svc.admin.id}`, { json: { role: "member" } }), 401, "unauthorized");
  });
});

describe("audit of user.create", () => {
  it("writes exactly one user.create event with the new user as subject_id and the admin as actor", async () => {
    const before = await auditCount(svc);
    const r = await create({ username: "audited", password: "audited-password", role: "member" }, svc.admin.token);
    expect(r.status).toBe(201);
    expect(await auditCount(svc)).toBe(before + 1);
    const events = (await auditEvents(svc, "action=user.create")).filter((e) => e.subject_id === r.json.id);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      action: "user.create",
      outcome: "success",
      subject_id: r.json.id,
      actor: { id: svc.admin.id, username: "root" },
      ip: "127.0.0.1",
    });
    // the password is nowhere in it
    expect(JSON.stringify(events[0])).not.toContain("audited-password");
  });

  it("writes nothing for a conflict, a bad body or a forbidden call", async () => {
    const member = await svc.addUser(svc.admin.token, "audit-member");
    const before = await auditCount(svc);
    expectErrorBody(await create({ username: "AUDITED", password: "long-enough-pw", role: "member" }), 409, "conflict");
    expectErrorBody(await create({ username: "x", password: "long-enough-pw", role: "member" }), 400, "invalid_params");
    expectErrorBody(await create({ username: "fresh-name", password: "long-enough-pw", role: "member" }, member.token), 403, "forbidden");
    expect(await auditCount(svc)).toBe(before);
    // and the good case writes one
    expect((await create({ username: "fresh-name", password: "long-enough-pw", role: "member" })).status).toBe(201);
    expect(await auditCount(svc)).toBe(before + 1);
  });
});

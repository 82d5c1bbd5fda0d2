// POST /v1/auth/password: a wrong current password is 400 (not 401), success revokes every other
// session of the user and keeps this one; passwords are 8 to 1024 characters (code points), never trimmed.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, createUser, uniqueName } from "./helpers.js";

describe("POST /v1/auth/password", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ loginLimits: GENEROUS_LOGIN_LIMITS });
  });
  afterAll(() => svc.close());

  const change = (token: string, current_password: unknown, new_password: unknown) =>
    svc.call("POST", "/v1/auth/password", { token, json: { current_password, new_password } });
  const me = (token: string) => svc.call("GET", "/v1/auth/me", { token });
  const refresh = (refresh_token: string) => svc.call("POST", "/v1/auth/refresh", { json: { refresh_token } });
  const login = (username: string, password: string) => svc.call("POST", "/v1/auth/login", { json: { username, password } });

  it("answers a wrong current password with 400 invalid_params field current_password, and changes nothing", async () => {
    const u = await createUser(svc);
    const s = await svc.login(u.username, u.password);
    const other = await svc.login(u.username, u.password);
    for (const wrong of [`${u.password}x`, "", ` ${u.password}`, u.password.toUpperCase()]) {
      const r = await change(s.token, wrong, "a new password here");
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, wrong).toBe("current_password");
    }
    // not logged out, no session revoked, the password is the old one
    expect((await me(s.token)).status).toBe(200);
    expect((await me(other.token)).status).toBe(200);
    expectErrorBody(await login(u.username, "a new password here"), 401, "invalid_credentials");
    expect((await login(u.username, u.password)).status).toBe(200);
    // control: the right current password is accepted
    expect((await change(s.token, u.password, "a new password here")).status).toBe(204);
  });

  it("changes the password: 204, every other session revoked, this one kept; new password works, old does not", async () => {
    const u = await createUser(svc);
    const mine = await svc.login(u.username, u.password);
    const other1 = await svc.login(u.username, u.password);
    const other2 = await svc.login(u.username, u.password);
    const bystander = await createUser(svc);
    const theirs = await svc.login(bystander.username, bystander.password);
    for (const t of [mine.token, other1.token, other2.token, theirs.token]) expect((await me(t)).status).toBe(200);

    const r = await change(mine.token, u.password, "the new password");
    expect(r.status, r.text).toBe(204);
    expect(r.text).toBe("");

    // this session stays, access and refresh
    expect((await me(mine.token)).status).toBe(200);
    // every other session of the user is gone, access and refresh
    for (const s of [other1, other2]) {
      expectErrorBody(await me(s.token), 401, "unauthorized");
      expectErrorBody(await refresh(s.refresh), 401, "unauthorized");
    }
    const rotated = await refresh(mine.refresh);
    expect(rotated.status, rotated.text).toBe(200);
    expect((await me(rotated.json.access_token)).status).toBe(200);
    // other users are untouched
    expect((await me(theirs.token)).status).toBe(200);

    expectErrorBody(await login(u.username, u.password), 401, "invalid_credentials");
    expect((await login(u.username, "the new password")).status).toBe(200);
  });

  it("accepts new passwords of 8 to 1024 characters, counted in code points", async () => {
    const u = await createUser(svc);
    const s = await svc.login(u.username, u.password);
    let current = u.password;
    const accepted = async (pw: string, what: string) => {
      const r = await change(s.token, current, pw);
      expect(r.status, `${what}: ${r.text}`).toBe(204);
      current = pw;
    };
    const refused = async (pw: string, what: string) => {
      const r = await change(s.token, current, pw);
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, what).toBe("new_password");
    };
    const emoji = "\u{1F511}"; // 🔑: one code point, two UTF-16 units, four UTF-8 bytes

    await refused("a".repeat(7), "7 characters");
    await accepted("b".repeat(8), "8 characters");
    await refused("c".repeat(1025), "1025 characters");
    await accepted("d".repeat(1024), "1024 characters");
    await refused(emoji.repeat(7), "7 emoji (14 UTF-16 units)");
    await accepted(emoji.repeat(8), "8 emoji");
    await accepted(`${emoji.repeat(1023)}e`, "1024 code points, 2047 UTF-16 units");
    await refused(emoji.repeat(1025), "1025 emoji");
    await refused("", "empty");

    // the last accepted one is the password now
    expect((await login(u.username, `${emoji.repeat(1023)}e`)).status).toBe(200);
    expectErrorBody(await login(u.username, emoji.repeat(8)), 401, "invalid_credentials");
  });

  it("never trims the new password", async () => {
    const u = await createUser(svc);
    const s = await svc.login(u.username, u.password);
    expect((await change(s.token, u.password, "  padded new pw  ")).status).toBe(204);
    expectErrorBody(await login(u.username, "padded new pw"), 401, "invalid_credentials");
    expect((await login(u.username, "  padded new pw  ")).status).toBe(200);
    // 8 characters only with the spaces counted
    const short = await change(s.token, "  padded new pw  ", "  abcd  ");
    expect(short.status, short.text).toBe(204);
    expect((await login(u.username, "  abcd  ")).status).toBe(200);
  });

  it("refuses bodies of the wrong shape with 400 naming the field", async () => {
    const u = await createUser(svc);
    const s = await svc.login(u.username, u.password);
    const noCurrent = await svc.call("POST", "/v1/auth/password", { token: s.token, json: { new_password: "long enough pw" } });
    expectErrorBody(noCurrent, 400, "invalid_params");
    expect(noCurrent.json.field).toBe("current_password");
    const noNew = await svc.call("POST", "/v1/auth/password", { token: s.token, json: { current_password: u.password } });
    expectErrorBody(noNew, 400, "invalid_params");
    expect(noNew.json.field).toBe("new_password");
    const numberNew = await change(s.token, u.password, 12345678);
    expectErrorBody(numberNew, 400, "invalid_params");
    expect(numberNew.json.field).toBe("new_password");
    expectErrorBody(
      await svc.call("POST", "/v1/auth/password", { token: s.token, body: "{", headers: { "content-type": "application/json" } }),
      400,
      "invalid_json",
    );
    expect((await me(s.token)).status).toBe(200);
  });

  it("applies the same password rules when an admin creates a user", async () => {
    const create = (password: string) =>
      svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username: uniqueName(), password, role: "member" } });
    for (const [pw, what] of [["a".repeat(7), "7"], ["a".repeat(1025), "1025"], ["\u{1F511}".repeat(7), "7 emoji"]] as const) {
      const r = await create(pw);
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, what).toBe("password");
    }
    for (const pw of ["a".repeat(8), "a".repeat(1024), "\u{1F511}".repeat(8), "  spaced  "]) {
      const r = await create(pw);
      expect(r.status, r.text).toBe(201);
      expect((await login(r.json.username, pw)).status).toBe(200);
    }
  });
});

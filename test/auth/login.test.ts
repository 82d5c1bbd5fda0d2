// POST /v1/auth/login: the pair it hands out, the one answer for every failed login, and what the
// username and password are compared as.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, startService, type CallResult, type Service } from "../helpers/harness.js";
import { GENEROUS_LOGIN_LIMITS, countingHasher, createUser, decodeJwt, expectNoStore, uniqueName, type CountingHasher } from "./helpers.js";

describe("POST /v1/auth/login", () => {
  let svc: Service;
  let hasher: CountingHasher;
  beforeAll(async () => {
    hasher = countingHasher();
    svc = await startService({ passwords: hasher, loginLimits: GENEROUS_LOGIN_LIMITS });
  });
  afterAll(() => svc.close());

  const login = (username: unknown, password: unknown, headers: Record<string, string> = {}) =>
    svc.call("POST", "/v1/auth/login", { json: { username, password }, headers });

  it("answers 200 with a token pair and the user, never cached", async () => {
    const u = await createUser(svc);
    const r = await login(u.username, u.password);
    expect(r.status, r.text).toBe(200);
    expect(Object.keys(r.json).sort()).toEqual(["access_token", "expires_in", "refresh_token", "token_type", "user"]);
    expect(r.json.token_type).toBe("Bearer");
    expect(r.json.expires_in).toBe(svc.config.accessTokenTtlS);
    expect(r.json.expires_in).toBe(900); // ACCESS_TOKEN_TTL's default, 15m
    expect(r.json.user).toEqual({ id: u.id, username: u.username, role: "member" });
    expect(typeof r.json.refresh_token).toBe("string");
    expect(r.json.refresh_token.length).toBeGreaterThanOrEqual(32);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    expectNoStore(r);

    // the access token is an asymmetric JWT whose kid is published in the JWKS (without its private part)
    const { header, payload } = decodeJwt(r.json.access_token);
    expect(header.alg).toMatch(/^(ES|RS|PS|Ed)/);
    const jwks = await svc.call("GET", "/.well-known/jwks.json");
    expect(jwks.status).toBe(200);
    const published = jwks.json.keys.find((k: { kid: string }) => k.kid === header.kid);
    expect(published).toBeDefined();
    for (const k of jwks.json.keys) for (const secret of ["d", "p", "q", "dp", "dq", "qi", "k"]) expect(k).not.toHaveProperty(secret);
    expect(payload.iss).toBe("haltman-bff");
    expect(payload.aud).toBe("haltman-bff");
    expect(payload.sub).toBe(u.id);
    expect((payload.exp as number) - (payload.iat as number)).toBe(r.json.expires_in);

    const me = await svc.call("GET", "/v1/auth/me", { token: r.json.access_token });
    expect(me.status).toBe(200);
    expect(me.json).toEqual({ id: u.id, username: u.username, role: "member" });
  });

  it("gives every login its own session", async () => {
    const u = await createUser(svc);
    const a = await login(u.username, u.password);
    const b = await login(u.username, u.password);
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(a.json.access_token).not.toBe(b.json.access_token);
    expect(a.json.refresh_token).not.toBe(b.json.refresh_token);
    expect(decodeJwt(a.json.access_token).payload.sid).not.toBe(decodeJwt(b.json.access_token).payload.sid);
    // ending one leaves the other
    expect((await svc.call("POST", "/v1/auth/logout", { token: a.json.access_token })).status).toBe(204);
    expect((await svc.call("GET", "/v1/auth/me", { token: b.json.access_token })).status).toBe(200);
  });

  it("answers the same 401 invalid_credentials for an unknown user, a wrong password and a disabled account", async () => {
    const u = await createUser(svc);
    const d = await createUser(svc);
    // controls: both accounts log in with their passwords
    expect((await login(u.username, u.password)).status).toBe(200);
    expect((await login(d.username, d.password)).status).toBe(200);
    const off = await svc.call("PATCH", `/v1/admin/users/${d.id}`, { token: svc.admin.token, json: { disabled: true } });
    expect(off.status, off.text).toBe(200);

    const unknown = await login(uniqueName("nobody"), u.password);
    const wrong = await login(u.username, `${u.password}x`);
    const disabled = await login(d.username, d.password);
    const answers: Array<[string, CallResult]> = [["unknown user", unknown], ["wrong password", wrong], ["disabled account", disabled]];
    for (const [what, r] of answers) {
      try {
        expectErrorBody(r, 401, "invalid_credentials");
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`);
      }
      expectNoStore(r);
    }
    // nothing tells the three apart: same fields, same message, same headers
    const shape = (r: CallResult) => ({ ...r.json, request_id: "*" });
    expect(shape(wrong)).toEqual(shape(unknown));
    expect(shape(disabled)).toEqual(shape(unknown));
    const headerNames = (r: CallResult) => [...r.headers.keys()].filter((h) => h !== "date").sort();
    expect(headerNames(wrong)).toEqual(headerNames(unknown));
    expect(headerNames(disabled)).toEqual(headerNames(unknown));

    // enabled again, the same password works: the 401 was the disabled flag
    const on = await svc.call("PATCH", `/v1/admin/users/${d.id}`, { token: svc.admin.token, json: { disabled: false } });
    expect(on.status).toBe(200);
    expect((await login(d.username, d.password)).status).toBe(200);
  });

  it("spends one password hash on an unknown user, as on a known one, and answers only after it", async () => {
    const u = await createUser(svc);
    const spent = () => hasher.counts.verify + hasher.counts.verifyDummy;

    let before = spent();
    expect((await login(u.username, u.password)).status).toBe(200);
    expect(spent() - before).toBe(1);

    before = spent();
    expect((await login(u.username, "not the password")).status).toBe(401);
    expect(spent() - before).toBe(1);

    before = spent();
    const dummyBefore = hasher.counts.verifyDummy;
    expect((await login(uniqueName("ghost"), "not the password")).status).toBe(401);
    expect(spent() - before).toBe(1);
    expect(hasher.counts.verifyDummy - dummyBefore).toBe(1);

    // the answer waits for that hash: hold each verification back 150 ms
    hasher.delayMs = 150;
    try {
      for (const username of [uniqueName("ghost"), u.username]) {
        const t0 = performance.now();
        const r = await login(username, "not the password");
        const ms = performance.now() - t0;
        expectErrorBody(r, 401, "invalid_credentials");
        expect(ms, username).toBeGreaterThanOrEqual(145);
      }
    } finally {
      hasher.delayMs = 0;
    }
  });

  it("compares usernames case-insensitively", async () => {
    const u = await createUser(svc, { username: `Mixed.Case_${uniqueName("X")}` });
    expect(u.username).toBe(u.username.toLowerCase()); // stored lower-cased
    for (const typed of [u.username, u.username.toUpperCase(), u.username.replace(/^m/, "M")]) {
      const r = await login(typed, u.password);
      expect(r.status, typed).toBe(200);
      expect(r.json.user).toEqual({ id: u.id, username: u.username, role: "member" });
    }
    expectErrorBody(await login(`${u.username}x`, u.password), 401, "invalid_credentials");
  });

  it("never trims nor case-folds passwords", async () => {
    const spaced = await createUser(svc, { password: "  spaced out pass  " });
    expect((await login(spaced.username, "  spaced out pass  ")).status).toBe(200);
    for (const typed of ["spaced out pass", "  spaced out pass", "spaced out pass  ", "   spaced out pass   "]) {
      expectErrorBody(await login(spaced.username, typed), 401, "invalid_credentials");
    }

    const plain = await createUser(svc, { password: "plain-password" });
    expect((await login(plain.username, "plain-password")).status).toBe(200);
    for (const typed of [" plain-password", "plain-password ", "plain-password\n", "PLAIN-PASSWORD"]) {
      expectErrorBody(await login(plain.username, typed), 401, "invalid_credentials");
    }
  });

  it("refuses bodies of the wrong shape with 400, and ignores unknown fields", async () => {
    const u = await createUser(svc);
    const raw = (body: string) => svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": "application/json" } });
    expectErrorBody(await raw("{\"username\":"), 400, "invalid_json");
    for (const body of ["null", "[]", "42", "\"text\""]) expectErrorBody(await raw(body), 400, "invalid_params");

    const noPassword = await svc.call("POST", "/v1/auth/login", { json: { username: u.username } });
    expectErrorBody(noPassword, 400, "invalid_params");
    expect(noPassword.json.field).toBe("password");
    const numberName = await svc.call("POST", "/v1/auth/login", { json: { username: 12345, password: u.password } });
    expectErrorBody(numberName, 400, "invalid_params");
    expect(numberName.json.field).toBe("username");

    const extra = await svc.call("POST", "/v1/auth/login", { json: { username: u.username, password: u.password, remember_me: true } });
    expect(extra.status, extra.text).toBe(200);
  });
});

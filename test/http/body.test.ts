// Request bodies: the 32 KiB limit (declared or chunked), invalid JSON, JSON of the wrong shape,
// other content types, unknown fields, wrong types and huge strings; and the order of checks
// (size, then authentication, then the body).
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { rowsOf } from "../../src/db/client.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { chunksOf, jsonOfSize, raw } from "./raw.js";

const LIMIT = 32_768;

let svc: Service;
beforeAll(async () => {
  svc = await startService({ loginLimits: { perAccount: parseRatePolicy("1000/min")!, perAddress: parseRatePolicy("1000/min")! } });
});
afterAll(() => svc.close());

async function counts() {
  const [r] = await rowsOf<{ u: number; a: number }>(
    svc.deps.db,
    sql`select (select count(*)::int from users) as u, (select count(*)::int from audit_events) as a`,
  );
  return { users: Number(r!.u), audit: Number(r!.a) };
}

/** The contract's error body, from a raw answer. */
function expectRawError(r: Awaited<ReturnType<typeof raw>>, status: number, error: string) {
  const body = r.json as { error?: string; message?: string; request_id?: string } | undefined;
  expect({ status: r.status, error: body?.error }, r.text.slice(0, 200)).toEqual({ status, error });
  expect(typeof body?.message).toBe("string");
  expect(body?.request_id).toBe(r.headers["x-request-id"]);
}

describe("body size", () => {
  const creds = { username: "nobody-here", password: "some-password" };

  it("exactly 32,768 bytes is not too large (with Content-Length)", async () => {
    const body = jsonOfSize(LIMIT, creds);
    const r = await raw(svc.url, { method: "POST", path: "/v1/auth/login", headers: { "content-type": "application/json", "content-length": LIMIT }, body });
    expectRawError(r, 401, "invalid_credentials");
  });

  it("32,769 bytes is 413 payload_too_large (with Content-Length)", async () => {
    const body = jsonOfSize(LIMIT + 1, creds);
    const r = await raw(svc.url, { method: "POST", path: "/v1/auth/login", headers: { "content-type": "application/json", "content-length": LIMIT + 1 }, body });
    expectRawError(r, 413, "payload_too_large");
  });

  it("exactly 32,768 bytes is not too large (chunked, no Content-Length)", async () => {
    const body = jsonOfSize(LIMIT, creds);
    const r = await raw(svc.url, { method: "POST", path: "/v1/auth/login", headers: { "content-type": "application/json" }, chunks: chunksOf(body, 4096) });
    expectRawError(r, 401, "invalid_credentials");
  });

  it("32,769 bytes is 413 (chunked, no Content-Length)", async () => {
    const body = jsonOfSize(LIMIT + 1, creds);
    const r = await raw(svc.url, { method: "POST", path: "/v1/auth/login", headers: { "content-type": "application/json" }, chunks: chunksOf(body, 4096) });
    expectRawError(r, 413, "payload_too_large");
  });

  it("a long chunked stream is cut off with 413 (counted as it streams in)", async () => {
    const chunk = "a".repeat(16_384);
    const r = await raw(svc.url, {
      method: "POST",
      path: "/v1/auth/login",
      headers: { "content-type": "application/json" },
      chunks: Array.from({ length: 64 }, () => chunk), // 1 MiB
    });
    expectRawError(r, 413, "payload_too_large");
  });

  it.each(["GET", "OPTIONS", "DELETE"])("%s with an oversized body is 413 too, declared or chunked (a body is a body)", async (method) => {
    const headers = { authorization: `Bearer ${svc.admin.token}` };
    // (Node's client frames a GET's, an OPTIONS' or a DELETE's body only when told its length)
    const declared = await raw(svc.url, { method, path: "/v1/auth/me", headers: { ...headers, "content-length": LIMIT + 1 }, body: "x".repeat(LIMIT + 1) });
    expectRawError(declared, 413, "payload_too_large");
    const chunked = await raw(svc.url, { method, path: "/v1/auth/me", headers, chunks: Array.from({ length: 8 }, () => "x".repeat(8192)) });
    expectRawError(chunked, 413, "payload_too_large");
    // within the limit, a GET's body is ignored, as before
    if (method === "GET") expect((await raw(svc.url, { method, path: "/v1/auth/me", headers: { ...headers, "content-length": 100 }, body: "x".repeat(100) })).status).toBe(200);
  });

  it("an oversized body is 413 on an authenticated route too, and nothing is written", async () => {
    const before = await counts();
    const body = jsonOfSize(LIMIT + 100, { username: "too-big", password: "long-enough-pw", role: "member" });
    const r = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, body, headers: { "content-type": "application/json" } });
    expectErrorBody(r, 413, "payload_too_large");
    expect(await counts()).toEqual(before);
  });
});

describe("order of checks", () => {
  it("an oversized body with no token is 413 (size before authentication)", async () => {
    const body = jsonOfSize(LIMIT + 1, { username: "x", password: "y", role: "member" });
    const declared = await svc.call("POST", "/v1/admin/users", { body, headers: { "content-type": "application/json" } });
    expectErrorBody(declared, 413, "payload_too_large");
    const chunked = await raw(svc.url, { method: "POST", path: "/v1/admin/users", headers: { "content-type": "application/json" }, chunks: chunksOf(body, 8192) });
    expectRawError(chunked, 413, "payload_too_large");
    // the same body within the limit, still without a token: 401
    const small = await svc.call("POST", "/v1/admin/users", { json: { username: "x", password: "y", role: "member" } });
    expectErrorBody(small, 401, "unauthorized");
  });

  it("a bad body with no token is 401 (authentication before the body)", async () => {
    for (const body of ["{not json", "null", "[]", JSON.stringify({ username: 5 })]) {
      const r = await svc.call("POST", "/v1/admin/users", { body, headers: { "content-type": "application/json" } });
      expectErrorBody(r, 401, "unauthorized");
    }
    const bad = await svc.call("POST", "/v1/admin/users", { body: "{not json", headers: { "content-type": "application/json", authorization: "Bearer nope" } });
    expectErrorBody(bad, 401, "unauthorized");
    // with a token, the same body is judged on its own
    const judged = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, body: "{not json", headers: { "content-type": "application/json" } });
    expectErrorBody(judged, 400, "invalid_json");
  });

  it("a member's bad body on an admin route is 403 (role before the body)", async () => {
    const m = await svc.addUser(svc.admin.token, "order-member");
    expectErrorBody(await svc.call("POST", "/v1/admin/users", { token: m.token, body: "{x", headers: { "content-type": "application/json" } }), 403, "forbidden");
  });
});

describe("JSON parsing", () => {
  it.each(["{", "{username:", "{'a':1}", "nul", "[1,]", '{"a":1}}', "\u0000"])("%j is 400 invalid_json", async (body) => {
    const r = await svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": "application/json" } });
    expectErrorBody(r, 400, "invalid_json");
  });

  it.each([
    ["null", "null"],
    ["an array", '[{"username":"root","password":"root-password-1"}]'],
    ["a number", "42"],
    ["a string", '"root"'],
    ["true", "true"],
  ])("valid JSON of the wrong shape (%s) is 400 invalid_params", async (_, body) => {
    const r = await svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": "application/json" } });
    expectErrorBody(r, 400, "invalid_params");
    expect(typeof r.json.field).toBe("string");
  });

  it("a text/plain body (even one holding valid JSON) is 400 invalid_params", async () => {
    const body = JSON.stringify({ username: "root", password: "root-password-1" });
    const r = await svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": "text/plain" } });
    expectErrorBody(r, 400, "invalid_params");
    // the same body as JSON logs in: the refusal is the content type's
    const ok = await svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": "application/json" } });
    expect(ok.status).toBe(200);
  });

  it("a body of another type on a route whose every field is optional (PATCH a user) is 400 invalid_params field body, and changes nothing", async () => {
    const u = await svc.addUser(svc.admin.token, "patch-by-text");
    for (const type of ["text/plain", "application/x-www-form-urlencoded", ""]) {
      const r = await svc.call("PATCH", `/v1/admin/users/${u.id}`, { token: svc.admin.token, body: '{"disabled":true}', headers: type ? { "content-type": type } : {} });
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, type).toBe("body");
    }
    expect((await svc.call("GET", "/v1/auth/me", { token: u.token })).status).toBe(200); // not disabled
    // no body at all is an empty change (200), as JSON it applies
    expect((await svc.call("PATCH", `/v1/admin/users/${u.id}`, { token: svc.admin.token })).status).toBe(200);
    const json = await svc.call("PATCH", `/v1/admin/users/${u.id}`, { token: svc.admin.token, json: { disabled: true } });
    expect(json.json).toMatchObject({ disabled: true });
  });

  it("application/json with a charset and vendor +json types are JSON", async () => {
    const body = JSON.stringify({ username: "root", password: "root-password-1" });
    for (const type of ["application/json; charset=utf-8", "application/vnd.api+json", "APPLICATION/JSON"]) {
      const r = await svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": type } });
      expect(r.status, type).toBe(200);
    }
  });

  it("no body at all on a route that needs one is 400 invalid_params", async () => {
    const r = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token });
    expectErrorBody(r, 400, "invalid_params");
  });
});

describe("unknown fields", () => {
  it("are ignored and never stored", async () => {
    const r = await svc.call("POST", "/v1/admin/users", {
      token: svc.admin.token,
      json: { username: "extra-fields", password: "extra-fields-pw", role: "member", is_superuser: true, disabled: true, id: "00000000-0000-4000-8000-000000000000" },
    });
    expect(r.status).toBe(201);
    expect(r.json).toEqual({ id: expect.any(String), username: "extra-fields", role: "member" });
    expect(r.json.id).not.toBe("00000000-0000-4000-8000-000000000000");
    const list = await svc.call("GET", "/v1/admin/users", { token: svc.admin.token });
    const u = list.json.users.find((x: { id: string }) => x.id === r.json.id);
    expect(u).toEqual({ id: r.json.id, username: "extra-fields", role: "member", disabled: false, created_at: expect.any(String), rate_limits: {} });
    expect(list.text).not.toContain("is_superuser");
    const rows = await rowsOf<Record<string, unknown>>(svc.deps.db, sql`select * from users where id = ${r.json.id}`);
    expect(rows).toHaveLength(1);
    expect(JSON.stringify(rows[0])).not.toContain("superuser");
    expect(rows[0]!.disabled).toBe(false);
    expect(rows[0]!.role).toBe("member");
    // the user can log in (the extra "disabled" did nothing)
    await svc.login("extra-fields", "extra-fields-pw");
    // nor does the audit record keep it
    const audit = await svc.call("GET", "/v1/audit?action=user.create&limit=500", { token: svc.admin.token });
    expect(audit.text).not.toContain("is_superuser");
  });
});

describe("text PostgreSQL could not store", () => {
  const keys = async () => Number((await rowsOf<{ n: number }>(svc.deps.db, sql`select count(*)::int as n from haltman_keys`))[0]!.n);

  it("a lone UTF-16 surrogate (JSON's \\ud800) is 400 invalid_params naming the field, and writes nothing", async () => {
    const before = { ...(await counts()), keys: await keys() };
    // JSON.stringify writes a lone surrogate as the escape \ud800, as a browser's would
    const k = await svc.call("POST", "/v1/keys", { token: svc.admin.token, json: { name: "team \ud800 key", api_key: "d".repeat(64) } });
    expectErrorBody(k, 400, "invalid_params");
    expect(k.json.field).toBe("name");
    expect(k.json.message).toMatch(/^name: must be valid Unicode/);
    const trail = await svc.call("POST", "/v1/keys", { token: svc.admin.token, json: { name: "key \udfff", api_key: "d".repeat(64) } });
    expect(trail.json.field).toBe("name");
    expect({ ...(await counts()), keys: await keys() }).toEqual(before);
  });

  it("a whole surrogate pair (an emoji) is stored as sent", async () => {
    const k = await svc.call("POST", "/v1/keys", { token: svc.admin.token, json: { name: "team 🔑 key", api_key: "c".repeat(64) } });
    expect(k.status, k.text).toBe(201);
    const list = await svc.call("GET", "/v1/keys", { token: svc.admin.token });
    expect(list.json.keys.map((x: { name: string }) => x.name)).toContain("team 🔑 key");
  });

  it("in a field the route ignores, neither a NUL nor a lone surrogate matters", async () => {
    const r = await svc.call("POST", "/v1/admin/users", {
      token: svc.admin.token,
      json: { username: "ignored-junk", password: "ignored-junk-pw", role: "member", note: "a\u0000b", ["x\u0000"]: 1, other: "\ud800" },
    });
    expect(r.status, r.text).toBe(201);
  });
});

describe("wrong types, missing fields and huge strings", () => {
  const cases: [string, string, unknown][] = [
    ["POST", "/v1/admin/users", { username: 123, password: "long-enough-pw", role: "member" }],
    ["POST", "/v1/admin/users", { username: null, password: "long-enough-pw", role: "member" }],
    ["POST", "/v1/admin/users", { username: ["a", "b", "c"], password: "long-enough-pw", role: "member" }],
    ["POST", "/v1/admin/users", { username: { $ne: "" }, password: "long-enough-pw", role: "member" }],
    ["POST", "/v1/admin/users", { username: "typed", password: 12345678, role: "member" }],
    ["POST", "/v1/admin/users", { username: "typed", password: null, role: "member" }],
    ["POST", "/v1/admin/users", { username: "typed", password: "long-enough-pw", role: ["admin"] }],
    ["POST", "/v1/admin/users", { username: "typed", password: "long-enough-pw", role: true }],
    ["POST", "/v1/admin/users", {}],
    ["POST", "/v1/admin/users", { username: "u".repeat(30_000), password: "long-enough-pw", role: "member" }],
    ["POST", "/v1/admin/users", { username: "typed", password: "p".repeat(30_000), role: "member" }],
    ["POST", "/v1/admin/users", { username: "typed", password: "long-enough-pw", role: "r".repeat(30_000) }],
    ["POST", "/v1/auth/login", { username: 1, password: "x" }],
    ["POST", "/v1/auth/login", { username: "root" }],
    ["POST", "/v1/auth/login", {}],
    ["POST", "/v1/auth/login", { username: "u".repeat(30_000), password: "root-password-1" }],
    ["POST", "/v1/auth/login", { username: "root", password: "p".repeat(30_000) }],
    ["POST", "/v1/auth/refresh", { refresh_token: 5 }],
    ["POST", "/v1/auth/refresh", { refresh_token: "r".repeat(30_000) }],
    ["POST", "/v1/auth/password", { current_password: "root-password-1", new_password: 12345678 }],
    ["POST", "/v1/auth/password", { current_password: "c".repeat(30_000), new_password: "new-password-1" }],
    ["PATCH", "/v1/admin/users/:id", { disabled: "true" }],
    ["PATCH", "/v1/admin/users/:id", { role: 1 }],
    ["PATCH", "/v1/admin/users/:id", { rate_limits: ["10/min"] }],
    ["PATCH", "/v1/admin/users/:id", { rate_limits: { handle_create: 10 } }],
    ["PATCH", "/v1/admin/users/:id", { rate_limits: { handle_create: "9".repeat(30_000) + "/min" } }],
  ];

  it.each(cases.map((c, i) => [i, ...c] as const))("#%i %s %s → 400 invalid_params with a field, nothing written", async (_, method, path, body) => {
    const target = await svc.addUser(svc.admin.token, `target-${Math.random().toString(36).slice(2, 10)}`);
    const before = await counts();
    const r = await svc.call(method, path.replace(":id", target.id), { token: svc.admin.token, json: body });
    expectErrorBody(r, 400, "invalid_params");
    expect(typeof r.json.field).toBe("string");
    expect(r.json.field.length).toBeGreaterThan(0);
    expect(r.text.length).toBeLessThan(2_000); // the huge value is not echoed back
    expect(await counts()).toEqual(before);
  });

  it("the root account is unchanged after all that", async () => {
    await svc.login("root", "root-password-1");
  });

  it("a body of ~32 KB of deeply nested JSON is a 4xx, not a 500", async () => {
    const depth = 10_000;
    const body = "[".repeat(depth) + "]".repeat(depth);
    const r = await svc.call("POST", "/v1/auth/login", { body, headers: { "content-type": "application/json" } });
    expect(r.status).toBe(400);
    expect(["invalid_params", "invalid_json"]).toContain(r.json.error);
  });
});

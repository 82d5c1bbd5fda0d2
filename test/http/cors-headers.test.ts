// CORS (only for CORS_ORIGINS), the security headers on answers carrying tokens or user data.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freshDatabase, startService, type Service, type TestDatabase } from "../helpers/harness.js";
import { raw } from "./raw.js";

const ORIGIN = "https://app.example.com";
const csv = (v: string | string[] | undefined) =>
  String(v ?? "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);

// One database for both configurations.
let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

describe("CORS with CORS_ORIGINS set", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ database, env: { CORS_ORIGINS: ORIGIN } });
  });
  afterAll(() => svc.close());

  const preflight = (origin: string, path = "/v1/admin/users", method = "POST") =>
    raw(svc.url, {
      method: "OPTIONS",
      path,
      headers: {
        origin,
        "access-control-request-method": method,
        "access-control-request-headers": "authorization, content-type, idempotency-key, x-key-id, x-request-id",
      },
    });

  it("a preflight from the allowed origin is answered with the origin and the allowed headers", async () => {
    const r = await preflight(ORIGIN);
    expect(r.status).toBeLessThan(300);
    expect(r.headers["access-control-allow-origin"]).toBe(ORIGIN);
    const allowed = csv(r.headers["access-control-allow-headers"]);
    for (const h of ["authorization", "content-type", "idempotency-key", "x-key-id", "x-request-id"]) expect(allowed).toContain(h);
    const methods = csv(r.headers["access-control-allow-methods"]);
    for (const m of ["get", "post", "patch", "delete"]) expect(methods).toContain(m);
    expect(csv(r.headers.vary)).toContain("origin");
    expect(r.headers["access-control-allow-credentials"]).toBeUndefined(); // bearer tokens, no cookies
    expect(r.headers["x-request-id"]).toBeDefined();
  });

  it("a preflight for the PATCH route and the audit route is answered too", async () => {
    expect((await preflight(ORIGIN, "/v1/admin/users/6f1c9a9e-3f53-4c1e-9b49-2d3c1c7f0a11", "PATCH")).headers["access-control-allow-origin"]).toBe(ORIGIN);
    expect((await preflight(ORIGIN, "/v1/audit", "GET")).headers["access-control-allow-origin"]).toBe(ORIGIN);
  });

  it("an actual response carries the origin and exposes RateLimit, RateLimit-Policy, Retry-After and X-Request-Id", async () => {
    const r = await raw(svc.url, { path: "/v1/auth/me", headers: { origin: ORIGIN, authorization: `Bearer ${svc.admin.token}` } });
    expect(r.status).toBe(200);
    expect(r.headers["access-control-allow-origin"]).toBe(ORIGIN);
    const exposed = csv(r.headers["access-control-expose-headers"]);
    for (const h of ["ratelimit", "ratelimit-policy", "retry-after", "x-request-id"]) expect(exposed).toContain(h);
    expect(csv(r.headers.vary)).toContain("origin");
  });

  it("an error answer to the allowed origin carries the origin too (so the frontend can read it)", async () => {
    const r = await raw(svc.url, { path: "/v1/auth/me", headers: { origin: ORIGIN } });
    expect(r.status).toBe(401);
    expect(r.headers["access-control-allow-origin"]).toBe(ORIGIN);
  });

  it.each(["https://evil.example.com", "https://app.example.com.evil.com", "http://app.example.com", "null"])(
    "a preflight from %s gets no Access-Control-Allow-Origin",
    async (origin) => {
      const r = await preflight(origin);
      expect(r.headers["access-control-allow-origin"]).toBeUndefined();
      const actual = await raw(svc.url, { path: "/v1/auth/me", headers: { origin, authorization: `Bearer ${svc.admin.token}` } });
      expect(actual.headers["access-control-allow-origin"]).toBeUndefined();
    },
  );
});

describe("CORS without CORS_ORIGINS", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ database });
  });
  afterAll(() => svc.close());

  it("sends no CORS header at all, to a preflight or an actual request", async () => {
    const pre = await raw(svc.url, {
      method: "OPTIONS",
      path: "/v1/admin/users",
      headers: { origin: ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "authorization" },
    });
    const actual = await raw(svc.url, { path: "/v1/auth/me", headers: { origin: ORIGIN, authorization: `Bearer ${svc.admin.token}` } });
    expect(actual.status).toBe(200);
    for (const r of [pre, actual]) {
      expect(Object.keys(r.headers).filter((h) => h.startsWith("access-control-"))).toEqual([]);
    }
  });

  describe("security headers", () => {
    const answers: [string, () => Promise<{ status: number; headers: Headers }>][] = [
      ["login (tokens)", () => svc.call("POST", "/v1/auth/login", { json: { username: "root", password: "root-password-1" } })],
      ["refresh (tokens)", async () => {
        const { refresh } = await svc.login("root", "root-password-1");
        return svc.call("POST", "/v1/auth/refresh", { json: { refresh_token: refresh } });
      }],
      ["me", () => svc.call("GET", "/v1/auth/me", { token: svc.admin.token })],
      ["users list", () => svc.call("GET", "/v1/admin/users", { token: svc.admin.token })],
      ["user create", () => svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username: `h${Date.now()}`, password: "long-enough-pw", role: "member" } })],
      ["audit", () => svc.call("GET", "/v1/audit", { token: svc.admin.token })],
      ["audit export", () => svc.call("GET", "/v1/audit/export", { token: svc.admin.token })],
      ["a failed login", () => svc.call("POST", "/v1/auth/login", { json: { username: "root", password: "wrong-password" } })],
      ["a 404", () => svc.call("GET", "/nope")],
    ];
    it.each(answers)("%s: X-Content-Type-Options nosniff and Cache-Control no-store", async (_, get) => {
      const r = await get();
      expect(r.status).toBeLessThan(500);
      expect(r.headers.get("x-content-type-options")).toBe("nosniff");
      expect(r.headers.get("cache-control")).toMatch(/\bno-store\b/);
    });
  });
});

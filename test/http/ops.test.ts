// Operations: /healthz, /readyz, /metrics, /openapi.json, /docs, the JWKS; and a database that
// goes away (503 unavailable, never 500).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../../src/app.js";
import { expectErrorBody, freshDatabase, startService, type Service, type TestDatabase } from "../helpers/harness.js";

const METRICS_TOKEN = "metrics-scraper-token-0123456789abcdef";
let svc: Service;
beforeAll(async () => {
  svc = await startService({ env: { METRICS_TOKEN } });
});
afterAll(() => svc.close());

describe("health", () => {
  it("/healthz is 200", async () => {
    const r = await svc.call("GET", "/healthz");
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ status: "ok" });
  });

  it("/readyz is 200 when the database is migrated", async () => {
    const r = await svc.call("GET", "/readyz");
    expect(r.status).toBe(200);
  });
});

describe("/metrics", () => {
  it("is Prometheus text with http_requests_total by route pattern and http_request_duration_seconds", async () => {
    await svc.call("GET", "/healthz");
    await svc.call("GET", "/v1/auth/me", { token: svc.admin.token });
    await svc.call("PATCH", "/v1/admin/users/6f1c9a9e-3f53-4c1e-9b49-2d3c1c7f0a11", { token: svc.admin.token, json: { role: "member" } });
    await svc.call("GET", "/no/such/path/xyz123");
    const r = await svc.call("GET", "/metrics", { token: METRICS_TOKEN });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/plain/);
    expect(r.text).toMatch(/^# HELP http_requests_total /m);
    expect(r.text).toMatch(/^# TYPE http_requests_total counter$/m);
    expect(r.text).toMatch(/^http_requests_total\{[^}]*route="\/healthz"[^}]*status="200"[^}]*\} \d+/m);
    expect(r.text).toMatch(/^http_requests_total\{[^}]*route="\/v1\/auth\/me"[^}]*\} \d+/m);
    // the route pattern, not the path: no id in a label
    expect(r.text).toMatch(/^http_requests_total\{[^}]*route="\/v1\/admin\/users\/:id"[^}]*status="404"[^}]*\} \d+/m);
    expect(r.text).not.toContain("6f1c9a9e-3f53-4c1e-9b49-2d3c1c7f0a11");
    expect(r.text).not.toContain("xyz123");
    expect(r.text).toMatch(/^# TYPE http_request_duration_seconds histogram$/m);
    expect(r.text).toMatch(/^http_request_duration_seconds_bucket\{[^}]*route="\/healthz"/m);
    expect(r.text).toMatch(/^http_request_duration_seconds_count\{/m);
    // the /me and PATCH calls checked the admin's session: the first read it from the database,
    // the second had it in memory
    expect(r.text).toMatch(/^session_checks_total\{answer="database"\} [1-9]/m);
    expect(r.text).toMatch(/^session_checks_total\{answer="memory"\} [1-9]/m);
  });
});

describe("/metrics on the database's connections", () => {
  it("db_pool_max_connections counts the lanes' connections with the pool's, as db_pool_connections does (PostgreSQL; PGlite has one)", async () => {
    const r = await svc.call("GET", "/metrics", { token: METRICS_TOKEN });
    const max = Number(/^db_pool_max_connections (\d+)/m.exec(r.text)?.[1]);
    if (svc.database.kind === "pglite") {
      expect(max).toBe(1);
      return;
    }
    expect(max).toBe(10 + 6); // the pool, and the lanes of deps.ts: 1 + 1 + 1 + 2 + 1
    const open = [...r.text.matchAll(/^db_pool_connections\{state="[^"]+"\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    expect(open).toBeGreaterThan(0);
    expect(open).toBeLessThanOrEqual(max);
  });
});

describe("/metrics needs a token (the contract: tokens on everything but login, refresh, health, JWKS and docs)", () => {
  it("METRICS_TOKEN or an admin's access token reads it; no token, another token or a member's is refused with the contract's body", async () => {
    expect((await svc.call("GET", "/metrics", { token: METRICS_TOKEN })).status).toBe(200);
    expect((await svc.call("GET", "/metrics", { token: svc.admin.token })).status).toBe(200);
    expectErrorBody(await svc.call("GET", "/metrics"), 401, "unauthorized");
    expectErrorBody(await svc.call("GET", "/metrics", { token: METRICS_TOKEN.slice(0, -1) + "0" }), 401, "unauthorized");
    expectErrorBody(await svc.call("GET", "/metrics", { token: METRICS_TOKEN + "x" }), 401, "unauthorized");
    const member = await svc.addUser(svc.admin.token, "metrics-member");
    expectErrorBody(await svc.call("GET", "/metrics", { token: member.token }), 403, "forbidden");
  });

  it("a database that has stopped answering does not hold the scrape (its count of connections is given up after half a second)", async () => {
    const hung = await startService({ env: { METRICS_TOKEN } });
    try {
      hung.deps.database.poolConnections = () => new Promise(() => {});
      const t0 = performance.now();
      const r = await hung.call("GET", "/metrics", { token: METRICS_TOKEN });
      expect(r.status).toBe(200);
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(r.text).toMatch(/^# TYPE http_requests_total counter$/m);
    } finally {
      await hung.close();
    }
  });

  it("without METRICS_TOKEN only an admin's access token reads it", async () => {
    const plain = await startService();
    try {
      expect((await plain.call("GET", "/metrics", { token: plain.admin.token })).status).toBe(200);
      expectErrorBody(await plain.call("GET", "/metrics", { token: METRICS_TOKEN }), 401, "unauthorized");
      expectErrorBody(await plain.call("GET", "/metrics"), 401, "unauthorized");
    } finally {
      await plain.close();
    }
  });
});

describe("/openapi.json", () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let doc: any;
  beforeAll(async () => {
    const r = await svc.call("GET", "/openapi.json");
    expect(r.status).toBe(200);
    doc = r.json;
  });

  const documented: [string, string, boolean][] = [
    ["post", "/v1/auth/login", false],
    ["post", "/v1/auth/refresh", false],
    ["post", "/v1/auth/logout", true],
    ["get", "/v1/auth/me", true],
    ["post", "/v1/auth/password", true],
    ["post", "/v1/admin/users", true],
    ["get", "/v1/admin/users", true],
    ["patch", "/v1/admin/users/{id}", true],
    ["get", "/v1/audit", true],
    ["get", "/v1/audit/export", true],
  ];

  it("is OpenAPI 3.1.0", () => {
    expect(doc.openapi).toBe("3.1.0");
    expect(doc.info?.title).toEqual(expect.any(String));
    expect(doc.info?.version).toEqual(expect.any(String));
  });

  it.each(documented)("documents %s %s (bearer security: %s)", (method, path, bearer) => {
    const op = doc.paths?.[path]?.[method];
    expect(op, `${method} ${path}`).toBeDefined();
    expect(op.responses).toBeDefined();
    if (bearer) {
      expect(op.security).toEqual([{ bearerAuth: [] }]);
    } else {
      expect(op.security ?? doc.security ?? []).toEqual([]);
    }
  });

  it("defines the bearer security scheme", () => {
    expect(doc.components?.securitySchemes?.bearerAuth).toMatchObject({ type: "http", scheme: "bearer" });
  });

  it("documents the request bodies and the error shape", () => {
    const create = doc.paths["/v1/admin/users"].post;
    const schema = create.requestBody.content["application/json"].schema;
    expect(JSON.stringify(schema.$ref ? doc.components.schemas[schema.$ref.split("/").pop()] : schema)).toContain("username");
    expect(create.responses["409"]).toBeDefined();
    expect(doc.components.schemas.Error?.properties).toHaveProperty("request_id");
  });

  it("documents the answers the README promises: 503 everywhere, 429 where a password is hashed, CSV on the export, 409 on enable", () => {
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, { responses: Record<string, unknown> }>>)) {
      if (!path.startsWith("/v1/") && !path.startsWith("/api/")) continue;
      for (const [method, op] of Object.entries(ops)) expect(op.responses["503"], `${method} ${path}`).toBeDefined();
    }
    expect(doc.paths["/v1/auth/password"].post.responses["429"]).toBeDefined();
    expect(doc.paths["/v1/admin/users"].post.responses["429"]).toBeDefined();
    expect(doc.paths["/api/handle/domain/enable"].post.responses["409"]).toBeDefined();
    expect(Object.keys(doc.paths["/v1/audit/export"].get.responses["200"].content).sort()).toEqual(["application/x-ndjson", "text/csv"]);
    expect(Object.keys(doc.paths["/metrics"].get.responses).sort()).toEqual(["200", "401", "403"]);
  });

  it("documents every API route the app serves, the JWKS and the operational endpoints included", () => {
    // Every route registered on the app (from src/http/routes), but the documentation itself.
    const app = createApp(svc.deps);
    const served = new Set<string>();
    for (const r of app.routes) {
      if (r.method === "ALL" || r.path === "/*") continue;
      if (r.path.startsWith("/docs/")) continue; // the page's own assets
      served.add(`${r.method.toLowerCase()} ${r.path.replace(/:([A-Za-z_]+)/g, "{$1}")}`);
    }
    for (const [method, path] of documented) expect(served).toContain(`${method} ${path}`);
    const inDoc = new Set<string>();
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
      for (const method of Object.keys(ops)) inDoc.add(`${method} ${path}`);
    }
    const missing = [...served].filter((r) => !inDoc.has(r));
    expect(missing, "served but not in /openapi.json").toEqual([]);
  });
});

describe("/docs", () => {
  it("is an HTML page whose assets are served from this origin", async () => {
    const r = await svc.call("GET", "/docs");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/html/);
    expect(r.text).toContain("/docs/assets/swagger-ui-bundle.js");
    const js = await svc.call("GET", "/docs/assets/swagger-ui-bundle.js");
    expect(js.status).toBe(200);
    expect(js.headers.get("content-type")).toMatch(/javascript/);
    expect(js.text.length).toBeGreaterThan(100_000);
    const css = await svc.call("GET", "/docs/assets/swagger-ui.css");
    expect(css.status).toBe(200);
    expect(css.headers.get("content-type")).toMatch(/^text\/css/);
  });

  it("serves no other file under /docs/assets", async () => {
    for (const p of ["/docs/assets/package.json", "/docs/assets/..%2Fpackage.json", "/docs/assets/..%2F..%2Fpackage.json"]) {
      const r = await svc.call("GET", p);
      expect(r.status, p).toBe(404);
    }
  });
});

describe("/.well-known/jwks.json", () => {
  it("lists public ES256 keys with kid and no private member", async () => {
    const r = await svc.call("GET", "/.well-known/jwks.json");
    expect(r.status).toBe(200);
    expect(Array.isArray(r.json.keys)).toBe(true);
    expect(r.json.keys.length).toBeGreaterThan(0);
    for (const k of r.json.keys) {
      expect(k).toMatchObject({ kid: expect.any(String), kty: "EC", alg: "ES256", crv: "P-256", x: expect.any(String), y: expect.any(String) });
      expect(k).not.toHaveProperty("d");
      for (const priv of ["p", "q", "dp", "dq", "qi", "k"]) expect(k).not.toHaveProperty(priv);
    }
    // the access token's kid is one of them
    const header = JSON.parse(Buffer.from(svc.admin.token.split(".")[0]!, "base64url").toString("utf8"));
    expect(header.alg).toBe("ES256");
    expect(r.json.keys.map((k: { kid: string }) => k.kid)).toContain(header.kid);
  });

  it("needs no token", async () => {
    const r = await svc.call("GET", "/.well-known/jwks.json", { token: "garbage" });
    expect(r.status).toBe(200);
  });

  it("is cacheable for a minute, but not when this instance's copy of the keys could not be read again in time", async () => {
    expect((await svc.call("GET", "/.well-known/jwks.json")).headers.get("cache-control")).toBe("public, max-age=60");
    const tokens = svc.deps.tokens;
    const keysAgeMs = tokens.keysAgeMs;
    try {
      tokens.keysAgeMs = () => 10_001; // (as when the database did not answer the read)
      const r = await svc.call("GET", "/.well-known/jwks.json");
      expect(r.status).toBe(200);
      expect(r.headers.get("cache-control")).toBe("no-store");
    } finally {
      tokens.keysAgeMs = keysAgeMs;
    }
  });
});

describe("the database down", () => {
  let down: Service;
  let database: TestDatabase;
  beforeAll(async () => {
    database = await freshDatabase();
    down = await startService({ database, env: { METRICS_TOKEN } });
    // the good case, while the database is up
    expect((await down.call("GET", "/readyz")).status).toBe(200);
    expect((await down.call("POST", "/v1/auth/login", { json: { username: "root", password: "wrong-password" } })).status).toBe(401);
    await database.close();
  });
  afterAll(async () => {
    await down.close();
    await database.drop().catch(() => {});
  });

  it("/readyz is 503, /healthz still 200", async () => {
    const r = await down.call("GET", "/readyz");
    expectErrorBody(r, 503, "unavailable"); // the contract's error body, and the probe's own fields
    expect(r.json).toMatchObject({ status: "not_ready", reason: "database unreachable" });
    expect((await down.call("GET", "/healthz")).status).toBe(200);
  });

  it("a login is 503 unavailable, not 500", async () => {
    const r = await down.call("POST", "/v1/auth/login", { json: { username: "root", password: "root-password-1" } });
    expectErrorBody(r, 503, "unavailable");
    expect(r.text).not.toMatch(/at .*\.ts:\d+|stack/i);
  });

  it("an authenticated call that needs the database is 503 unavailable", async () => {
    const r = await down.call("GET", "/v1/admin/users", { token: down.admin.token });
    expectErrorBody(r, 503, "unavailable");
    const audit = await down.call("GET", "/v1/audit", { token: down.admin.token });
    expectErrorBody(audit, 503, "unavailable");
    const exp = await down.call("GET", "/v1/audit/export", { token: down.admin.token });
    expectErrorBody(exp, 503, "unavailable");
  });

  it("/metrics still answers to METRICS_TOKEN (which needs no database); an access token gets 503", async () => {
    expect((await down.call("GET", "/metrics", { token: METRICS_TOKEN })).status).toBe(200);
    expectErrorBody(await down.call("GET", "/metrics", { token: down.admin.token }), 503, "unavailable");
  });
});

describe("the database dropped under a running service (PostgreSQL)", () => {
  it.skipIf(!process.env.TEST_DATABASE_URL)(
    "a call that needs it is 503 unavailable (3D000 on reconnecting), not 500 (skipped on PGlite: needs TEST_DATABASE_URL)",
    async () => {
      const { default: postgres } = await import("postgres");
      const database = await freshDatabase();
      const gone = await startService({ database });
      const url = new URL(database.url!);
      const name = url.pathname.slice(1);
      url.pathname = "/postgres";
      const admin = postgres(url.toString(), { max: 1, onnotice: () => {} });
      try {
        await admin.unsafe(`drop database "${name}" with (force)`);
        expectErrorBody(await gone.call("POST", "/v1/auth/login", { json: { username: "root", password: "root-password-1" } }), 503, "unavailable");
        expectErrorBody(await gone.call("GET", "/v1/admin/users", { token: gone.admin.token }), 503, "unavailable");
        expect((await gone.call("GET", "/readyz")).status).toBe(503);
      } finally {
        await admin.end();
        await gone.close();
      }
    },
  );
});

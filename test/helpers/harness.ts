// Builds the real app on a real database (a fresh copy per call) behind a real HTTP server on
// loopback. No module mocks: tests only choose configuration and dependencies, as index.ts does.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { sql } from "drizzle-orm";
import { inject } from "vitest";
import { createApp, refusedRequestRecorder } from "../../src/app.js";
import type { AuditEventView } from "../../src/services/audit.js";
import { listen } from "../../src/http/server.js";
import { loadConfig, type Config } from "../../src/config.js";
import { Keyring } from "../../src/crypto/keyring.js";
import { openPglite, openPostgres, type Database } from "../../src/db/client.js";
import { createDeps, type Deps, type LoginLimits } from "../../src/deps.js";
import { createLogger } from "../../src/log.js";
import { createPasswordHasher, type HashParams, type PasswordHasher } from "../../src/services/passwords.js";
import { adminUrl, testDatabaseName } from "./db-names.js";
import { withDatabase } from "./global-setup.js";

/** A fixed keyring for tests (never used anywhere else). */
export const TEST_KEYRING = `t1:${Buffer.alloc(32, 7).toString("base64")}`;
/** Cheap argon2 parameters for speed; the production defaults have a test of their own. */
export const FAST_HASH: HashParams = { memoryCost: 1024, timeCost: 1, parallelism: 1 };

export type TestDatabase = Database & { url?: string; drop(): Promise<void> };

/** A fresh, migrated database: PGlite by default, or a new database on TEST_DATABASE_URL's server. */
export async function freshDatabase(): Promise<TestDatabase> {
  const serverUrl = process.env.TEST_DATABASE_URL || undefined;
  if (serverUrl) {
    const template = inject("pgTemplate")!;
    const name = testDatabaseName();
    const admin = await openPostgres(adminUrl(serverUrl), { max: 1 });
    await admin.db.execute(sql.raw(`create database "${name}" template "${template}"`));
    const url = withDatabase(serverUrl, name);
    const db = await openPostgres(url, { max: 10 });
    // (the object itself, not a copy: a spread would freeze its poolMax getter at this moment)
    return Object.assign(db, {
      url,
      async drop() {
        await db.close();
        await admin.db.execute(sql.raw(`drop database if exists "${name}" with (force)`));
        await admin.close();
      },
    });
  }
  const file = inject("pgliteTemplate")!;
  const db = await openPglite(undefined, { loadDataDir: new Blob([readFileSync(file)]) });
  return Object.assign(db, { drop: db.close });
}

export type CallOptions = {
  token?: string;
  json?: unknown;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
};

export type CallResult = {
  status: number;
  headers: Headers;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
};

/** An answer read whole: status, headers, text, and the JSON it holds (if it holds any). */
export async function readAnswer(res: Response): Promise<CallResult> {
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** One HTTP call to any base URL (an in-process service, or a service process), redirects not followed. */
export async function request(base: string, method: string, path: string, o: CallOptions = {}): Promise<CallResult> {
  const headers: Record<string, string> = { ...(o.headers ?? {}) };
  if (o.token) headers.authorization = `Bearer ${o.token}`;
  let body: string | Uint8Array | undefined = o.body;
  if (o.json !== undefined) {
    body = JSON.stringify(o.json);
    headers["content-type"] ??= "application/json";
  }
  return readAnswer(await fetch(base + path, { method, headers, ...(body !== undefined ? { body } : {}), redirect: "manual" }));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A fresh random Haltman-shaped key (64 lower-case hex characters). */
export const randomApiKey = () => randomBytes(32).toString("hex");

export const uniqueName = (prefix = "u") => `${prefix}-${randomBytes(5).toString("hex")}`;

/** An event as GET /v1/audit answers it. */
export type AuditEvent = AuditEventView;

export type Service = {
  url: string;
  deps: Deps;
  database: TestDatabase;
  config: Config;
  /** every log line the service wrote, parsed */
  logs: Record<string, unknown>[];
  rawLogs: string[];
  call(method: string, path: string, opts?: CallOptions): Promise<CallResult>;
  /** logs in and returns the access token (and the rest of the pair) */
  login(username: string, password: string): Promise<{ token: string; refresh: string; userId: string }>;
  /** creates a user directly through the admin API of `adminToken` */
  addUser(adminToken: string, username: string, role?: "admin" | "member", password?: string): Promise<{ id: string; token: string; password: string }>;
  admin: { username: string; password: string; token: string; id: string };
  close(): Promise<void>;
};

export async function startService(opts: {
  env?: Record<string, string>;
  database?: TestDatabase;
  passwords?: PasswordHasher;
  loginLimits?: LoginLimits;
  sessionCheckTtlMs?: number;
} = {}): Promise<Service> {
  const database = opts.database ?? (await freshDatabase());
  const config = loadConfig({
    VAULT_KEYRING: TEST_KEYRING,
    LOG_LEVEL: "info",
    BOOTSTRAP_ADMIN_USERNAME: "root",
    BOOTSTRAP_ADMIN_PASSWORD: "root-password-1",
    ...opts.env,
  });
  const rawLogs: string[] = [];
  const logs: Record<string, unknown>[] = [];
  const log = createLogger(config.logLevel, {
    write(line: string) {
      rawLogs.push(line);
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ raw: line });
      }
    },
  });
  const deps = await createDeps({
    config,
    database,
    keyring: Keyring.parse(config.vaultKeyring!),
    log,
    passwords: opts.passwords ?? createPasswordHasher({ params: FAST_HASH }),
    ...(opts.loginLimits ? { loginLimits: opts.loginLimits } : {}),
    ...(opts.sessionCheckTtlMs !== undefined ? { sessionCheckTtlMs: opts.sessionCheckTtlMs } : {}),
  });
  const { ensureFirstAdmin } = await import("../../src/startup.js");
  await ensureFirstAdmin(deps, () => {});
  const app = createApp(deps);
  const server = await new Promise<Server>((resolve) => {
    const s = listen(app.fetch, { hostname: "127.0.0.1", port: 0 }, () => resolve(s), refusedRequestRecorder(deps));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const call = (method: string, path: string, o: CallOptions = {}) => request(url, method, path, o);

  async function login(username: string, password: string) {
    const r = await call("POST", "/v1/auth/login", { json: { username, password } });
    if (r.status !== 200) throw new Error(`login ${username} failed: ${r.status} ${r.text}`);
    return { token: r.json.access_token as string, refresh: r.json.refresh_token as string, userId: r.json.user.id as string };
  }

  const admin = await login("root", "root-password-1");

  let n = 0;
  async function addUser(adminToken: string, username: string, role: "admin" | "member" = "member", password = `pw-${username}-${++n}-long`) {
    const r = await call("POST", "/v1/admin/users", { token: adminToken, json: { username, password, role } });
    if (r.status !== 201) throw new Error(`add user ${username} failed: ${r.status} ${r.text}`);
    const { token } = await login(username, password);
    return { id: r.json.id as string, token, password };
  }

  return {
    url,
    deps,
    database,
    config,
    logs,
    rawLogs,
    call,
    login,
    addUser,
    admin: { username: "root", password: "root-password-1", token: admin.token, id: admin.userId },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      if (!opts.database) await database.drop();
    },
  };
}

/** The contract's error body, with the request id echoed in the header. */
export function expectErrorBody(r: CallResult, status: number, error: string) {
  const problems: string[] = [];
  if (r.status !== status) problems.push(`status ${r.status}, expected ${status}`);
  if (r.json?.error !== error) problems.push(`error ${JSON.stringify(r.json?.error)}, expected ${error}`);
  if (typeof r.json?.message !== "string") problems.push("no message");
  if (!r.json?.request_id || r.json.request_id !== r.headers.get("x-request-id")) problems.push("request_id missing or not the header's");
  if (problems.length > 0) throw new Error(`${problems.join("; ")}: ${r.text.slice(0, 300)}`);
}

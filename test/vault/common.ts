// Helpers shared by the key-vault tests (not a test file itself).
import { sql } from "drizzle-orm";
import { expect } from "vitest";
import { rowsOf, type Executor } from "../../src/db/client.js";
import type { Simulator } from "../../src/simulator/server.js";
import { startService, type CallResult, type Service, type TestDatabase } from "../helpers/harness.js";

/** Generous limits: these suites test the vault, not the rate limiter. */
export const RATE_ENV = {
  RATE_LIMIT_HANDLE_CREATE: "1000/min",
  RATE_LIMIT_DOMAIN_ENABLE: "1000/min",
  RATE_LIMIT_KEY: "1000/min",
  RATE_LIMIT_GLOBAL: "5000/min",
} as const;

/** The base64 material of a keyring entry (fixed, distinct per id; test-only). */
export const keyringMaterial = (fill: number) => Buffer.alloc(32, fill).toString("base64");
export const entry = (id: string, fill: number) => `${id}:${keyringMaterial(fill)}`;

/** The keyring of the suites that do not rotate. */
export const VAULT_KEYRING = entry("v1", 0x5a);

export { randomApiKey, sleep } from "../helpers/harness.js";

let handleCounter = 0;
/** A handle the simulator has never seen (it answers 409 alias_taken for a reused one). */
export const freshHandle = () => `v${process.pid}.${Date.now().toString(36)}.${++handleCounter}`;

export async function startVaultService(
  sim: Simulator,
  opts: { env?: Record<string, string>; database?: TestDatabase } = {},
): Promise<Service> {
  return startService({
    ...(opts.database ? { database: opts.database } : {}),
    env: { HALTMAN_BASE_URL: sim.url, VAULT_KEYRING, ...RATE_ENV, ...(opts.env ?? {}) },
  });
}

export async function countRows(ex: Executor, table: string): Promise<number> {
  const [r] = await rowsOf<{ n: number }>(ex, sql`select count(*)::int as n from ${sql.identifier(table)}`);
  return Number(r!.n);
}

/** Stores a key and returns its id (the answer must be 201). */
export async function storeKey(svc: Service, token: string, apiKey: string, name = "a key"): Promise<string> {
  const r = await svc.call("POST", "/v1/keys", { token, json: { name, api_key: apiKey } });
  if (r.status !== 201) throw new Error(`storing a key failed: ${r.status} ${r.text}`);
  return r.json.id as string;
}

export async function grant(svc: Service, token: string, keyId: string, username: string, expiresAt?: Date): Promise<string> {
  const r = await svc.call("POST", `/v1/keys/${keyId}/grants`, {
    token,
    json: { username, ...(expiresAt ? { expires_at: expiresAt.toISOString() } : {}) },
  });
  if (r.status !== 201) throw new Error(`granting failed: ${r.status} ${r.text}`);
  return r.json.id as string;
}

/** POST /api/handle/create with a fresh handle, naming the key when given. */
export function proxyCreate(svc: Service, token: string, keyId?: string, handle = freshHandle()): Promise<CallResult> {
  return svc.call("POST", "/api/handle/create", {
    token,
    json: { handle },
    headers: keyId !== undefined ? { "x-key-id": keyId } : {},
  });
}

/**
 * A proxied call that must succeed, and the X-API-Key the simulator received for it (exactly
 * one upstream request per call).
 */
export async function useKey(svc: Service, sim: Simulator, token: string, keyId?: string): Promise<string> {
  const before = sim.received.length;
  const r = await proxyCreate(svc, token, keyId);
  expect(r.status, r.text).toBe(200);
  expect(sim.received.length - before).toBe(1);
  return sim.received[sim.received.length - 1]!.headers["x-api-key"] as string;
}

export type KeyRow = { id: string; owner_id: string; sealed_key: string; wrapped_dek: string; keyring_id: string };

/** A haltman_keys row with its boxes as hex. */
export async function keyRow(ex: Executor, id: string): Promise<KeyRow> {
  const [r] = await rowsOf<KeyRow>(
    ex,
    sql`select id::text as id, owner_id::text as owner_id, encode(sealed_key, 'hex') as sealed_key,
               encode(wrapped_dek, 'hex') as wrapped_dek, keyring_id
        from haltman_keys where id = ${id}`,
  );
  if (!r) throw new Error(`no haltman_keys row ${id}`);
  return r;
}

/** keyring_id -> rows, for each table that holds sealed material. */
export async function keyringIds(ex: Executor): Promise<Record<string, Record<string, number>>> {
  const out: Record<string, Record<string, number>> = {};
  for (const table of ["haltman_keys", "signing_keys", "vault_secrets"]) {
    const rows = await rowsOf<{ keyring_id: string; n: number }>(
      ex,
      sql`select keyring_id, count(*)::int as n from ${sql.identifier(table)} group by keyring_id order by keyring_id`,
    );
    out[table] = Object.fromEntries(rows.map((r) => [r.keyring_id, Number(r.n)]));
  }
  return out;
}

// ---- scanning the whole database for a value ----------------------------------------------------

export type ScanHit = { table: string; column: string; needle: string; rows: number };
export type ScanResult = { columns: string[]; hits: ScanHit[] };

const TEXT_TYPES = ["text", "character varying", "character", "jsonb", "json", "ARRAY", "USER-DEFINED"];

/**
 * Every column of every table outside the system schemas that can hold text (text, varchar,
 * char, json, jsonb, arrays) or bytes (bytea, compared as hex), searched case-insensitively for
 * each needle. For bytea, a needle that is itself hex is searched as the raw bytes it encodes
 * and as the bytes of its text.
 */
export async function scanDatabase(ex: Executor, needles: string[]): Promise<ScanResult> {
  const cols = await rowsOf<{ table_schema: string; table_name: string; column_name: string; data_type: string }>(
    ex,
    sql`select c.table_schema, c.table_name, c.column_name, c.data_type
        from information_schema.columns c
        join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
        where c.table_schema not in ('pg_catalog', 'information_schema') and c.table_schema not like 'pg\_%'
          and t.table_type = 'BASE TABLE'
        order by c.table_schema, c.table_name, c.ordinal_position`,
  );
  const columns: string[] = [];
  const hits: ScanHit[] = [];
  for (const c of cols) {
    const isBytes = c.data_type === "bytea";
    if (!isBytes && !TEXT_TYPES.includes(c.data_type)) continue;
    const name = `${c.table_schema}.${c.table_name}.${c.column_name}`;
    columns.push(name);
    const table = sql`${sql.identifier(c.table_schema)}.${sql.identifier(c.table_name)}`;
    const col = sql.identifier(c.column_name);
    for (const needle of needles) {
      const patterns = isBytes
        ? [
            ...(/^([0-9a-f]{2})+$/i.test(needle) ? [needle.toLowerCase()] : []),
            Buffer.from(needle, "utf8").toString("hex"),
          ]
        : [needle];
      for (const p of patterns) {
        const expr = isBytes ? sql`encode(${col}, 'hex')` : sql`${col}::text`;
        const [r] = await rowsOf<{ n: number }>(ex, sql`select count(*)::int as n from ${table} where ${expr} ilike ${"%" + p + "%"}`);
        if (Number(r!.n) > 0) hits.push({ table: `${c.table_schema}.${c.table_name}`, column: c.column_name, needle, rows: Number(r!.n) });
      }
    }
  }
  return { columns, hits };
}

/** The forms a key could leak in: as given, upper case, and base64 of its bytes and of its text. */
export function leakForms(apiKey: string): string[] {
  return [
    apiKey,
    apiKey.toUpperCase(),
    Buffer.from(apiKey, "hex").toString("base64"),
    Buffer.from(apiKey, "utf8").toString("base64"),
    Buffer.from(apiKey, "hex").toString("base64url"),
  ];
}

/** The needles of `leakForms` found in `text` (case-sensitive for base64, insensitive for hex). */
export function leaksIn(text: string, needles: string[]): string[] {
  const lower = text.toLowerCase();
  return needles.filter((n) => (/^[0-9a-f]+$/i.test(n) ? lower.includes(n.toLowerCase()) : text.includes(n)));
}

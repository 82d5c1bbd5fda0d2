// Issue 3, the canary: one fixed key goes through the whole life of a stored key (stored, listed,
// granted, used upstream, deleted) and afterwards appears nowhere: not in an answer, a header, a
// log line, a database column or the audit. The simulator must have received it, and the scanner
// must be shown to find a planted value, so that "found nothing" means something.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import type { CallOptions, CallResult, Service } from "../helpers/harness.js";
import { freshHandle, leakForms, leaksIn, scanDatabase, startVaultService } from "./common.js";

/** Used only here. */
const CANARY = ("c0ffee".repeat(11) + "c0ffee").slice(0, 60) + "d00d";
const NEEDLES = [...leakForms(CANARY), CANARY.slice(0, 40), CANARY.slice(20, 60)];

let sim: Simulator;
let svc: Service;
const seen: { what: string; status: number; headers: string; text: string }[] = [];
let owner: { id: string; token: string };
let mate: { id: string; token: string };
let keyId: string;

/** Every answer of the suite goes through here, to be searched at the end. */
async function rec(method: string, path: string, opts: CallOptions = {}): Promise<CallResult> {
  const r = await svc.call(method, path, opts);
  seen.push({ what: `${method} ${path}`, status: r.status, headers: JSON.stringify([...r.headers.entries()]), text: r.text });
  return r;
}

beforeAll(async () => {
  expect(CANARY).toMatch(/^[0-9a-f]{64}$/);
  sim = await startSimulator({ keys: { [CANARY]: "canary@example.com" } });
  // debug: the most the service ever logs
  svc = await startVaultService(sim, { env: { LOG_LEVEL: "debug" } });
  owner = await svc.addUser(svc.admin.token, "canary-owner");
  mate = await svc.addUser(svc.admin.token, "canary-mate");
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

describe("the canary key", () => {
  it("lives a whole life: stored, listed, granted, used upstream, deleted", async () => {
    const stored = await rec("POST", "/v1/keys", { token: owner.token, json: { name: "canary", api_key: CANARY } });
    expect(stored.status, stored.text).toBe(201);
    keyId = stored.json.id;
    // Stored twice (upper case): refused, and the refusal must not echo it either.
    expect((await rec("POST", "/v1/keys", { token: mate.token, json: { name: "dup", api_key: CANARY.toUpperCase() } })).status).toBe(409);

    expect((await rec("GET", "/v1/keys", { token: owner.token })).json.keys[0].id).toBe(keyId);
    expect((await rec("GET", "/v1/keys?all=true", { token: svc.admin.token })).status).toBe(200);
    const g = await rec("POST", `/v1/keys/${keyId}/grants`, { token: owner.token, json: { username: "canary-mate" } });
    expect(g.status).toBe(201);
    expect((await rec("GET", `/v1/keys/${keyId}/grants`, { token: owner.token })).status).toBe(200);
    expect((await rec("GET", "/v1/keys", { token: mate.token })).json.keys[0].access).toBe("grant");

    const sent = sim.received.length;
    const handle = freshHandle();
    const c1 = await rec("POST", "/api/handle/create", { token: owner.token, json: { handle }, headers: { "x-key-id": keyId } });
    expect(c1.status, c1.text).toBe(200);
    const c2 = await rec("POST", "/api/handle/create", { token: mate.token, json: { handle: freshHandle() } });
    expect(c2.status, c2.text).toBe(200);
    const c3 = await rec("POST", "/api/handle/domain/enable", { token: owner.token, json: { handle, domain: "example.com" }, headers: { "x-key-id": keyId } });
    expect(c3.status, c3.text).toBe(200);
    // upstream refusals and failures pass through the same code paths that build error answers
    const c4 = await rec("POST", "/api/handle/create", { token: owner.token, json: { handle } }); // alias_taken
    expect(c4.status).toBe(409);
    sim.faults.push({ kind: "status", status: 401, body: '{"error":"invalid_or_expired_api_key"}' });
    expect((await rec("POST", "/api/handle/create", { token: owner.token, json: { handle: freshHandle() } })).status).toBe(502);
    sim.faults.push({ kind: "status", status: 503 });
    expect((await rec("POST", "/api/handle/create", { token: owner.token, json: { handle: freshHandle() } })).status).toBe(502);
    // A client-sent X-API-Key is not forwarded, and the stored key is the one that goes.
    const c5 = await rec("POST", "/api/handle/create", { token: mate.token, json: { handle: freshHandle() }, headers: { "x-api-key": "f".repeat(64) } });
    expect(c5.status).toBe(200);

    // The simulator received the canary, verbatim, on each of those calls.
    const keys = sim.received.slice(sent).map((r) => r.headers["x-api-key"]);
    expect(keys).toEqual(Array(7).fill(CANARY));

    // The key typed where it does not belong: refused, and neither echoed, logged nor kept.
    const misplaced: [string, Promise<CallResult>, number][] = [
      ["unparsable body", rec("POST", "/v1/keys", { token: owner.token, body: `{"name":"n","api_key":"${CANARY}"`, headers: { "content-type": "application/json" } }), 400],
      ["text/plain body", rec("POST", "/v1/keys", { token: owner.token, body: `api_key=${CANARY}`, headers: { "content-type": "text/plain" } }), 400],
      ["oversized body", rec("POST", "/v1/keys", { token: owner.token, json: { name: "n", api_key: CANARY, pad: "x".repeat(40_000) } }), 413],
      ["as a grantee's username", rec("POST", `/v1/keys/${keyId}/grants`, { token: owner.token, json: { username: CANARY } }), 400],
      ["as X-Key-Id", rec("POST", "/api/handle/create", { token: owner.token, json: { handle: freshHandle() }, headers: { "x-key-id": CANARY } }), 404],
      ["as a bearer token", rec("GET", "/v1/keys", { headers: { authorization: `Bearer ${CANARY}` } }), 401],
    // (Not in a URL path: the request log line records the path, by design.)
    ];
    for (const [label, p, status] of misplaced) expect((await p).status, label).toBe(status);

    expect((await rec("GET", "/v1/audit", { token: owner.token })).status).toBe(200);
    expect((await rec("GET", "/metrics", { token: svc.admin.token })).status).toBe(200);
    // While it is stored, the database holds no plaintext of it either.
    const during = await scanDatabase(svc.deps.db, NEEDLES);
    expect(during.hits).toEqual([]);

    const del = await rec("DELETE", `/v1/keys/${keyId}`, { token: owner.token });
    expect(del.status).toBe(204);
    expect((await rec("GET", "/v1/keys?all=true", { token: svc.admin.token })).json.keys.map((k: { id: string }) => k.id)).not.toContain(keyId);
  });

  it("is not in the audit, in either export format, for the admin or the owner", async () => {
    const exports: CallResult[] = [];
    for (const token of [svc.admin.token, owner.token, mate.token]) {
      for (const format of ["ndjson", "csv"]) exports.push(await rec("GET", `/v1/audit/export?format=${format}`, { token }));
    }
    exports.push(await rec("GET", `/v1/audit?key_id=${keyId}&limit=500`, { token: svc.admin.token }));
    for (const r of exports) expect(r.status).toBe(200);
    // Control: the exports do hold the key's life (by id), so they were searched for something.
    const adminNdjson = exports[0]!.text;
    for (const action of ["key.create", "grant.create", "handle.create", "domain.enable", "key.delete"]) {
      expect(adminNdjson).toContain(`"action":"${action}"`);
    }
    expect(adminNdjson).toContain(keyId);
    for (const r of exports) expect(leaksIn(r.text, NEEDLES)).toEqual([]);
  });

  it("is in no answer body or header the suite received", () => {
    expect(seen.length).toBeGreaterThan(20);
    const found = seen.flatMap((s) => leaksIn(`${s.headers}\n${s.text}`, NEEDLES).map((n) => `${s.what} (${s.status}): ${n}`));
    expect(found).toEqual([]);
    // Control: the search finds a value that is there (the key's last four, which are shown by design).
    expect(seen.some((s) => leaksIn(s.text, [CANARY.slice(-4)]).length > 0)).toBe(true);
  });

  it("is in no log line", () => {
    expect(svc.rawLogs.length).toBeGreaterThan(20);
    const found = svc.rawLogs.flatMap((line, i) => leaksIn(line, NEEDLES).map((n) => `line ${i}: ${n}`));
    expect(found).toEqual([]);
    // Control: the log does hold this suite's requests (by key id).
    expect(svc.rawLogs.some((l) => l.includes(keyId))).toBe(true);
  });

  it("is in no text, json or bytea column of any table, after deletion", async () => {
    const scan = await scanDatabase(svc.deps.db, NEEDLES);
    // The scan covered the tables where a key could end up.
    for (const col of [
      "public.haltman_keys.sealed_key",
      "public.haltman_keys.wrapped_dek",
      "public.haltman_keys.name",
      "public.audit_events.detail",
      "public.audit_events.handle",
      "public.audit_event_outcomes.detail",
      "public.idempotency_keys.request_hash",
      "public.users.username",
      "public.vault_secrets.sealed",
      "public.rate_limit_buckets.key",
    ]) {
      expect(scan.columns).toContain(col);
    }
    expect(scan.hits).toEqual([]);
    const gone = await rowsOf<{ n: number }>(svc.deps.db, sql`select count(*)::int as n from haltman_keys where id = ${keyId}`);
    expect(gone[0]!.n).toBe(0);
  });

  it("control: the scanner finds a planted value in text, varchar, json, jsonb and bytea columns, in either case", async () => {
    const planted = "0badc0de".repeat(8);
    const db = svc.deps.db;
    await db.execute(sql`create table vault_scan_scratch (id serial primary key, t text, v varchar(200), j json, jb jsonb, b bytea)`);
    try {
      await db.execute(sql`insert into vault_scan_scratch (t) values (${"prefix " + planted.toUpperCase() + " suffix"})`);
      await db.execute(sql`insert into vault_scan_scratch (v) values (${planted})`);
      await db.execute(sql`insert into vault_scan_scratch (j) values (${JSON.stringify({ deep: [{ k: planted }] })}::json)`);
      await db.execute(sql`insert into vault_scan_scratch (jb) values (${JSON.stringify({ k: planted })}::jsonb)`);
      await db.execute(sql`insert into vault_scan_scratch (b) values (decode(${"00" + planted + "ff"}, 'hex'))`);
      await db.execute(sql`insert into vault_scan_scratch (b) values (convert_to(${"x" + planted}, 'UTF8'))`);
      const scan = await scanDatabase(db, leakForms(planted));
      const where = [...new Set(scan.hits.map((h) => `${h.table}.${h.column}`))].sort();
      expect(where).toEqual(["public.vault_scan_scratch.b", "public.vault_scan_scratch.j", "public.vault_scan_scratch.jb", "public.vault_scan_scratch.t", "public.vault_scan_scratch.v"]);
      // bytea: found as the raw bytes the hex stands for and as the bytes of its text, one row each
      const b = (await scanDatabase(db, [planted])).hits.filter((h) => h.column === "b");
      expect(b.map((h) => h.rows)).toEqual([1, 1]);
      // And in a real table: a value in an audit record's detail is found.
      await db.execute(
        sql`insert into audit_events (id, request_id, action, outcome, detail) values (gen_random_uuid(), 'scan-control', 'user.update', 'success', ${JSON.stringify({ note: planted })}::jsonb)`,
      );
      const real = await scanDatabase(db, [planted]);
      expect(real.hits.map((h) => `${h.table}.${h.column}`)).toContain("public.audit_events.detail");
    } finally {
      await db.execute(sql`drop table vault_scan_scratch`);
    }
  });
});

// Issue 3, object-level authorization: who may see, manage and use a stored key, as a table per
// route, and the rules of grants. A key the caller may not see is `not_found`, exactly as a key
// that does not exist; a grantee who tries to manage gets `forbidden`; an admin manages keys but
// does not use one it neither owns nor was granted (vault.ts chooseKey).
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { expectErrorBody, type CallResult, type Service } from "../helpers/harness.js";
import { countRows, grant, proxyCreate, randomApiKey, sleep, startVaultService, storeKey, useKey } from "./common.js";

const ACTORS = ["owner", "grantee", "expired", "revoked", "other", "admin"] as const;
type Actor = (typeof ACTORS)[number];
const USERNAMES: Record<Exclude<Actor, "admin">, string> = {
  owner: "k-owner",
  grantee: "k-grantee",
  expired: "k-expired",
  revoked: "k-revoked",
  other: "k-other",
};

let sim: Simulator;
let svc: Service;
const tok = {} as Record<Actor, string>;
const uid = {} as Record<Actor, string>;
let mainKey: string; // plaintext
let K: string; // its id
/** per actor: a key of its own to try DELETE on, set up exactly like K */
const delKeys = {} as Record<Actor, string>;
/** per actor: an active grant on K (of a bystander) to try DELETE on */
const revokeTargets = {} as Record<Actor, string>;
/** a key with an expired grant to k-expired, to grant again */
let regrantKey: string;
let regrantPlain: string;
let expiry: Date;
/** proxied calls made before the expiry and the revocation, as controls */
const controls: Record<string, number> = {};

/** The owner's key set up with an active, an expiring and a revoked grant. */
async function keyWithGrants(name: string, apiKey = randomApiKey()) {
  const id = await storeKey(svc, tok.owner, apiKey, name);
  await grant(svc, tok.owner, id, USERNAMES.grantee);
  const g = await grant(svc, tok.owner, id, USERNAMES.revoked);
  return { id, revokedGrant: g };
}

beforeAll(async () => {
  sim = await startSimulator();
  svc = await startVaultService(sim);
  tok.admin = svc.admin.token;
  uid.admin = svc.admin.id;
  for (const a of Object.keys(USERNAMES) as Exclude<Actor, "admin">[]) {
    const u = await svc.addUser(svc.admin.token, USERNAMES[a]);
    tok[a] = u.token;
    uid[a] = u.id;
  }
  for (const a of ACTORS) await svc.addUser(svc.admin.token, `tgt-${a}`);
  for (const a of ACTORS) await svc.addUser(svc.admin.token, `rvk-${a}`);

  mainKey = randomApiKey();
  sim.addKey(mainKey, "owner@example.com");
  const main = await keyWithGrants("main", mainKey);
  K = main.id;
  for (const a of ACTORS) revokeTargets[a] = await grant(svc, tok.owner, K, `rvk-${a}`);
  const pending: string[] = [main.revokedGrant];
  for (const a of ACTORS) {
    const k = await keyWithGrants(`delete-me-${a}`);
    delKeys[a] = k.id;
    pending.push(k.revokedGrant);
  }
  regrantPlain = randomApiKey();
  sim.addKey(regrantPlain, "owner@example.com");
  regrantKey = await storeKey(svc, tok.owner, regrantPlain, "regrant");

  // The revoked grantee could use K before the revocation.
  controls.revokedBefore = (await proxyCreate(svc, tok.revoked, K)).status;
  for (const [i, g] of pending.entries()) {
    const keyId = i === 0 ? K : delKeys[ACTORS[i - 1]!];
    const r = await svc.call("DELETE", `/v1/keys/${keyId}/grants/${g}`, { token: tok.owner });
    if (r.status !== 204) throw new Error(`revoking failed: ${r.status} ${r.text}`);
  }

  // The expiring grants, last, and a control call before they expire.
  expiry = new Date(Date.now() + 2_000);
  await grant(svc, tok.owner, K, USERNAMES.expired, expiry);
  for (const a of ACTORS) await grant(svc, tok.owner, delKeys[a], USERNAMES.expired, expiry);
  await grant(svc, tok.owner, regrantKey, USERNAMES.expired, expiry);
  controls.expiredBefore = (await proxyCreate(svc, tok.expired, K)).status;
  await sleep(Math.max(0, expiry.getTime() - Date.now()) + 300);
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

/** Runs `call` for each actor in turn; the table of statuses, and every answer. */
async function table(call: (a: Actor) => Promise<CallResult>) {
  const statuses = {} as Record<Actor, number>;
  const answers = {} as Record<Actor, CallResult>;
  for (const a of ACTORS) {
    answers[a] = await call(a);
    statuses[a] = answers[a].status;
  }
  return { statuses, answers };
}

/** Every 404 of `answers` has the same body as the same actor's answer for a key that does not exist. */
function expectSameAsMissing(answers: Record<Actor, CallResult>, missing: Record<Actor, CallResult>) {
  for (const a of ACTORS) {
    if (answers[a].status !== 404) continue;
    expectErrorBody(answers[a], 404, "not_found");
    expectErrorBody(missing[a], 404, "not_found");
    const shape = (r: CallResult) => ({ ...r.json, request_id: "<id>" });
    expect(shape(answers[a]), a).toEqual(shape(missing[a]));
  }
}

const NOT_A_UUID = ["not-a-uuid", "123", `${randomUUID()}x`, "%20"];

describe("the matrix", () => {
  it("the controls: the expiring grant and the later-revoked grant worked before", () => {
    expect(controls).toEqual({ revokedBefore: 200, expiredBefore: 200 });
    expect(Date.now()).toBeGreaterThan(expiry.getTime());
  });

  it("GET /v1/keys: the owner and the active grantee see the key, nobody else does", async () => {
    const seen = {} as Record<Actor, string>;
    for (const a of ACTORS) {
      const r = await svc.call("GET", "/v1/keys", { token: tok[a] });
      expect(r.status).toBe(200);
      const k = r.json.keys.find((x: { id: string }) => x.id === K);
      seen[a] = k ? k.access : "-";
    }
    expect(seen).toEqual({ owner: "owner", grantee: "grant", expired: "-", revoked: "-", other: "-", admin: "-" });

    const all = {} as Record<Actor, string>;
    for (const a of ACTORS) {
      const r = await svc.call("GET", "/v1/keys?all=true", { token: tok[a] });
      all[a] = r.status === 200 ? (r.json.keys.some((x: { id: string }) => x.id === K) ? "sees" : "blind") : String(r.status);
    }
    expect(all).toEqual({ owner: "403", grantee: "403", expired: "403", revoked: "403", other: "403", admin: "sees" });
  });

  it("POST /api/handle/create with X-Key-Id: owner and active grantee use it; everyone else 404, as for no key", async () => {
    const sent = sim.received.length;
    const { statuses, answers } = await table((a) => proxyCreate(svc, tok[a], K));
    expect(statuses).toEqual({ owner: 200, grantee: 200, expired: 404, revoked: 404, other: 404, admin: 404 });
    // Only the two allowed calls went upstream, each with K's plaintext.
    expect(sim.received.slice(sent).map((r) => r.headers["x-api-key"])).toEqual([mainKey, mainKey]);

    const missing = await table((a) => proxyCreate(svc, tok[a], randomUUID()));
    expect(Object.values(missing.statuses)).toEqual(ACTORS.map(() => 404));
    expectSameAsMissing(answers, missing.answers);
    for (const bad of NOT_A_UUID) {
      const r = await table((a) => proxyCreate(svc, tok[a], bad));
      expect(Object.values(r.statuses), bad).toEqual(ACTORS.map(() => 404));
      expectSameAsMissing(r.answers, missing.answers);
    }
    expect(sim.received.length).toBe(sent + 2);
  });

  it("GET /v1/keys/:id/grants: owner and admin; a grantee is forbidden; the rest 404", async () => {
    const { statuses, answers } = await table((a) => svc.call("GET", `/v1/keys/${K}/grants`, { token: tok[a] }));
    expect(statuses).toEqual({ owner: 200, grantee: 403, expired: 404, revoked: 404, other: 404, admin: 200 });
    expectErrorBody(answers.grantee, 403, "forbidden");
    expect(answers.admin.json).toEqual(answers.owner.json);
    const missing = await table((a) => svc.call("GET", `/v1/keys/${randomUUID()}/grants`, { token: tok[a] }));
    expect(Object.values(missing.statuses)).toEqual(ACTORS.map(() => 404));
    expectSameAsMissing(answers, missing.answers);
    for (const bad of NOT_A_UUID) {
      const r = await table((a) => svc.call("GET", `/v1/keys/${bad}/grants`, { token: tok[a] }));
      expect(Object.values(r.statuses), bad).toEqual(ACTORS.map(() => 404));
      expectSameAsMissing(r.answers, missing.answers);
    }
  });

  it("GET /v1/keys/:id/grants lists the active grants only, in the contract's shape", async () => {
    const r = await svc.call("GET", `/v1/keys/${K}/grants`, { token: tok.owner });
    expect(r.status).toBe(200);
    expect(Object.keys(r.json)).toEqual(["grants"]);
    const names = r.json.grants.map((g: { user: { username: string } }) => g.user.username).sort();
    expect(names).toEqual([USERNAMES.grantee, ...ACTORS.map((a) => `rvk-${a}`)].sort());
    const g = r.json.grants.find((x: { user: { username: string } }) => x.user.username === USERNAMES.grantee);
    expect(g).toMatchObject({ key_id: K, user: { id: uid.grantee, username: USERNAMES.grantee }, expires_at: null });
    expect(typeof g.id).toBe("string");
  });

  it("POST /v1/keys/:id/grants: owner and admin; a grantee is forbidden; the rest 404; nothing written on refusal", async () => {
    const { statuses, answers } = await table((a) =>
      svc.call("POST", `/v1/keys/${K}/grants`, { token: tok[a], json: { username: `tgt-${a}` } }),
    );
    expect(statuses).toEqual({ owner: 201, grantee: 403, expired: 404, revoked: 404, other: 404, admin: 201 });
    expectErrorBody(answers.grantee, 403, "forbidden");
    expect(answers.admin.json).toMatchObject({ key_id: K, user: { username: "tgt-admin" }, expires_at: null });
    const holders = await rowsOf<{ username: string }>(
      svc.deps.db,
      sql`select u.username from key_grants g join users u on u.id = g.user_id
          where g.key_id = ${K} and u.username like 'tgt-%' order by 1`,
    );
    expect(holders.map((h) => h.username)).toEqual(["tgt-admin", "tgt-owner"]);

    const missing = await table((a) =>
      svc.call("POST", `/v1/keys/${randomUUID()}/grants`, { token: tok[a], json: { username: `tgt-${a}` } }),
    );
    expect(Object.values(missing.statuses)).toEqual(ACTORS.map(() => 404));
    expectSameAsMissing(answers, missing.answers);
    for (const bad of NOT_A_UUID) {
      const r = await table((a) => svc.call("POST", `/v1/keys/${bad}/grants`, { token: tok[a], json: { username: `tgt-${a}` } }));
      expect(Object.values(r.statuses), bad).toEqual(ACTORS.map(() => 404));
      expectSameAsMissing(r.answers, missing.answers);
    }
  });

  it("DELETE /v1/keys/:id/grants/:grant_id: owner and admin; a grantee is forbidden; the rest 404", async () => {
    const { statuses, answers } = await table((a) =>
      svc.call("DELETE", `/v1/keys/${K}/grants/${revokeTargets[a]}`, { token: tok[a] }),
    );
    expect(statuses).toEqual({ owner: 204, grantee: 403, expired: 404, revoked: 404, other: 404, admin: 204 });
    expectErrorBody(answers.grantee, 403, "forbidden");
    const active = await rowsOf<{ username: string }>(
      svc.deps.db,
      sql`select u.username from key_grants g join users u on u.id = g.user_id
          where g.key_id = ${K} and u.username like 'rvk-%' and g.revoked_at is null order by 1`,
    );
    expect(active.map((h) => h.username)).toEqual(["rvk-expired", "rvk-grantee", "rvk-other", "rvk-revoked"]);

    // A key that does not exist, whatever the grant id; and for the owner, grant ids that do not
    // exist or belong to another key.
    const missing = await table((a) => svc.call("DELETE", `/v1/keys/${randomUUID()}/grants/${revokeTargets.other}`, { token: tok[a] }));
    expect(Object.values(missing.statuses)).toEqual(ACTORS.map(() => 404));
    expectSameAsMissing(answers, missing.answers);
    for (const bad of NOT_A_UUID) {
      const r = await table((a) => svc.call("DELETE", `/v1/keys/${bad}/grants/${revokeTargets.other}`, { token: tok[a] }));
      expect(Object.values(r.statuses), bad).toEqual(ACTORS.map(() => 404));
      expectSameAsMissing(r.answers, missing.answers);
    }
    for (const g of [randomUUID(), "not-a-uuid", revokeTargets.owner /* already revoked */]) {
      expectErrorBody(await svc.call("DELETE", `/v1/keys/${K}/grants/${g}`, { token: tok.owner }), 404, "not_found");
    }
    expectErrorBody(await svc.call("DELETE", `/v1/keys/${regrantKey}/grants/${revokeTargets.other}`, { token: tok.owner }), 404, "not_found");
    expect(
      (await rowsOf<{ n: number }>(svc.deps.db, sql`select count(*)::int as n from key_grants where id = ${revokeTargets.other} and revoked_at is null`))[0]!.n,
    ).toBe(1);
  });

  it("DELETE /v1/keys/:id: owner and admin; a grantee is forbidden; the rest 404; refused keys stay", async () => {
    const { statuses, answers } = await table((a) => svc.call("DELETE", `/v1/keys/${delKeys[a]}`, { token: tok[a] }));
    expect(statuses).toEqual({ owner: 204, grantee: 403, expired: 404, revoked: 404, other: 404, admin: 204 });
    expectErrorBody(answers.grantee, 403, "forbidden");
    expect(answers.owner.text).toBe("");
    const left = await rowsOf<{ name: string }>(
      svc.deps.db,
      sql`select name from haltman_keys where name like 'delete-me-%' order by name`,
    );
    expect(left.map((r) => r.name)).toEqual(["delete-me-expired", "delete-me-grantee", "delete-me-other", "delete-me-revoked"]);
    // The grants of a deleted key go with it.
    const orphans = await rowsOf<{ n: number }>(
      svc.deps.db,
      sql`select count(*)::int as n from key_grants where key_id in (${delKeys.owner}, ${delKeys.admin})`,
    );
    expect(orphans[0]!.n).toBe(0);

    const missing = await table((a) => svc.call("DELETE", `/v1/keys/${randomUUID()}`, { token: tok[a] }));
    expect(Object.values(missing.statuses)).toEqual(ACTORS.map(() => 404));
    expectSameAsMissing(answers, missing.answers);
    for (const bad of NOT_A_UUID) {
      const r = await table((a) => svc.call("DELETE", `/v1/keys/${bad}`, { token: tok[a] }));
      expect(Object.values(r.statuses), bad).toEqual(ACTORS.map(() => 404));
      expectSameAsMissing(r.answers, missing.answers);
    }
    // Deleting twice: the second is 404.
    expectErrorBody(await svc.call("DELETE", `/v1/keys/${delKeys.owner}`, { token: tok.owner }), 404, "not_found");
  });
});

describe("grants", () => {
  const post = (token: string, keyId: string, json: unknown) => svc.call("POST", `/v1/keys/${keyId}/grants`, { token, json });

  it("refuses an unknown user or the owner with 400 field username, writing nothing", async () => {
    const before = await countRows(svc.deps.db, "key_grants");
    for (const [label, json] of [
      ["unknown", { username: "nobody-here" }],
      ["the owner", { username: USERNAMES.owner }],
      ["the owner, upper case", { username: USERNAMES.owner.toUpperCase() }],
      ["empty", { username: "" }],
      ["missing", {}],
      ["not a string", { username: 42 }],
    ] as const) {
      const r = await post(tok.owner, K, json);
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, label).toBe("username");
    }
    // The admin granting on someone's key: the owner is still refused.
    const r = await post(tok.admin, K, { username: USERNAMES.owner });
    expectErrorBody(r, 400, "invalid_params");
    expect(r.json.field).toBe("username");
    expect(await countRows(svc.deps.db, "key_grants")).toBe(before);
  });

  it("grants a user (case-insensitively, and the name trimmed, as login takes it) with the contract's answer", async () => {
    const u = await svc.addUser(svc.admin.token, "k-newcomer");
    const r = await post(tok.owner, K, { username: " K-NewComer\t" });
    expect(r.status, r.text).toBe(201);
    expect(r.json).toMatchObject({ key_id: K, user: { id: u.id, username: "k-newcomer" }, expires_at: null });
    expect(Object.keys(r.json)).toEqual(expect.arrayContaining(["id", "key_id", "user", "expires_at"]));
    expect(await useKey(svc, sim, u.token, K)).toBe(mainKey);
  });

  it("concurrent grants of the same user: exactly one 201, the rest 409", async () => {
    await svc.addUser(svc.admin.token, "k-racer");
    const before = await countRows(svc.deps.db, "key_grants");
    const answers = await Promise.all(
      [tok.owner, tok.admin, tok.owner, tok.admin, tok.owner].map((token) => post(token, K, { username: "k-racer" })),
    );
    expect(answers.map((r) => r.status).sort()).toEqual([201, 409, 409, 409, 409]);
    for (const r of answers.filter((a) => a.status === 409)) expectErrorBody(r, 409, "conflict");
    expect(await countRows(svc.deps.db, "key_grants")).toBe(before + 1);
  });

  // On PostgreSQL this finds a race in createGrant: the key is read without a lock, the DELETE
  // commits, and the grant's INSERT fails its foreign key (23503), which comes back as a 500.
  it("granting while the key is being deleted: 201 or 404, never a 500, and no grant outlives its key", async () => {
    await svc.addUser(svc.admin.token, "k-late");
    const seen: string[] = [];
    const failures = new Set<string>();
    for (let i = 0; i < 15; i++) {
      const id = await storeKey(svc, tok.owner, randomApiKey(), `doomed ${i}`);
      const [g, d] = await Promise.all([
        post(tok.owner, id, { username: "k-late" }),
        svc.call("DELETE", `/v1/keys/${id}`, { token: tok.owner }),
      ]);
      seen.push(`${g.status}/${d.status}`);
      if (g.status >= 500) {
        const err = svc.logs.find((l) => l.request_id === g.json?.request_id && l.level === "error")?.err as { code?: string; message?: string } | undefined;
        failures.add(`${g.status} ${g.json?.error}; logged: ${err?.code} ${err?.message}`);
      }
    }
    expect([...failures], `grant/delete statuses: ${seen.join(" ")}`).toEqual([]);
    expect(seen.every((s) => s === "201/204" || s === "404/204"), seen.join(" ")).toBe(true);
    const orphans = await rowsOf<{ n: number }>(
      svc.deps.db,
      sql`select count(*)::int as n from key_grants g left join haltman_keys k on k.id = g.key_id where k.id is null`,
    );
    expect(orphans[0]!.n).toBe(0);
  });

  it("revoking while the key is being deleted: 204 or 404, never a 500", async () => {
    await svc.addUser(svc.admin.token, "k-late2");
    const seen: string[] = [];
    for (let i = 0; i < 15; i++) {
      const id = await storeKey(svc, tok.owner, randomApiKey(), `doomed-r ${i}`);
      const g = await grant(svc, tok.owner, id, "k-late2");
      const [r, d] = await Promise.all([
        svc.call("DELETE", `/v1/keys/${id}/grants/${g}`, { token: tok.owner }),
        svc.call("DELETE", `/v1/keys/${id}`, { token: tok.admin }),
      ]);
      seen.push(`${r.status}/${d.status}`);
    }
    expect(seen.every((s) => s === "204/204" || s === "404/204"), seen.join(" ")).toBe(true);
  });

  it("an admin holding a grant may use the key (its 404 above is for want of a grant, not its role)", async () => {
    const g = await grant(svc, tok.owner, K, "root");
    expect(await useKey(svc, sim, tok.admin, K)).toBe(mainKey);
    const list = await svc.call("GET", "/v1/keys", { token: tok.admin });
    expect(list.json.keys.find((k: { id: string }) => k.id === K)?.access).toBe("grant");
    expect((await svc.call("DELETE", `/v1/keys/${K}/grants/${g}`, { token: tok.owner })).status).toBe(204);
    expectErrorBody(await proxyCreate(svc, tok.admin, K), 404, "not_found");
  });

  it("refuses a duplicate active grant with 409, writing nothing", async () => {
    const before = await countRows(svc.deps.db, "key_grants");
    for (const [token, username] of [
      [tok.owner, USERNAMES.grantee],
      [tok.owner, USERNAMES.grantee.toUpperCase()],
      [tok.admin, USERNAMES.grantee],
    ] as const) {
      expectErrorBody(await post(token, K, { username }), 409, "conflict");
    }
    expect(await countRows(svc.deps.db, "key_grants")).toBe(before);
  });

  it("after a grant expired, granting the same user again works", async () => {
    // The expired grant no longer lets them use the key...
    expectErrorBody(await proxyCreate(svc, tok.expired, regrantKey), 404, "not_found");
    const r = await post(tok.owner, regrantKey, { username: USERNAMES.expired });
    expect(r.status, r.text).toBe(201);
    const active = await rowsOf<{ n: number }>(
      svc.deps.db,
      sql`select count(*)::int as n from key_grants where key_id = ${regrantKey} and user_id = ${uid.expired} and revoked_at is null`,
    );
    expect(active[0]!.n).toBe(1);
    // ...the new one does.
    expect(await useKey(svc, sim, tok.expired, regrantKey)).toBe(regrantPlain);
  });

  it("refuses an expires_at in the past (or not a time) with 400 field expires_at; a future one is kept", async () => {
    const u = await svc.addUser(svc.admin.token, "k-timed");
    const before = await countRows(svc.deps.db, "key_grants");
    for (const expires_at of [new Date(Date.now() - 60_000).toISOString(), "2001-01-01T00:00:00Z", "tomorrow", 12345, "9999-12-31T23:00:00-02:00" /* year 10000 in UTC: was a 500 */]) {
      const r = await post(tok.owner, K, { username: "k-timed", expires_at });
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, String(expires_at)).toBe("expires_at");
    }
    expect(await countRows(svc.deps.db, "key_grants")).toBe(before);
    const at = new Date(Date.now() + 3_600_000);
    const ok = await post(tok.owner, K, { username: "k-timed", expires_at: at.toISOString() });
    expect(ok.status, ok.text).toBe(201);
    expect(Date.parse(ok.json.expires_at)).toBe(at.getTime());
    expect(await useKey(svc, sim, u.token, K)).toBe(mainKey);
  });

  it("a revocation takes effect on the grantee's next request", async () => {
    const v = await svc.addUser(svc.admin.token, "k-victim");
    const g = await grant(svc, tok.owner, K, "k-victim");
    expect(await useKey(svc, sim, v.token, K)).toBe(mainKey);
    expect(await useKey(svc, sim, v.token)).toBe(mainKey); // their only key: no X-Key-Id needed
    expect((await svc.call("DELETE", `/v1/keys/${K}/grants/${g}`, { token: tok.owner })).status).toBe(204);
    const sent = sim.received.length;
    expectErrorBody(await proxyCreate(svc, v.token, K), 404, "not_found");
    expectErrorBody(await proxyCreate(svc, v.token), 403, "forbidden");
    expect(sim.received.length).toBe(sent);
    const list = await svc.call("GET", "/v1/keys", { token: v.token });
    expect(list.json).toEqual({ keys: [] });
    // The same grant cannot be revoked twice; the owner can grant again.
    expectErrorBody(await svc.call("DELETE", `/v1/keys/${K}/grants/${g}`, { token: tok.owner }), 404, "not_found");
    await grant(svc, tok.owner, K, "k-victim");
    expect(await useKey(svc, sim, v.token, K)).toBe(mainKey);
  });
});

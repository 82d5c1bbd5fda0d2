// Issue 3, storing and listing keys: POST /v1/keys and GET /v1/keys against the contract.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { expectErrorBody, type Service } from "../helpers/harness.js";
import { countRows, grant, proxyCreate, randomApiKey, startVaultService, storeKey, useKey } from "./common.js";

let sim: Simulator;
let svc: Service;
let alice: { id: string; token: string };
let bob: { id: string; token: string };
let carol: { id: string; token: string };

beforeAll(async () => {
  sim = await startSimulator();
  svc = await startVaultService(sim);
  alice = await svc.addUser(svc.admin.token, "alice");
  bob = await svc.addUser(svc.admin.token, "bob");
  carol = await svc.addUser(svc.admin.token, "carol");
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

const post = (token: string, json: unknown) => svc.call("POST", "/v1/keys", { token, json });

describe("POST /v1/keys", () => {
  it("answers 201 with exactly {id, name, last4, status, created_at}", async () => {
    const key = randomApiKey();
    const before = Date.now();
    const r = await post(alice.token, { name: "team key", api_key: key });
    expect(r.status, r.text).toBe(201);
    expect(Object.keys(r.json).sort()).toEqual(["created_at", "id", "last4", "name", "status"]);
    expect(r.json).toMatchObject({ name: "team key", last4: key.slice(-4), status: "ok" });
    expect(r.json.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    const created = Date.parse(r.json.created_at);
    expect(created).toBeGreaterThanOrEqual(before - 5_000);
    expect(created).toBeLessThanOrEqual(Date.now() + 5_000);
    // Nothing of the key but its last four characters: not the key, not a box.
    expect(r.text.toLowerCase()).not.toContain(key.slice(0, 60));
    expect(r.text).not.toMatch(/api_key|sealed|wrapped|cipher|fingerprint|dek/i);
  });

  it("trims and lower-cases the key: upstream receives the normalised form", async () => {
    const key = randomApiKey();
    sim.addKey(key, "dora@example.com");
    const dora = await svc.addUser(svc.admin.token, "dora");
    const r = await post(dora.token, { name: "upper", api_key: `  \t${key.toUpperCase()}\n ` });
    expect(r.status, r.text).toBe(201);
    expect(r.json.last4).toBe(key.slice(-4));
    // The simulator itself lower-cases what it receives, so look at the header it got, verbatim.
    expect(await useKey(svc, sim, dora.token, r.json.id)).toBe(key);
  });

  it("refuses an api_key that is not 64 hex characters after trimming, and stores nothing", async () => {
    const good = randomApiKey();
    const bad: [string, unknown][] = [
      ["63 hex characters", good.slice(1)],
      ["65 hex characters", good + "a"],
      ["64 characters, one not hex", good.slice(0, 63) + "g"],
      ["64 characters with an inner space", good.slice(0, 31) + " " + good.slice(32)],
      ["empty", ""],
      ["only spaces", "   "],
      ["a 0x prefix", "0x" + good.slice(2)],
      ["very long", "a".repeat(10_000)],
      ["a number", 12345],
      ["null", null],
      ["an array", [good]],
      ["an object", { key: good }],
      ["a boolean", true],
    ];
    const rowsBefore = await countRows(svc.deps.db, "haltman_keys");
    const results: Record<string, string> = {};
    for (const [label, value] of bad) {
      const r = await post(alice.token, { name: "bad", api_key: value });
      expectErrorBody(r, 400, "invalid_params");
      results[label] = `${r.status} ${r.json.error} ${r.json.field}`;
    }
    const missing = await post(alice.token, { name: "bad" });
    expectErrorBody(missing, 400, "invalid_params");
    results["missing"] = `${missing.status} ${missing.json.error} ${missing.json.field}`;
    expect(results).toEqual(Object.fromEntries([...bad.map(([l]) => l), "missing"].map((l) => [l, "400 invalid_params api_key"])));
    expect(await countRows(svc.deps.db, "haltman_keys")).toBe(rowsBefore);
    // Control: the same request with a good key is stored.
    const ok = await post(alice.token, { name: "good", api_key: good });
    expect(ok.status, ok.text).toBe(201);
    expect(await countRows(svc.deps.db, "haltman_keys")).toBe(rowsBefore + 1);
  });

  it("refuses the same key stored again, by anyone, in any case, with spaces: 409 conflict, nothing written", async () => {
    const key = randomApiKey();
    const first = await post(alice.token, { name: "original", api_key: key });
    expect(first.status, first.text).toBe(201);
    const rowsBefore = await countRows(svc.deps.db, "haltman_keys");
    const attempts: [string, string, string][] = [
      ["the same user", alice.token, key],
      ["another user", bob.token, key],
      ["the admin", svc.admin.token, key],
      ["upper case", bob.token, key.toUpperCase()],
      ["mixed case with spaces", carol.token, `  ${key.slice(0, 32).toUpperCase()}${key.slice(32)}  `],
    ];
    for (const [label, token, value] of attempts) {
      const r = await post(token, { name: `dup ${label}`, api_key: value });
      expectErrorBody(r, 409, "conflict");
      expect(r.text.toLowerCase(), label).not.toContain(key);
    }
    expect(await countRows(svc.deps.db, "haltman_keys")).toBe(rowsBefore);
    // Control: a different key from the same user is accepted.
    expect((await post(bob.token, { name: "other", api_key: randomApiKey() })).status).toBe(201);
    // And once the original is deleted, the key can be stored again.
    expect((await svc.call("DELETE", `/v1/keys/${first.json.id}`, { token: alice.token })).status).toBe(204);
    expect((await post(bob.token, { name: "again", api_key: key })).status).toBe(201);
  });

  it("the same key stored concurrently by several users: exactly one 201, the rest 409, one row", async () => {
    const key = randomApiKey();
    const rowsBefore = await countRows(svc.deps.db, "haltman_keys");
    const tokens = [alice.token, bob.token, carol.token, svc.admin.token, alice.token, bob.token];
    const answers = await Promise.all(
      tokens.map((token, i) => post(token, { name: `race ${i}`, api_key: i % 2 ? key.toUpperCase() : ` ${key} ` })),
    );
    const statuses = answers.map((r) => r.status).sort();
    expect(statuses).toEqual([201, 409, 409, 409, 409, 409]);
    for (const r of answers.filter((a) => a.status === 409)) expectErrorBody(r, 409, "conflict");
    expect(await countRows(svc.deps.db, "haltman_keys")).toBe(rowsBefore + 1);
  });

  it("never echoes or logs a refused api_key", async () => {
    const mark = svc.rawLogs.length;
    const key = randomApiKey();
    const values = [key.slice(1), key + "a", key.slice(0, 63) + "g", `${key}${key}`];
    for (const v of values) {
      const r = await post(alice.token, { name: "bad", api_key: v });
      expect(r.status).toBe(400);
      expect(r.text.toLowerCase()).not.toContain(key.slice(1, 60));
    }
    // an unparsable body and a non-JSON one carrying the key
    const broken = await svc.call("POST", "/v1/keys", { token: alice.token, body: `{"name":"x","api_key":"${key}"`, headers: { "content-type": "application/json" } });
    expectErrorBody(broken, 400, "invalid_json");
    const plainText = await svc.call("POST", "/v1/keys", { token: alice.token, body: `name=x&api_key=${key}`, headers: { "content-type": "text/plain" } });
    expectErrorBody(plainText, 400, "invalid_params");
    for (const r of [broken, plainText]) expect(r.text.toLowerCase()).not.toContain(key.slice(1, 60));
    const lines = svc.rawLogs.slice(mark).join("");
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.toLowerCase()).not.toContain(key.slice(1, 60));
  });

  it("checks the name: empty, blank, too long, missing or not a string is 400 field name", async () => {
    const rowsBefore = await countRows(svc.deps.db, "haltman_keys");
    const bad: [string, unknown][] = [
      ["empty", ""],
      ["blank", "   "],
      ["101 characters", "n".repeat(101)],
      ["a number", 7],
      ["null", null],
    ];
    for (const [label, name] of bad) {
      const r = await post(alice.token, { name, api_key: randomApiKey() });
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field, label).toBe("name");
    }
    const missing = await post(alice.token, { api_key: randomApiKey() });
    expectErrorBody(missing, 400, "invalid_params");
    expect(missing.json.field).toBe("name");
    expect(await countRows(svc.deps.db, "haltman_keys")).toBe(rowsBefore);
    // Controls: one character and 100 characters are fine.
    expect((await post(alice.token, { name: "x", api_key: randomApiKey() })).status).toBe(201);
    const long = await post(alice.token, { name: "n".repeat(100), api_key: randomApiKey() });
    expect(long.status).toBe(201);
    expect(long.json.name).toBe("n".repeat(100));
    expect(await countRows(svc.deps.db, "haltman_keys")).toBe(rowsBefore + 2);
  });

  it("needs a token", async () => {
    const r = await svc.call("POST", "/v1/keys", { json: { name: "anon", api_key: randomApiKey() } });
    expectErrorBody(r, 401, "unauthorized");
  });
});

describe("GET /v1/keys", () => {
  let ed: { id: string; token: string };
  let fay: { id: string; token: string };
  let gus: { id: string; token: string };
  let edKey: string;
  let edKeyId: string;
  let fayKeyId: string;

  beforeAll(async () => {
    ed = await svc.addUser(svc.admin.token, "eddie");
    fay = await svc.addUser(svc.admin.token, "fay");
    gus = await svc.addUser(svc.admin.token, "gus");
    edKey = randomApiKey();
    sim.addKey(edKey, "eddie@example.com");
    edKeyId = await storeKey(svc, ed.token, edKey, "ed's key");
    fayKeyId = await storeKey(svc, fay.token, randomApiKey(), "fay's key");
    await grant(svc, ed.token, edKeyId, "fay");
  });

  const FIELDS = ["access", "created_at", "id", "last4", "last_used_at", "name", "owner", "status"];

  it("shows the owner their key with exactly the contract's fields", async () => {
    const r = await svc.call("GET", "/v1/keys", { token: ed.token });
    expect(r.status, r.text).toBe(200);
    expect(Object.keys(r.json)).toEqual(["keys"]);
    expect(r.json.keys).toHaveLength(1);
    const k = r.json.keys[0];
    expect(Object.keys(k).sort()).toEqual(FIELDS);
    expect(k).toMatchObject({
      id: edKeyId,
      name: "ed's key",
      last4: edKey.slice(-4),
      status: "ok",
      owner: { id: ed.id, username: "eddie" },
      access: "owner",
      last_used_at: null,
    });
    expect(Object.keys(k.owner).sort()).toEqual(["id", "username"]);
    expect(Number.isNaN(Date.parse(k.created_at))).toBe(false);
    expect(r.text.toLowerCase()).not.toContain(edKey.slice(0, 60));
  });

  it("shows a grantee the key with access grant, beside their own", async () => {
    const r = await svc.call("GET", "/v1/keys", { token: fay.token });
    expect(r.status).toBe(200);
    const byId = Object.fromEntries(r.json.keys.map((k: { id: string }) => [k.id, k]));
    expect(Object.keys(byId).sort()).toEqual([edKeyId, fayKeyId].sort());
    expect(byId[edKeyId]).toMatchObject({ access: "grant", owner: { id: ed.id, username: "eddie" } });
    expect(byId[fayKeyId]).toMatchObject({ access: "owner", owner: { id: fay.id, username: "fay" } });
    for (const k of r.json.keys) expect(Object.keys(k).sort()).toEqual(FIELDS);
  });

  it("shows another member nothing of them", async () => {
    const r = await svc.call("GET", "/v1/keys", { token: gus.token });
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ keys: [] });
    // ?all=false is the same list
    const f = await svc.call("GET", "/v1/keys?all=false", { token: gus.token });
    expect(f.status).toBe(200);
    expect(f.json).toEqual({ keys: [] });
  });

  it("?all=true: every key for an admin, 403 for a member", async () => {
    const all = await svc.call("GET", "/v1/keys?all=true", { token: svc.admin.token });
    expect(all.status, all.text).toBe(200);
    const ids = all.json.keys.map((k: { id: string }) => k.id);
    expect(ids).toEqual(expect.arrayContaining([edKeyId, fayKeyId]));
    expect(ids).toHaveLength(await countRows(svc.deps.db, "haltman_keys"));
    const ed1 = all.json.keys.find((k: { id: string }) => k.id === edKeyId);
    expect(ed1.owner).toEqual({ id: ed.id, username: "eddie" });
    for (const k of all.json.keys) expect(Object.keys(k).sort()).toEqual(FIELDS);
    // Control: without ?all the admin, who owns none of them, sees only their own keys.
    const own = await svc.call("GET", "/v1/keys", { token: svc.admin.token });
    expect(own.status).toBe(200);
    expect(own.json.keys.map((k: { id: string }) => k.id)).not.toContain(edKeyId);
    for (const k of own.json.keys) expect(k.owner.id).toBe(svc.admin.id);

    for (const token of [ed.token, gus.token]) {
      const m = await svc.call("GET", "/v1/keys?all=true", { token });
      expectErrorBody(m, 403, "forbidden");
    }
  });

  it("sets last_used_at after a proxied call", async () => {
    const before = await svc.call("GET", "/v1/keys", { token: ed.token });
    expect(before.json.keys[0].last_used_at).toBeNull();
    const t0 = Date.now();
    expect(await useKey(svc, sim, ed.token, edKeyId)).toBe(edKey);
    const after = await svc.call("GET", "/v1/keys", { token: ed.token });
    const used = after.json.keys[0].last_used_at;
    expect(typeof used).toBe("string");
    expect(Date.parse(used)).toBeGreaterThanOrEqual(t0 - 5_000);
    expect(Date.parse(used)).toBeLessThanOrEqual(Date.now() + 5_000);
    // The grantee's view shows the same instant; an unused key still shows null.
    const fayView = await svc.call("GET", "/v1/keys", { token: fay.token });
    const byId = Object.fromEntries(fayView.json.keys.map((k: { id: string; last_used_at: string | null }) => [k.id, k.last_used_at]));
    expect(byId[edKeyId]).toBe(used);
    expect(byId[fayKeyId]).toBeNull();
  });

  it("a call that upstream refuses for the key flags it rejected; the next accepted one clears it", async () => {
    sim.faults.push({ kind: "status", status: 401, body: '{"error":"invalid_or_expired_api_key"}' });
    const r = await proxyCreate(svc, ed.token, edKeyId);
    expectErrorBody(r, 502, "upstream_key_rejected");
    const flagged = await svc.call("GET", "/v1/keys", { token: ed.token });
    expect(flagged.json.keys[0].status).toBe("rejected");
    expect(await useKey(svc, sim, ed.token, edKeyId)).toBe(edKey);
    const cleared = await svc.call("GET", "/v1/keys", { token: ed.token });
    expect(cleared.json.keys[0].status).toBe("ok");
  });
});

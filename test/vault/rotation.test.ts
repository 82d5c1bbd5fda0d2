// Issue 3 point 5, master-key rotation: keys sealed under "k1"; the keyring becomes "k2,k1" (a
// second service on the same database); rotateKeyring re-seals everything under k2; then k1 can
// go. Interrupted and concurrent rotations end the same, losing and corrupting nothing.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Keyring } from "../../src/crypto/keyring.js";
import { rowsOf } from "../../src/db/client.js";
import { rotateKeyring } from "../../src/services/rotation.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { StartupError, checkKeyring } from "../../src/startup.js";
import { expectErrorBody, type Service } from "../helpers/harness.js";
import { entry, keyRow, keyringIds, keyringMaterial, proxyCreate, randomApiKey, sleep, startVaultService, storeKey, useKey } from "./common.js";

const K1 = entry("k1", 0x11);
const K2 = entry("k2", 0x22);
const K3 = entry("k3", 0x33);
const MATERIAL = [keyringMaterial(0x11), keyringMaterial(0x22), keyringMaterial(0x33)];

let sim: Simulator;
beforeAll(async () => {
  sim = await startSimulator();
});
afterAll(async () => {
  await sim?.close();
});

type Owned = { id: string; plain: string; owner: string; token: string };

/** Stores a key known to the simulator. */
async function newKey(svc: Service, token: string, owner: string, name: string): Promise<Owned> {
  const plain = randomApiKey();
  sim.addKey(plain, `${owner}@example.com`);
  return { id: await storeKey(svc, token, plain, name), plain, owner, token };
}

/** The ids of haltman_keys, sorted. */
async function keyIds(svc: Service): Promise<string[]> {
  return (await rowsOf<{ id: string }>(svc.deps.db, sql`select id::text as id from haltman_keys order by id`)).map((r) => r.id);
}

async function startupErrorOf(p: Promise<unknown>): Promise<StartupError> {
  try {
    await p;
  } catch (err) {
    return err as StartupError;
  }
  throw new Error("expected checkKeyring to refuse");
}

describe("rotation from k1 to k2", () => {
  let svcA: Service; // keyring k1
  let svcB: Service; // keyring k2,k1 on the same database
  let svcC: Service | undefined; // keyring k2 alone, after the rotation
  let alice: { id: string; token: string; password: string };
  let bob: { id: string; token: string };
  const keys: Owned[] = [];
  const before: Record<string, { sealed_key: string; wrapped_dek: string }> = {};

  beforeAll(async () => {
    svcA = await startVaultService(sim, { env: { VAULT_KEYRING: K1 } });
    alice = await svcA.addUser(svcA.admin.token, "alice");
    bob = await svcA.addUser(svcA.admin.token, "bob");
    keys.push(await newKey(svcA, alice.token, "alice", "a1"));
    keys.push(await newKey(svcA, alice.token, "alice", "a2"));
    keys.push(await newKey(svcA, bob.token, "bob", "b1"));
    const g = await svcA.call("POST", `/v1/keys/${keys[0]!.id}/grants`, { token: alice.token, json: { username: "bob" } });
    expect(g.status).toBe(201);
    svcB = await startVaultService(sim, { database: svcA.database, env: { VAULT_KEYRING: `${K2},${K1}` } });
    for (const k of keys) before[k.id] = await keyRow(svcA.deps.db, k.id);
  });
  afterAll(async () => {
    await svcC?.close();
    await svcB?.close();
    await svcA?.close();
  });

  it("before: everything is sealed under k1, and a k2,k1 service already opens it", async () => {
    expect(await keyringIds(svcA.deps.db)).toEqual({ haltman_keys: { k1: 3 }, signing_keys: { k1: 1 }, vault_secrets: { k1: 1 } });
    for (const k of keys) expect(await useKey(svcB, sim, k.token, k.id)).toBe(k.plain);
  });

  it("before: checkKeyring with k2 alone refuses, naming k1 and no key material; with k2,k1 it passes", async () => {
    const err = await startupErrorOf(checkKeyring(svcA.database, Keyring.parse(K2)));
    expect(err).toBeInstanceOf(StartupError);
    expect(err.message).toContain('"k1"');
    expect(err.message).not.toContain('"k2"');
    for (const m of MATERIAL) expect(err.message).not.toContain(m);
    expect(err.message).not.toMatch(/[A-Za-z0-9+/]{40,}={0,2}/);
    await expect(checkKeyring(svcA.database, Keyring.parse(`${K2},${K1}`))).resolves.toBeUndefined();
    await expect(checkKeyring(svcA.database, Keyring.parse(K1))).resolves.toBeUndefined();
  });

  it("rotateKeyring re-seals every row of haltman_keys, signing_keys and vault_secrets under k2", async () => {
    const report = await rotateKeyring(svcB.deps.db, Keyring.parse(`${K2},${K1}`));
    expect(report).toEqual({ resealed: 5, skipped: 0, byTable: { haltman_keys: 3, signing_keys: 1, vault_secrets: 1 } });
    expect(await keyringIds(svcA.deps.db)).toEqual({ haltman_keys: { k2: 3 }, signing_keys: { k2: 1 }, vault_secrets: { k2: 1 } });
    // The data keys were re-wrapped; each key's own box is untouched.
    for (const k of keys) {
      const now = await keyRow(svcA.deps.db, k.id);
      expect(now.sealed_key).toBe(before[k.id]!.sealed_key);
      expect(now.wrapped_dek).not.toBe(before[k.id]!.wrapped_dek);
    }
    // A second run has nothing to do.
    expect(await rotateKeyring(svcB.deps.db, Keyring.parse(`${K2},${K1}`))).toEqual({ resealed: 0, skipped: 0, byTable: {} });
  });

  it("after: every key still opens and upstream receives the right plaintext", async () => {
    for (const k of keys) expect(await useKey(svcB, sim, k.token, k.id)).toBe(k.plain);
    // bob through his grant on a1
    expect(await useKey(svcB, sim, bob.token, keys[0]!.id)).toBe(keys[0]!.plain);
  });

  it("after: checkKeyring with k2 alone passes, and a service with k2 alone starts, opens everything and accepts old tokens", async () => {
    await expect(checkKeyring(svcA.database, Keyring.parse(K2))).resolves.toBeUndefined();
    svcC = await startVaultService(sim, { database: svcA.database, env: { VAULT_KEYRING: K2 } });
    // Access tokens issued before the rotation (by svcA, k1) still verify: the signing key survived.
    const me = await svcC.call("GET", "/v1/auth/me", { token: alice.token });
    expect(me.status, me.text).toBe(200);
    expect(me.json.username).toBe("alice");
    for (const k of keys) expect(await useKey(svcC, sim, k.token, k.id)).toBe(k.plain);
    // The fingerprint secret survived too: the same key is still recognised as stored.
    const dup = await svcC.call("POST", "/v1/keys", { token: bob.token, json: { name: "dup", api_key: keys[2]!.plain } });
    expectErrorBody(dup, 409, "conflict");
    // A new key is sealed under k2 and works.
    const fresh = await newKey(svcC, bob.token, "bob", "b2");
    expect((await keyRow(svcC.deps.db, fresh.id)).keyring_id).toBe("k2");
    expect(await useKey(svcC, sim, bob.token, fresh.id)).toBe(fresh.plain);
    // Tokens issued by the new service work on the old one (same signing key).
    const login = await svcC.login("alice", alice.password);
    expect((await svcA.call("GET", "/v1/auth/me", { token: login.token })).status).toBe(200);
  });

  it("after: a service left with k1 alone fails closed (500, nothing sent), and checkKeyring(k1) names k2", async () => {
    const sent = sim.received.length;
    const r = await proxyCreate(svcA, alice.token, keys[1]!.id);
    expectErrorBody(r, 500, "internal_error");
    expect(sim.received.length).toBe(sent);
    const err = await startupErrorOf(checkKeyring(svcA.database, Keyring.parse(K1)));
    expect(err).toBeInstanceOf(StartupError);
    expect(err.message).toContain('"k2"');
    for (const m of MATERIAL) expect(err.message).not.toContain(m);
  });
});

describe("an interrupted rotation, run again", () => {
  let svcP: Service; // k1
  let svcQ: Service; // k2,k1
  let svcR: Service | undefined; // k2
  let carl: { id: string; token: string };
  const keys: Owned[] = [];

  beforeAll(async () => {
    svcP = await startVaultService(sim, { env: { VAULT_KEYRING: K1 } });
    carl = await svcP.addUser(svcP.admin.token, "carl");
    for (let i = 0; i < 4; i++) keys.push(await newKey(svcP, carl.token, "carl", `c${i}`));
    svcQ = await startVaultService(sim, { database: svcP.database, env: { VAULT_KEYRING: `${K2},${K1}` } });
  });
  afterAll(async () => {
    await svcR?.close();
    await svcQ?.close();
    await svcP?.close();
  });

  it("stops after the first batch, leaving a consistent half-rotated vault", async () => {
    const batches: [string, number][] = [];
    await expect(
      rotateKeyring(svcQ.deps.db, Keyring.parse(`${K2},${K1}`), {
        batchSize: 1,
        onBatch: (table, n) => {
          batches.push([table, n]);
          throw new Error("killed after the first batch");
        },
      }),
    ).rejects.toThrow("killed after the first batch");
    expect(batches).toEqual([["haltman_keys", 1]]);
    expect(await keyringIds(svcQ.deps.db)).toEqual({ haltman_keys: { k1: 3, k2: 1 }, signing_keys: { k1: 1 }, vault_secrets: { k1: 1 } });
    for (const k of keys) expect(await useKey(svcQ, sim, k.token, k.id)).toBe(k.plain);
  });

  it("run again, ends as an uninterrupted rotation does", async () => {
    let batches = 0;
    const report = await rotateKeyring(svcQ.deps.db, Keyring.parse(`${K2},${K1}`), { batchSize: 1, onBatch: () => void batches++ });
    expect(report).toEqual({ resealed: 5, skipped: 0, byTable: { haltman_keys: 3, signing_keys: 1, vault_secrets: 1 } });
    expect(batches).toBe(3);
    expect(await keyringIds(svcQ.deps.db)).toEqual({ haltman_keys: { k2: 4 }, signing_keys: { k2: 1 }, vault_secrets: { k2: 1 } });
    await expect(checkKeyring(svcQ.database, Keyring.parse(K2))).resolves.toBeUndefined();
    svcR = await startVaultService(sim, { database: svcP.database, env: { VAULT_KEYRING: K2 } });
    expect((await svcR.call("GET", "/v1/auth/me", { token: carl.token })).status).toBe(200);
    for (const k of keys) expect(await useKey(svcR, sim, k.token, k.id)).toBe(k.plain);
  });
});

describe("a row that cannot be opened", () => {
  let svcP: Service; // k1
  let svcQ: Service; // k2,k1
  let fred: { id: string; token: string };
  const keys: Owned[] = [];

  beforeAll(async () => {
    svcP = await startVaultService(sim, { env: { VAULT_KEYRING: K1 } });
    fred = await svcP.addUser(svcP.admin.token, "fred");
    for (let i = 0; i < 3; i++) keys.push(await newKey(svcP, fred.token, "fred", `f${i}`));
    svcQ = await startVaultService(sim, { database: svcP.database, env: { VAULT_KEYRING: `${K2},${K1}` } });
  });
  afterAll(async () => {
    await svcQ?.close();
    await svcP?.close();
  });

  it("is skipped and reported, the rest is rotated, and k1 is still required until it is repaired", async () => {
    const victim = keys[1]!;
    const original = await keyRow(svcQ.deps.db, victim.id);
    const bad = Buffer.from(original.wrapped_dek, "hex");
    bad[20] = bad[20]! ^ 1;
    await svcQ.deps.db.execute(sql`update haltman_keys set wrapped_dek = decode(${bad.toString("hex")}, 'hex') where id = ${victim.id}`);

    const report = await rotateKeyring(svcQ.deps.db, Keyring.parse(`${K2},${K1}`), { batchSize: 1 });
    expect(report).toEqual({ resealed: 4, skipped: 1, byTable: { haltman_keys: 2, signing_keys: 1, vault_secrets: 1 } });
    expect(await keyringIds(svcQ.deps.db)).toEqual({ haltman_keys: { k1: 1, k2: 2 }, signing_keys: { k2: 1 }, vault_secrets: { k2: 1 } });
    expect((await keyRow(svcQ.deps.db, victim.id)).wrapped_dek).toBe(bad.toString("hex")); // left as it was
    // The start still refuses a keyring without k1: a row needs it.
    const err = await startupErrorOf(checkKeyring(svcQ.database, Keyring.parse(K2)));
    expect(err).toBeInstanceOf(StartupError);
    expect(err.message).toContain('"k1"');
    for (const k of [keys[0]!, keys[2]!]) expect(await useKey(svcQ, sim, k.token, k.id)).toBe(k.plain);

    // Repaired (restored from a backup), a second run finishes the job.
    await svcQ.deps.db.execute(sql`update haltman_keys set wrapped_dek = decode(${original.wrapped_dek}, 'hex') where id = ${victim.id}`);
    expect(await rotateKeyring(svcQ.deps.db, Keyring.parse(`${K2},${K1}`))).toEqual({ resealed: 1, skipped: 0, byTable: { haltman_keys: 1 } });
    await expect(checkKeyring(svcQ.database, Keyring.parse(K2))).resolves.toBeUndefined();
    for (const k of keys) expect(await useKey(svcQ, sim, k.token, k.id)).toBe(k.plain);
  });
});

describe("rotation while requests delete and create keys", () => {
  let svcP: Service; // k1: an instance still running with the old keyring
  let svcQ: Service; // k2,k1
  let svcR: Service; // k3,k2,k1
  let dana: { id: string; token: string };
  let eve: { id: string; token: string };
  const live = new Map<string, Owned>();

  beforeAll(async () => {
    svcP = await startVaultService(sim, { env: { VAULT_KEYRING: K1 } });
    dana = await svcP.addUser(svcP.admin.token, "dana");
    eve = await svcP.addUser(svcP.admin.token, "eve");
    for (let i = 0; i < 3; i++) {
      for (const [u, name] of [[dana, "dana"], [eve, "eve"]] as const) {
        const k = await newKey(svcP, u.token, name, `${name}${i}`);
        live.set(k.id, k);
      }
    }
    svcQ = await startVaultService(sim, { database: svcP.database, env: { VAULT_KEYRING: `${K2},${K1}` } });
    svcR = await startVaultService(sim, { database: svcP.database, env: { VAULT_KEYRING: `${K3},${K2},${K1}` } });
  });
  afterAll(async () => {
    await svcR?.close();
    await svcQ?.close();
    await svcP?.close();
  });

  async function expectAllOpen(svc: Service) {
    expect(await keyIds(svc)).toEqual([...live.keys()].sort());
    for (const k of live.values()) expect(await useKey(svc, sim, k.token, k.id)).toBe(k.plain);
  }

  it("between batches: a key deleted stays deleted, a key created under k1 is rotated too", async () => {
    let done = false;
    let deleted: Owned | undefined;
    const report = await rotateKeyring(svcQ.deps.db, Keyring.parse(`${K2},${K1}`), {
      batchSize: 1,
      onBatch: async () => {
        if (done) return;
        done = true;
        // a key the rotation has not reached yet
        const [row] = await rowsOf<{ id: string }>(svcQ.deps.db, sql`select id::text as id from haltman_keys where keyring_id = 'k1' limit 1`);
        deleted = live.get(row!.id)!;
        const del = await svcQ.call("DELETE", `/v1/keys/${deleted.id}`, { token: deleted.token });
        expect(del.status).toBe(204);
        live.delete(deleted.id);
        // the old instance seals under k1; the new one under k2
        const viaOld = await newKey(svcP, dana.token, "dana", "during-old");
        const viaNew = await newKey(svcQ, eve.token, "eve", "during-new");
        live.set(viaOld.id, viaOld);
        live.set(viaNew.id, viaNew);
      },
    });
    expect(report.skipped).toBe(0);
    expect(report.byTable.haltman_keys).toBe(6); // 6 at the start, one deleted, one created under k1
    expect(await keyringIds(svcQ.deps.db)).toEqual({ haltman_keys: { k2: 7 }, signing_keys: { k2: 1 }, vault_secrets: { k2: 1 } });
    await expectAllOpen(svcQ);
    expectErrorBody(await proxyCreate(svcQ, deleted!.token, deleted!.id), 404, "not_found");
  });

  it("racing: rotation alongside concurrent deletes and creates loses and corrupts nothing", async () => {
    const victims = [...live.values()].slice(0, 3);
    const opEnds: number[] = [];
    let rotationEnd = 0;
    const ops: Promise<unknown>[] = [
      // small batches with a pause between them, so that the requests land in the middle
      rotateKeyring(svcR.deps.db, Keyring.parse(`${K3},${K2},${K1}`), { batchSize: 1, onBatch: () => sleep(15) }).finally(
        () => void (rotationEnd = performance.now()),
      ),
      ...victims.map(async (k) => {
        const r = await svcR.call("DELETE", `/v1/keys/${k.id}`, { token: k.token });
        expect(r.status, r.text).toBe(204);
        live.delete(k.id);
        opEnds.push(performance.now());
      }),
      ...[0, 1, 2].map(async (i) => {
        const k = await newKey(svcQ, dana.token, "dana", `race-old-${i}`); // sealed under k2
        live.set(k.id, k);
        opEnds.push(performance.now());
      }),
      ...[0, 1].map(async (i) => {
        const k = await newKey(svcR, eve.token, "eve", `race-new-${i}`); // sealed under k3
        live.set(k.id, k);
        opEnds.push(performance.now());
      }),
    ];
    const results = await Promise.allSettled(ops);
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    // The requests did overlap the rotation.
    expect(opEnds.filter((t) => t < rotationEnd).length).toBeGreaterThan(0);
    const report = (results[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof rotateKeyring>>>).value;
    expect(report.skipped).toBe(0);
    // Nothing lost, nothing resurrected: exactly the keys that should exist, each opening.
    const ids = await keyringIds(svcR.deps.db);
    expect(Object.keys(ids.haltman_keys!).every((id) => id === "k2" || id === "k3")).toBe(true);
    await expectAllOpen(svcR);
    // Whatever a concurrent k2 instance created after the last pass is picked up by running again.
    await rotateKeyring(svcR.deps.db, Keyring.parse(`${K3},${K2},${K1}`));
    expect(await keyringIds(svcR.deps.db)).toEqual({ haltman_keys: { k3: live.size }, signing_keys: { k3: 1 }, vault_secrets: { k3: 1 } });
    for (const k of victims) expect((await rowsOf<{ n: number }>(svcR.deps.db, sql`select count(*)::int as n from haltman_keys where id = ${k.id}`))[0]!.n).toBe(0);
    await expectAllOpen(svcR);
  });
});

// Issue 3, the vault's audit trail: key.create, key.delete, grant.create and grant.revoke are
// each exactly one event naming the key (and the grantee), with no key material; a member who
// owns a key sees what others did with it, another member does not.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import type { Service } from "../helpers/harness.js";
import { leakForms, leaksIn, randomApiKey, startVaultService, storeKey, useKey } from "./common.js";

type Event = {
  id: string;
  action: string;
  outcome: string;
  key_id: string | null;
  subject_id: string | null;
  actor: { id: string; username: string } | null;
  request_id: string;
};

let sim: Simulator;
let svc: Service;
let owner: { id: string; token: string };
let mate: { id: string; token: string };
let other: { id: string; token: string };
const plain = randomApiKey();
let keyId: string;
let grantId: string;
const requestIds: Record<string, string> = {};

/** Every event the viewer may see (all pages). */
async function events(token: string, query = ""): Promise<Event[]> {
  const out: Event[] = [];
  let cursor = "";
  for (;;) {
    const r = await svc.call("GET", `/v1/audit?limit=500${query}${cursor ? `&cursor=${cursor}` : ""}`, { token });
    expect(r.status, r.text).toBe(200);
    out.push(...r.json.events);
    if (!r.json.next_cursor) return out;
    cursor = r.json.next_cursor;
  }
}

beforeAll(async () => {
  sim = await startSimulator({ keys: { [plain]: "owner@example.com" } });
  svc = await startVaultService(sim);
  owner = await svc.addUser(svc.admin.token, "audit-owner");
  mate = await svc.addUser(svc.admin.token, "audit-mate");
  other = await svc.addUser(svc.admin.token, "audit-other");
  // other owns a key of its own, so that it has a vault life too
  await storeKey(svc, other.token, randomApiKey(), "other's");

  const created = await svc.call("POST", "/v1/keys", { token: owner.token, json: { name: "audited", api_key: plain }, headers: { "x-request-id": "rq-key-create" } });
  expect(created.status).toBe(201);
  keyId = created.json.id;
  // a refused duplicate in the middle changes nothing in what follows
  expect((await svc.call("POST", "/v1/keys", { token: mate.token, json: { name: "dup", api_key: plain } })).status).toBe(409);
  const g = await svc.call("POST", `/v1/keys/${keyId}/grants`, { token: owner.token, json: { username: "audit-mate" }, headers: { "x-request-id": "rq-grant-create" } });
  expect(g.status).toBe(201);
  grantId = g.json.id;
  expect(await useKey(svc, sim, mate.token, keyId)).toBe(plain);
  requestIds.mateCall = sim.received[sim.received.length - 1]!.headers["x-request-id"] as string;
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

const only = (all: Event[], action: string) => all.filter((e) => e.action === action && e.key_id === keyId);

describe("the vault's audit events", () => {
  it("key.create and grant.create: exactly one each, naming the key and the grantee", async () => {
    const all = await events(svc.admin.token);
    const create = only(all, "key.create");
    expect(create).toHaveLength(1);
    expect(create[0]).toMatchObject({ outcome: "success", actor: { id: owner.id, username: "audit-owner" }, request_id: "rq-key-create" });
    const g = only(all, "grant.create");
    expect(g).toHaveLength(1);
    expect(g[0]).toMatchObject({ outcome: "success", actor: { id: owner.id }, subject_id: mate.id, request_id: "rq-grant-create" });
  });

  it("a member who owns the key sees what others did with it; another member sees none of it", async () => {
    const mine = await events(owner.token);
    const call = mine.find((e) => e.action === "handle.create" && e.key_id === keyId);
    expect(call, "the grantee's proxied call, in the owner's view").toMatchObject({ actor: { id: mate.id }, outcome: "success", request_id: requestIds.mateCall });
    expect(only(mine, "key.create")).toHaveLength(1);
    expect(only(mine, "grant.create")).toHaveLength(1);

    // The grantee sees its own call, but not the owner's events on a key it does not own.
    const mates = await events(mate.token);
    expect(mates.some((e) => e.action === "handle.create" && e.key_id === keyId)).toBe(true);
    expect(only(mates, "key.create")).toHaveLength(0);

    // Another member: nothing on this key, filtered or not (and its own events are there: the control).
    const others = await events(other.token);
    expect(others.filter((e) => e.key_id === keyId)).toEqual([]);
    expect(others.some((e) => e.action === "key.create" && e.actor?.id === other.id)).toBe(true);
    expect(await events(other.token, `&key_id=${keyId}`)).toEqual([]);
    const exp = await svc.call("GET", `/v1/audit/export?key_id=${keyId}`, { token: other.token });
    expect(exp.status).toBe(200);
    expect(exp.text.trim()).toBe("");
    const ownerExport = await svc.call("GET", `/v1/audit/export?key_id=${keyId}`, { token: owner.token });
    expect(ownerExport.text.trim().split("\n").length).toBeGreaterThanOrEqual(3);
  });

  it("grant.revoke and key.delete (by the admin): exactly one each, and the owner sees them", async () => {
    const rv = await svc.call("DELETE", `/v1/keys/${keyId}/grants/${grantId}`, { token: owner.token, headers: { "x-request-id": "rq-grant-revoke" } });
    expect(rv.status).toBe(204);
    // refused repeats add no event
    expect((await svc.call("DELETE", `/v1/keys/${keyId}/grants/${grantId}`, { token: owner.token })).status).toBe(404);
    const del = await svc.call("DELETE", `/v1/keys/${keyId}`, { token: svc.admin.token, headers: { "x-request-id": "rq-key-delete" } });
    expect(del.status).toBe(204);
    expect((await svc.call("DELETE", `/v1/keys/${keyId}`, { token: svc.admin.token })).status).toBe(404);

    const all = await events(svc.admin.token);
    const r = only(all, "grant.revoke");
    expect(r).toHaveLength(1);
    expect(r[0]).toMatchObject({ outcome: "success", actor: { id: owner.id }, subject_id: mate.id, request_id: "rq-grant-revoke" });
    const d = only(all, "key.delete");
    expect(d).toHaveLength(1);
    expect(d[0]).toMatchObject({ outcome: "success", actor: { id: svc.admin.id }, request_id: "rq-key-delete" });
    for (const action of ["key.create", "grant.create"]) expect(only(all, action), action).toHaveLength(1);

    const mine = await events(owner.token);
    expect(only(mine, "key.delete")).toHaveLength(1);
    const others = await events(other.token);
    expect(others.filter((e) => e.key_id === keyId)).toEqual([]);
  });

  it("holds no key material, in the list or the exports", async () => {
    const needles = leakForms(plain);
    for (const token of [svc.admin.token, owner.token]) {
      const list = await svc.call("GET", "/v1/audit?limit=500", { token });
      expect(list.text).toContain(keyId); // control: the events are there
      expect(leaksIn(list.text, needles)).toEqual([]);
      for (const format of ["ndjson", "csv"]) {
        const exp = await svc.call("GET", `/v1/audit/export?format=${format}`, { token });
        expect(exp.status).toBe(200);
        expect(exp.text).toContain(keyId);
        expect(leaksIn(exp.text, needles)).toEqual([]);
      }
    }
  });
});

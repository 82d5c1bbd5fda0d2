// An instance remembers which key each caller uses (vault.ts KeyChooser), and the admission
// statement (proxy_admit) checks that memory against the database on every call. Two instances
// share one database here: instance A has used the key (its choice is remembered), and the change
// is made through instance B, which A knows nothing of. A's very next call must follow the
// database: nothing stale may reach upstream, spend quota or be audited as an attempt.
import { describe, expect, it } from "vitest";
import { expectErrorBody, type Service } from "../helpers/harness.js";
import type { Simulator } from "../../src/simulator/server.js";
import { CREATE, newApiKey, twoInstancesForFile, parseSfList } from "./common.js";

let sim: Simulator;
let a: Service;
let b: Service;
twoInstancesForFile((t) => ({ sim, a, b } = t));

let n = 0;
const handle = () => `rc-${process.pid}-${++n}`;
const create = (svc: Service, token: string, headers: Record<string, string> = {}) =>
  svc.call("POST", CREATE, { token, json: { handle: handle() }, headers });
const upstreamCreates = () => sim.received.filter((r) => r.path === CREATE).length;

/** An owner with one stored key, and a grantee of it who has used it once through instance A. */
async function setUp(tag: string) {
  const owner = await a.addUser(a.admin.token, `own-${tag}`);
  const apiKey = newApiKey();
  sim.addKey(apiKey, `${tag}@example.com`);
  const k = await a.call("POST", "/v1/keys", { token: owner.token, json: { name: tag, api_key: apiKey } });
  expect(k.status, k.text).toBe(201);
  const user = await a.addUser(a.admin.token, `use-${tag}`);
  const g = await a.call("POST", `/v1/keys/${k.json.id}/grants`, { token: owner.token, json: { username: `use-${tag}` } });
  expect(g.status, g.text).toBe(201);
  const first = await create(a, user.token);
  expect(first.status, first.text).toBe(200);
  // B's session for the same user, to act there
  return { owner, user, keyId: k.json.id as string, grantId: g.json.id as string, apiKey };
}

async function attempts(svc: Service, actorId: string) {
  const r = await svc.call("GET", `/v1/audit?actor=${actorId}&action=handle.create&limit=500`, { token: svc.admin.token });
  expect(r.status).toBe(200);
  return r.json.events as { outcome: string }[];
}

describe("a remembered key choice is checked by the database on every call", () => {
  it("a grant revoked on another instance: A's next call is 403 forbidden, nothing upstream, no attempt", async () => {
    const s = await setUp("revoke");
    const before = upstreamCreates();
    const eventsBefore = (await attempts(a, s.user.id)).length;
    const del = await b.call("DELETE", `/v1/keys/${s.keyId}/grants/${s.grantId}`, { token: b.admin.token });
    expect(del.status, del.text).toBe(204);
    const r = await create(a, s.user.token);
    expectErrorBody(r, 403, "forbidden");
    expect(upstreamCreates()).toBe(before);
    const events = await attempts(a, s.user.id);
    expect(events.length).toBe(eventsBefore + 1);
    expect(events[0]!.outcome).toBe("denied");
  });

  it("the key deleted on another instance: A's next call names no key (403), with X-Key-Id 404", async () => {
    const s = await setUp("delete");
    const withId = await create(a, s.user.token, { "x-key-id": s.keyId });
    expect(withId.status, withId.text).toBe(200); // remembered under X-Key-Id too
    const before = upstreamCreates();
    const del = await b.call("DELETE", `/v1/keys/${s.keyId}`, { token: s.owner.token });
    expect(del.status, del.text).toBe(204);
    expectErrorBody(await create(a, s.user.token), 403, "forbidden");
    expectErrorBody(await create(a, s.user.token, { "x-key-id": s.keyId }), 404, "not_found");
    expect(upstreamCreates()).toBe(before);
  });

  it("a second usable key granted on another instance: A's next call without X-Key-Id is 400 key_required", async () => {
    const s = await setUp("second");
    const other = await b.addUser(b.admin.token, "own2-second");
    const apiKey = newApiKey();
    sim.addKey(apiKey, "second2@example.com");
    const k = await b.call("POST", "/v1/keys", { token: other.token, json: { name: "k2", api_key: apiKey } });
    expect(k.status, k.text).toBe(201);
    const g = await b.call("POST", `/v1/keys/${k.json.id}/grants`, { token: other.token, json: { username: "use-second" } });
    expect(g.status, g.text).toBe(201);
    const before = upstreamCreates();
    expectErrorBody(await create(a, s.user.token), 400, "key_required");
    expect(upstreamCreates()).toBe(before);
    // naming either key works
    const named = await create(a, s.user.token, { "x-key-id": k.json.id });
    expect(named.status, named.text).toBe(200);
    expect(sim.received.at(-1)!.headers["x-api-key"]).toBe(apiKey);
  });

  it("a rate-limit override set on another instance applies to A's next call", async () => {
    const s = await setUp("override");
    const patch = await b.call("PATCH", `/v1/admin/users/${s.user.id}`, { token: b.admin.token, json: { rate_limits: { handle_create: "2/min" } } });
    expect(patch.status, patch.text).toBe(200);
    const r = await create(a, s.user.token);
    expect(r.status, r.text).toBe(200);
    // the policy the call was decided under is the new one: 2 a minute
    const user = parseSfList(r.headers.get("ratelimit-policy")!).find((p) => p.name === "user")!;
    expect(user.params).toMatchObject({ q: 2, w: 60 });
    // and it is enforced: within 3 more calls one is refused for the user's limit (the call made
    // under the old policy still counts in part, rescaled, so the exact one depends on timing)
    const more = [await create(a, s.user.token), await create(a, s.user.token), await create(a, s.user.token)];
    const refused = more.find((x) => x.status === 429);
    expect(refused, more.map((x) => x.status).join(",")).toBeDefined();
    expectErrorBody(refused!, 429, "rate_limited");
    expect(refused!.json.reason).toBe("user");
  });

  it("the key's sealed material is read by the admission, never remembered: tampered after the choice, it fails closed", async () => {
    // A remembers the choice, not the ciphertext: a row changed under A (here another key's data
    // key swapped in) is what A's next call opens, and it fails to open: 500, nothing upstream.
    const s = await setUp("tamper");
    const t = await setUp("tamper-other");
    const { sql } = await import("drizzle-orm");
    await b.database.db.execute(sql`update haltman_keys set wrapped_dek = (select wrapped_dek from haltman_keys where id = ${t.keyId}) where id = ${s.keyId}`);
    const before = upstreamCreates();
    const r = await create(a, s.user.token);
    expectErrorBody(r, 500, "internal_error");
    expect(upstreamCreates()).toBe(before);
  });
});

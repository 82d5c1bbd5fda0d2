// Issue 5 in one process: whose quota a call spends. One user's exhaustion leaves another's
// alone; an admin override applies from the user's next call and clearing it restores the
// default; a refused call spends nothing in any bucket; refusals are audited as rate_limited.
// Policies refill one call every 12 s (5/min) or slower, so a test's few seconds change nothing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { startService, type CallResult, type Service } from "../helpers/harness.js";
import { checkRateHeaders, expectRateLimited, freshHandle, randomApiKey, readRateHeaders, remaining, uniqueName } from "./common.js";

let svc: Service;
let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ perKeyLimit: 1_000_000, perAddressLimit: 1_000_000 });
  svc = await startService({
    env: {
      HALTMAN_BASE_URL: sim.url,
      RATE_LIMIT_HANDLE_CREATE: "5/min",
      RATE_LIMIT_DOMAIN_ENABLE: "1000/min",
      RATE_LIMIT_KEY: "8/min",
      RATE_LIMIT_GLOBAL: "100000/min",
    },
    loginLimits: { perAccount: parseRatePolicy("10000/min")!, perAddress: parseRatePolicy("10000/min")! },
  });
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

const creates = () => sim.received.filter((r) => r.path === "/api/handle/create").length;

async function userWithKey() {
  const u = await svc.addUser(svc.admin.token, uniqueName("q"));
  const keyId = await storeKey(u.token);
  return { ...u, keyId };
}

async function storeKey(token: string): Promise<string> {
  const apiKey = randomApiKey();
  sim.addKey(apiKey, "owner@example.com");
  const r = await svc.call("POST", "/v1/keys", { token, json: { name: uniqueName("k"), api_key: apiKey } });
  if (r.status !== 201) throw new Error(`store key: ${r.status} ${r.text}`);
  return r.json.id as string;
}

const create = (token: string, keyId?: string): Promise<CallResult> =>
  svc.call("POST", "/api/handle/create", { token, json: { handle: freshHandle() }, ...(keyId ? { headers: { "x-key-id": keyId } } : {}) });

async function sequence(token: string, n: number, keyId?: string) {
  const out: CallResult[] = [];
  for (let i = 0; i < n; i++) out.push(await create(token, keyId));
  return out;
}

const setOverride = async (userId: string, value: string | null) => {
  const r = await svc.call("PATCH", `/v1/admin/users/${userId}`, { token: svc.admin.token, json: { rate_limits: { handle_create: value } } });
  expect(r.status, r.text).toBe(200);
  return r;
};

describe("one user's quota", () => {
  it("is theirs alone: exhausting it leaves another user's untouched", async () => {
    const a = await userWithKey();
    const b = await userWithKey();
    const before = creates();
    const ra = await sequence(a.token, 7);
    expect(ra.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429, 429]);
    expect(ra.slice(0, 5).map((r) => remaining(r, "user"))).toEqual([4, 3, 2, 1, 0]);
    for (const r of ra.slice(5)) expectRateLimited(r, "user", 12);
    // b starts with the full 5, as if a had never called
    const rb = await sequence(b.token, 6);
    expect(rb.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429]);
    expect(rb.slice(0, 5).map((r) => remaining(r, "user"))).toEqual([4, 3, 2, 1, 0]);
    expectRateLimited(rb[5]!, "user", 12);
    expect(creates() - before).toBe(10);
  });

  it("domain enable has its own user bucket: exhausting create leaves it alone", async () => {
    const a = await userWithKey();
    const made = await sequence(a.token, 6);
    expect(made.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429]);
    const handle = JSON.parse(made[0]!.text).handle as string;
    const en = await svc.call("POST", "/api/handle/domain/enable", { token: a.token, json: { handle, domain: "example.com" } });
    expect(en.status, en.text).toBe(200);
    checkRateHeaders(en, { user: { q: 1000, w: 60 }, key: { q: 8, w: 60 } }, ["user", "key", "global"]);
    expect(remaining(en, "user")).toBe(999);
  });
});

describe("admin override (PATCH /v1/admin/users/:id rate_limits)", () => {
  it("applies from the user's next call; clearing it restores the default", async () => {
    const u = await userWithKey();
    await setOverride(u.id, "2/min");
    const tight = await sequence(u.token, 3);
    expect(tight.map((r) => r.status)).toEqual([200, 200, 429]);
    for (const r of tight) expect(readRateHeaders(r.headers).policies.get("user")).toEqual({ q: 2, w: 60 });
    expect(tight.slice(0, 2).map((r) => remaining(r, "user"))).toEqual([1, 0]);
    expectRateLimited(tight[2]!, "user", 30);

    // cleared before any call of its own: the default 5/min, all of it
    const v = await userWithKey();
    await setOverride(v.id, "2/min");
    await setOverride(v.id, null);
    const back = await sequence(v.token, 6);
    expect(back.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429]);
    for (const r of back) expect(readRateHeaders(r.headers).policies.get("user")).toEqual({ q: 5, w: 60 });
    // and the first user's next answer is under the default policy again
    await setOverride(u.id, null);
    const after = await create(u.token);
    expect(readRateHeaders(after.headers).policies.get("user")).toEqual({ q: 5, w: 60 });
  });

  it("a looser override lets an exhausted user go on at once", async () => {
    const u = await userWithKey();
    const spent = await sequence(u.token, 6);
    expect(spent.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429]);
    await setOverride(u.id, "100000/min");
    const r = await create(u.token);
    expect(r.status, r.text).toBe(200);
    expect(readRateHeaders(r.headers).policies.get("user")).toEqual({ q: 100000, w: 60 });
  });

  // A policy "n/period" means at most n calls in any period. The calls a user made just before an
  // override is set (or cleared) are calls in that period like any other, at whatever policy held.
  it("lowering: after 2 calls, an override of 2/min refuses the 3rd call of the minute", async () => {
    const u = await userWithKey();
    expect((await sequence(u.token, 2)).map((r) => r.status)).toEqual([200, 200]);
    await setOverride(u.id, "2/min");
    const third = await create(u.token);
    expect(third.status, `a 3rd call within a minute under 2/min: ${third.text}; RateLimit ${third.headers.get("ratelimit")}`).toBe(429);
    expectRateLimited(third, "user");
  });

  it("clearing: after 2 calls under an override of 2/min, clearing it admits the 3rd call (the default is 5/min)", async () => {
    const v = await userWithKey();
    await setOverride(v.id, "2/min");
    expect((await sequence(v.token, 3)).map((r) => r.status)).toEqual([200, 200, 429]);
    await setOverride(v.id, null);
    const again = await create(v.token);
    expect(again.status, `2 calls in the last minute under the default 5/min: ${again.text}; RateLimit ${again.headers.get("ratelimit")}`).toBe(200);
    expect(remaining(again, "user")).toBe(2);
  });

  // An answer that decides nothing (a refusal for bad input) reads the buckets as they are: they
  // must be read as the next decision will count them, rescaled to the policy now in force.
  it("the RateLimit of an answer that decides nothing counts the calls made under the old policy", async () => {
    const u = await userWithKey();
    const invalid = () => svc.call("POST", "/api/handle/create", { token: u.token, json: { handle: "" } });
    expect((await sequence(u.token, 2)).map((r) => r.status)).toEqual([200, 200]); // under the default 5/min
    await setOverride(u.id, "2/min");
    const peeked = await invalid();
    expect(peeked.status).toBe(400);
    expect(readRateHeaders(peeked.headers).policies.get("user")).toEqual({ q: 2, w: 60 });
    expect(remaining(peeked, "user")).toBe(0); // and the next call is indeed refused
    expect((await create(u.token)).status).toBe(429);
    await setOverride(u.id, "100/min");
    const raised = await invalid();
    expect(remaining(raised, "user")).toBe(98); // 2 calls made: 98 of 100 left, whatever 2/min had made of them
    expect((await create(u.token)).status).toBe(200);
  });
});

describe("a refused call spends no quota", () => {
  it("refused by the key's bucket, it leaves the caller's own bucket as it was", async () => {
    const owner = await userWithKey();
    const g = await userWithKey(); // g also holds a key of their own
    const gr = await svc.call("POST", `/v1/keys/${owner.keyId}/grants`, { token: owner.token, json: { username: (await whoami(g.token)).username } });
    expect(gr.status, gr.text).toBe(201);

    // the owner spends 4 of the shared key's 8, g the other 4 (g has 1 of 5 left)
    expect((await sequence(owner.token, 4, owner.keyId)).map((r) => r.status)).toEqual([200, 200, 200, 200]);
    const mine = await sequence(g.token, 4, owner.keyId);
    expect(mine.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    expect(mine.map((r) => remaining(r, "key"))).toEqual([3, 2, 1, 0]);
    expect(remaining(mine[3]!, "user")).toBe(1);

    const before = creates();
    for (let i = 0; i < 3; i++) {
      const refused = await create(g.token, owner.keyId);
      expectRateLimited(refused, "key", 8);
      expect(remaining(refused, "user")).toBe(1);
      expect(remaining(refused, "key")).toBe(0);
    }
    expect(creates()).toBe(before);
    // g's last call of the minute passes on their own key: the refusals spent nothing of it
    const ok = await create(g.token, g.keyId);
    expect(ok.status, ok.text).toBe(200);
    expect(remaining(ok, "user")).toBe(0);
    expect(remaining(ok, "key")).toBe(7);
    // and now g's own bucket refuses, and that refusal spends nothing of g's key
    const refused = await create(g.token, g.keyId);
    expectRateLimited(refused, "user", 12);
    expect(remaining(refused, "key")).toBe(7);
    expect(creates()).toBe(before + 1);
  });

  it("a call refused by our own validation (400) spends nothing either", async () => {
    const u = await userWithKey();
    const first = await create(u.token);
    expect(remaining(first, "user")).toBe(4);
    const bad = await svc.call("POST", "/api/handle/create", { token: u.token, json: { handle: "no spaces allowed" } });
    expect(bad.status, bad.text).toBe(400);
    expect(bad.json.error).toBe("invalid_params");
    expect(remaining(bad, "user")).toBe(4);
    const next = await create(u.token);
    expect(remaining(next, "user")).toBe(3);
  });
});

describe("audit of refusals", () => {
  it("every refused call is one event with outcome rate_limited; the admitted ones are success", async () => {
    const u = await userWithKey();
    const rs = await sequence(u.token, 8);
    expect(rs.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
    const limited = await svc.call("GET", `/v1/audit?actor=${u.id}&outcome=rate_limited`, { token: svc.admin.token });
    expect(limited.status, limited.text).toBe(200);
    type Ev = {
      action: string;
      outcome: string;
      request_id: string;
      key_id: string | null;
      handle: string | null;
      upstream_status: number | null;
      detail: Record<string, unknown> | null;
    };
    const evs = limited.json.events as Ev[];
    expect(evs).toHaveLength(3);
    expect(new Set(evs.map((e) => e.request_id))).toEqual(new Set(rs.slice(5).map((r) => r.headers.get("x-request-id"))));
    for (const e of evs) {
      expect(e.action).toBe("handle.create");
      expect(e.outcome).toBe("rate_limited");
      expect(e.key_id).toBe(u.keyId);
      expect(e.upstream_status).toBeNull();
      // the refusal's reason is recorded with it: the user's bucket refused, as the 429 said
      expect(e.detail).toEqual({ error: "rate_limited", reason: "user" });
    }
    const ok = await svc.call("GET", `/v1/audit?actor=${u.id}&action=handle.create&outcome=success`, { token: svc.admin.token });
    expect(ok.json.events).toHaveLength(5);
    // the member sees their own refusals too
    const own = await svc.call("GET", `/v1/audit?outcome=rate_limited`, { token: u.token });
    expect(own.status).toBe(200);
    expect((own.json.events as Ev[]).filter((e) => e.action === "handle.create")).toHaveLength(3);
  });
});

async function whoami(token: string): Promise<{ id: string; username: string }> {
  const r = await svc.call("GET", "/v1/auth/me", { token });
  return r.json;
}

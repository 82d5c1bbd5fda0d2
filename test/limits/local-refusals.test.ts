// A flood refused cheaply (services/refusals.ts): after the database refuses a caller for their
// own limit, the instance refuses their next calls itself for a moment, without a rate-limit
// decision, each refusal still audited and answered as the contract says; never a call the
// database would have admitted; an admin's change of the caller's limits ends it.
import { describe, expect, it } from "vitest";
import type { Simulator } from "../../src/simulator/server.js";
import { expectErrorBody, type Service } from "../helpers/harness.js";
import { CREATE, newApiKey, twoInstancesForFile, parseSfList } from "../proxy/common.js";

let sim: Simulator;
let a: Service;
let b: Service;
twoInstancesForFile((t) => ({ sim, a, b } = t));

let n = 0;
const create = (svc: Service, token: string) => svc.call("POST", CREATE, { token, json: { handle: `lr-${process.pid}-${++n}` } });

/** A user with a key of their own and the given per-user create limit. */
async function userWithLimit(tag: string, limit: string) {
  const u = await a.addUser(a.admin.token, `lr-${tag}`);
  const apiKey = newApiKey();
  sim.addKey(apiKey, `${tag}@example.com`);
  expect((await a.call("POST", "/v1/keys", { token: u.token, json: { name: tag, api_key: apiKey } })).status).toBe(201);
  const p = await a.call("PATCH", `/v1/admin/users/${u.id}`, { token: a.admin.token, json: { rate_limits: { handle_create: limit } } });
  expect(p.status, p.text).toBe(200);
  return u;
}

/** A user at 1/min who made one call and was refused the next by the database (instance a). */
async function refusedByTheDatabase(tag: string) {
  const u = await userWithLimit(tag, "1/min");
  expect((await create(a, u.token)).status).toBe(200);
  expect((await create(a, u.token)).status).toBe(429);
  return u;
}

/** Rate-limit decisions made by instance svc so far (its proxy_admit groups' calls). */
async function decisions(svc: Service): Promise<number> {
  const m = await svc.deps.metrics.registry.getSingleMetric("db_group_size")!.get();
  return (m.values as { metricName?: string; labels: Record<string, unknown>; value: number }[])
    .filter((v) => v.metricName === "db_group_size_sum" && v.labels.statement === "proxy_admit")
    .reduce((s, v) => s + v.value, 0);
}

async function events(actorId: string) {
  const r = await a.call("GET", `/v1/audit?actor=${actorId}&action=handle.create&limit=500`, { token: a.admin.token });
  return r.json.events as { outcome: string; detail: { reason?: string } | null }[];
}

describe("refusing a caller over their limit without asking the database again", () => {
  it("after the database's refusal, the next calls are refused by the instance: 429 user, audited, nothing decided or sent", async () => {
    const u = await userWithLimit("flood", "1/min");
    expect((await create(a, u.token)).status).toBe(200);
    const refused = await create(a, u.token); // the database refuses
    expectErrorBody(refused, 429, "rate_limited");
    expect(refused.json.reason).toBe("user");
    const before = await decisions(a);
    const sent = sim.received.length;
    const flood = await Promise.all(Array.from({ length: 10 }, () => create(a, u.token)));
    for (const r of flood) {
      expectErrorBody(r, 429, "rate_limited");
      expect(r.json.reason).toBe("user");
      expect(Number(r.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(Number(r.headers.get("retry-after"))).toBeLessThanOrEqual(60);
      expect(r.json.retry_after).toBe(Number(r.headers.get("retry-after")));
      const user = parseSfList(r.headers.get("ratelimit")!).find((p) => p.name === "user")!;
      expect(user.params.r).toBe(0);
      expect(user.params.t).toBeGreaterThanOrEqual(1);
      expect(parseSfList(r.headers.get("ratelimit-policy")!).find((p) => p.name === "user")!.params).toMatchObject({ q: 1, w: 60 });
    }
    expect(await decisions(a), "calls refused in the window were decided by the database").toBe(before);
    expect(sim.received.length).toBe(sent);
    const ev = await events(u.id);
    expect(ev.filter((e) => e.outcome === "rate_limited").length).toBe(11);
    for (const e of ev.filter((x) => x.outcome === "rate_limited")) expect(e.detail?.reason).toBe("user");
    expect(ev.filter((e) => e.outcome === "success").length).toBe(1);
  });

  it("an admin raising the limit on this instance ends the window: the next call passes", async () => {
    const u = await refusedByTheDatabase("raise");
    const p = await a.call("PATCH", `/v1/admin/users/${u.id}`, { token: a.admin.token, json: { rate_limits: { handle_create: "100/min" } } });
    expect(p.status).toBe(200);
    const r = await create(a, u.token);
    expect(r.status, r.text).toBe(200);
  });

  it("raised on another instance, the window lasts at most a second", async () => {
    const u = await refusedByTheDatabase("other");
    const p = await b.call("PATCH", `/v1/admin/users/${u.id}`, { token: b.admin.token, json: { rate_limits: { handle_create: "100/min" } } });
    expect(p.status).toBe(200);
    await new Promise((r) => setTimeout(r, 1_100));
    const r = await create(a, u.token);
    expect(r.status, r.text).toBe(200);
  });

  it("never refuses a call the database would admit: a 2/s caller hammering gets every call it is due", async () => {
    // 2/s: one every 500 ms after a burst of 2. Calls every 50 ms for 2.2 s: the database admits
    // 2 + 4 = 6 (give or take one at the edges); local refusals must not take any of them away.
    const u = await userWithLimit("due", "2/s");
    const statuses: number[] = [];
    const until = Date.now() + 2_200;
    while (Date.now() < until) {
      statuses.push((await create(a, u.token)).status);
      await new Promise((r) => setTimeout(r, 50));
    }
    const admitted = statuses.filter((s) => s === 200).length;
    expect(admitted, statuses.join(",")).toBeGreaterThanOrEqual(5);
    expect(admitted, statuses.join(",")).toBeLessThanOrEqual(7);
  });
});

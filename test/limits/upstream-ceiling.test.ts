// The key's and the global bucket, at their defaults, stand between the team and upstream's own
// limits (120/min a key, 300/min an address, in fixed windows). A bucket that started full at its
// whole limit would let 100 + 99 calls of one key into a minute: upstream's 429, and the key paused
// for everyone. Their bursts are cut (config.ts, burstUnder: 19 and 46; test/unit/config.test.ts
// shows that no minute then holds more than upstream takes); here, that the database keeps them.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { startService, type CallResult, type Service } from "../helpers/harness.js";
import { expectRateLimited, freshHandle, randomApiKey, readRateHeaders, remaining, sleep, statusCounts, uniqueName } from "./common.js";

let sim: Simulator;
beforeAll(async () => {
  sim = await startSimulator({ perKeyLimit: 1_000_000, perAddressLimit: 1_000_000 });
});
afterAll(async () => {
  await sim?.close();
});

const creates = () => sim.received.filter((r) => r.path === "/api/handle/create").length;

async function userWithKey(svc: Service) {
  const u = await svc.addUser(svc.admin.token, uniqueName("c"));
  const apiKey = randomApiKey();
  sim.addKey(apiKey, "owner@example.com");
  const r = await svc.call("POST", "/v1/keys", { token: u.token, json: { name: uniqueName("k"), api_key: apiKey } });
  if (r.status !== 201) throw new Error(`store key: ${r.status} ${r.text}`);
  return u;
}

const create = (svc: Service, token: string): Promise<CallResult> => svc.call("POST", "/api/handle/create", { token, json: { handle: freshHandle() } });
const loginLimits = { perAccount: parseRatePolicy("10000/min")!, perAddress: parseRatePolicy("10000/min")! };

/** A service for one describe block, with users' limits out of the way and `env` on top. */
function serviceWith(env: Record<string, string>): () => Service {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ env: { HALTMAN_BASE_URL: sim.url, RATE_LIMIT_HANDLE_CREATE: "100000/min", ...env }, loginLimits });
  });
  afterAll(async () => {
    await svc?.close();
  });
  return () => svc;
}

describe("RATE_LIMIT_KEY at its default, 100/min", () => {
  const service = serviceWith({ RATE_LIMIT_GLOBAL: "100000/min" });

  it("lets 19 calls of one key go at once, then one every 0.6 s; the headers say so", async () => {
    const svc = service();
    const u = await userWithKey(svc);
    const before = creates();
    const t0 = performance.now();
    const first = await create(svc, u.token);
    expect(first.status, first.text).toBe(200);
    expect(remaining(first, "key")).toBe(18);
    expect(readRateHeaders(first.headers).policies.get("key")).toEqual({ q: 100, w: 60 });
    const rest = await Promise.all(Array.from({ length: 29 }, () => create(svc, u.token)));
    // 19, and one more for every 600 ms the calls took to be decided (a slow database)
    const refills = Math.floor((performance.now() - t0) / 600);
    const admitted = rest.filter((r) => r.status === 200).length + 1;
    expect(admitted).toBeGreaterThanOrEqual(19);
    expect(admitted).toBeLessThanOrEqual(19 + refills);
    expect(statusCounts(rest)[429]).toBe(30 - admitted);
    for (const r of rest.filter((x) => x.status === 429)) expectRateLimited(r, "key", 1);
    expect(creates() - before).toBe(admitted);
    // refused until the next 600 ms have passed
    await sleep(650);
    expect((await create(svc, u.token)).status).toBe(200);
  });
});

describe("RATE_LIMIT_GLOBAL at its default, 250/min", () => {
  const service = serviceWith({ RATE_LIMIT_KEY: "10/min" });

  it("lets 46 calls of the whole team go at once, whatever keys they use", async () => {
    const svc = service();
    const team = await Promise.all(Array.from({ length: 8 }, () => userWithKey(svc)));
    const before = creates();
    // 8 keys of 10 calls each: only the global bucket can refuse
    const t0 = performance.now();
    const answers = await Promise.all(team.flatMap((u) => Array.from({ length: 8 }, () => create(svc, u.token))));
    // 46, and one more for every 240 ms the calls took to be decided
    const refills = Math.floor((performance.now() - t0) / 240);
    const admitted = answers.filter((r) => r.status === 200).length;
    expect(admitted).toBeGreaterThanOrEqual(46);
    expect(admitted).toBeLessThanOrEqual(46 + refills);
    expect(admitted).toBeLessThan(64);
    for (const r of answers.filter((x) => x.status !== 200)) expectRateLimited(r, "global", 1);
    expect(creates() - before).toBe(admitted);
    expect(Math.min(...answers.filter((r) => r.status === 200).map((r) => remaining(r, "global")))).toBe(0);
  });
});

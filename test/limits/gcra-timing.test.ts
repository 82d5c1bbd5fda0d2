// Issue 5 in time: the limiter is a GCRA (no windows), so traffic at the allowed rate is never
// refused, traffic at twice the rate is admitted at the allowed rate, and an exhausted bucket
// hands out one call per emission interval T = period / count, never a second burst.
//
// Times are measured here, in the test process, as each call is sent (s) and answered (e); the
// service decides somewhere in between, on the database's clock. Every bound below is GCRA's own
// bound widened by that uncertainty, and by the longest pause of this process between two sends
// (a stalled process sends nothing while the bucket keeps refilling: a pause of p ms hands out
// p / T calls of credit, exactly as GCRA must). The bounds stay far from what a fixed-window or a
// sliding-log limiter would do (a whole `count` admitted at once at a window's edge).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { startService, type CallResult, type Service } from "../helpers/harness.js";
import { checkRateHeaders, expectRateLimited, freshHandle, randomApiKey, remaining, sleep, statusCounts, uniqueName } from "./common.js";

let svc: Service;
let sim: Simulator;

beforeAll(async () => {
  sim = await startSimulator({ perKeyLimit: 1_000_000, perAddressLimit: 1_000_000 });
  svc = await startService({
    env: {
      HALTMAN_BASE_URL: sim.url,
      LOG_LEVEL: "warn",
      RATE_LIMIT_HANDLE_CREATE: "10/s",
      RATE_LIMIT_KEY: "100000/min",
      RATE_LIMIT_GLOBAL: "100000/min",
    },
    loginLimits: { perAccount: parseRatePolicy("10000/min")!, perAddress: parseRatePolicy("10000/min")! },
  });
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

async function userWithKey() {
  const u = await svc.addUser(svc.admin.token, uniqueName("t"));
  const apiKey = randomApiKey();
  sim.addKey(apiKey, "owner@example.com");
  const r = await svc.call("POST", "/v1/keys", { token: u.token, json: { name: "k", api_key: apiKey } });
  if (r.status !== 201) throw new Error(`store key: ${r.status} ${r.text}`);
  return u;
}

type Shot = { s: number; e: number; r: CallResult };
const create = (token: string) => svc.call("POST", "/api/handle/create", { token, json: { handle: freshHandle() } });

/** One call every `intervalMs` for `durationMs` (a late slot is sent at once), each timed. */
async function stream(token: string, intervalMs: number, durationMs: number): Promise<Shot[]> {
  const shots: Promise<Shot>[] = [];
  const t0 = performance.now();
  for (let i = 0; i * intervalMs < durationMs; i++) {
    const wait = t0 + i * intervalMs - performance.now();
    if (wait > 0) await sleep(wait);
    const s = performance.now();
    shots.push(create(token).then((r) => ({ s, e: performance.now(), r })));
  }
  return Promise.all(shots);
}

/** The longest time between two consecutive sends. */
const maxGap = (shots: Shot[]) => shots.slice(1).reduce((m, x, i) => Math.max(m, x.s - shots[i]!.s), 0);

describe("GCRA over time (10/s per user, T = 100 ms)", () => {
  it("sustained traffic at the allowed rate is never refused: one call every 120 ms for 3 s", async () => {
    const u = await userWithKey();
    const shots = await stream(u.token, 120, 3_000);
    expect(shots.length).toBe(25);
    expect(statusCounts(shots.map((x) => x.r))).toEqual({ 200: 25 });
    for (const x of shots) checkRateHeaders(x.r, { user: { q: 10, w: 1 } }, ["user", "key", "global"]);
    // (Sends follow a schedule, a late one goes at once: by any time t at most t / 120 ms + 1 calls
    // were sent, while GCRA admits t / 100 ms + 10. However this process stalls, none is refused.)
    // The limit is real: the same user bursting 40 calls at once now is refused for some of them.
    const burst = await Promise.all(Array.from({ length: 40 }, () => create(u.token)));
    expect(burst.filter((r) => r.status === 429).length).toBeGreaterThan(0);
  });

  it("traffic at twice the rate is admitted at the allowed rate: about half of a call every 50 ms", async () => {
    const u = await userWithKey();
    const shots = await stream(u.token, 50, 3_000);
    expect(shots.length).toBe(60);
    for (const x of shots.filter((y) => y.r.status === 429)) expectRateLimited(x.r, "user", 1);
    // From the first refusal on the bucket is full and stays under pressure, so GCRA admits one
    // call per T of elapsed time, +-1 at either end. Elapsed time is bracketed by send/answer times.
    const first = shots.findIndex((x) => x.r.status === 429);
    expect(first).toBeGreaterThanOrEqual(9); // the bucket's 10 first (one may refill meanwhile)
    const tail = shots.slice(first);
    const admitted = tail.filter((x) => x.r.status === 200).length;
    const last = tail[tail.length - 1]!;
    // (At the first refusal the bucket holds more than period - T; at the end between
    // period - T - 50 ms and period. So admitted = elapsed / T + (between -1.5 and +1), elapsed on
    // the database's clock, which lies between our send and answer times. A pause of this process
    // longer than the period would waste refill time beyond the bucket's capacity: discounted.)
    // Unstalled, elapsed is ~2 s of the 3: about 20 of the ~40 calls sent meanwhile, half.
    const gap = maxGap(tail);
    const lo = Math.floor((last.s - tail[0]!.e - Math.max(0, gap - 900)) / 100) - 2;
    const hi = Math.ceil((last.e - tail[0]!.s) / 100) + 1;
    const detail = `${admitted} of ${tail.length} after the first refusal; GCRA allows ${lo}..${hi}; longest gap ${Math.round(gap)} ms`;
    expect(admitted, detail).toBeGreaterThanOrEqual(lo);
    expect(admitted, detail).toBeLessThanOrEqual(hi);
    // about half of what was sent in that time at 20/s (= elapsed / 50 ms)
    const sentRate = (tail.length - 1) / ((last.s - tail[0]!.s) / 50);
    if (gap < 200 && sentRate > 0.9) {
      expect(admitted / tail.length, detail).toBeGreaterThan(0.4);
      expect(admitted / tail.length, detail).toBeLessThan(0.6);
    }
  });
});

describe("no second burst at a window's edge (5/s for this user, T = 200 ms)", () => {
  it("after a burst exhausts it, admissions come one per T: never limit+1 in a period, never 3 in T", async () => {
    const u = await userWithKey();
    const p = await svc.call("PATCH", `/v1/admin/users/${u.id}`, { token: svc.admin.token, json: { rate_limits: { handle_create: "5/s" } } });
    expect(p.status, p.text).toBe(200);
    const T = 200;
    const LIMIT = 5;

    // the burst: 8 at once; 5 pass (6 if the 200 ms refill falls inside it), the rest are refused
    const b0 = performance.now();
    const burst = await Promise.all(Array.from({ length: 8 }, () => create(u.token)));
    const b1 = performance.now();
    const passed = burst.filter((r) => r.status === 200).length;
    expect(passed).toBeGreaterThanOrEqual(LIMIT);
    expect(passed).toBeLessThanOrEqual(LIMIT + Math.floor((b1 - b0) / T));
    for (const r of burst.filter((x) => x.status === 200)) expect(readUserPolicy(r)).toEqual({ q: 5, w: 1 });

    // then pressure: a call every 25 ms for 2.2 s (8 times the rate)
    const shots = await stream(u.token, 25, 2_200);
    const ok = shots.filter((x) => x.r.status === 200);
    for (const x of shots.filter((y) => y.r.status === 429)) expectRateLimited(x.r, "user", 1);
    // GCRA admits on a grid of T; an admission is late by at most the time between two sends
    // plus the time to its decision. A lateness of k·T may put k more calls in a window.
    const gap = maxGap(shots);
    const latency = Math.max(...shots.map((x) => x.e - x.s));
    const credit = Math.floor((gap + latency) / T);
    const detail = `admitted at ${ok.map((x) => Math.round(x.s - shots[0]!.s)).join(", ")} ms; longest gap ${Math.round(gap)} ms, latency ${Math.round(latency)} ms`;

    // 1. In any sliding period (1 s), at most limit + 1 admitted. A group of calls whose sends and
    //    answers all fall within [a, a + 1 s) was decided within a period of the database's clock.
    let worstPeriod = 0;
    let worstT = 0;
    for (const [i, x] of ok.entries()) {
      const inPeriod = ok.slice(i).filter((y) => y.e < x.s + 1_000).length;
      const inT = ok.slice(i).filter((y) => y.e < x.s + T).length;
      worstPeriod = Math.max(worstPeriod, inPeriod);
      worstT = Math.max(worstT, inT);
    }
    expect(worstPeriod, detail).toBeLessThanOrEqual(LIMIT + 1 + credit);
    // 2. The edge a window-based limiter has: `count` at once when its window turns. GCRA spaces
    //    admissions by T under pressure: at most 2 within any T.
    expect(worstT, detail).toBeLessThanOrEqual(2 + credit);
    // 3. In all, one per T of elapsed time (+-2 for the ends and the clocks).
    const last = shots[shots.length - 1]!;
    expect(ok.length, detail).toBeGreaterThanOrEqual(Math.floor((last.s - shots[0]!.e) / T) - 2);
    expect(ok.length, detail).toBeLessThanOrEqual(Math.ceil((last.e - shots[0]!.s) / T) + 2 + credit);
    // r never goes below 0 and says 0 on every refusal
    for (const x of shots) expect(remaining(x.r, "user")).toBeGreaterThanOrEqual(0);
    for (const x of shots.filter((y) => y.r.status === 429)) expect(remaining(x.r, "user")).toBe(0);
  });
});

function readUserPolicy(r: CallResult) {
  return checkRateHeaders(r, {}, ["user"]).policies.get("user");
}

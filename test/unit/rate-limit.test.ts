// services/rate-limit.ts decide() against a real database: exact admission counts, no quota spent
// by a refusal, exactness under concurrency, and a sane retry-after.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { rowsOf } from "../../src/db/client.js";
import { decide, type Bucket } from "../../src/services/rate-limit.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

const policy = (text: string) => parseRatePolicy(text)!;
const bucket = (text: string, name = "user"): Bucket => ({ key: `test:${name}:${randomUUID()}`, policy: policy(text), name });

async function sequential(buckets: Bucket[], n: number) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(await decide(database, buckets));
  return out;
}

describe("decide()", () => {
  it("a limit of 3/min admits exactly 3 of 10 sequential calls, the first three", async () => {
    const b = bucket("3/min");
    const results = await sequential([b], 10);
    expect(results.map((r) => r.allowed)).toEqual([true, true, true, false, false, false, false, false, false, false]);
    expect(results.slice(0, 3).map((r) => r.states[0]!.remaining)).toEqual([2, 1, 0]);
    for (const r of results.slice(3)) {
      expect(r.refusedBy).toBe("user");
      expect(r.states[0]!.remaining).toBe(0);
    }
  });

  it("separate buckets do not share quota", async () => {
    const x = bucket("2/min");
    const y = bucket("2/min");
    expect((await sequential([x], 3)).map((r) => r.allowed)).toEqual([true, true, false]);
    expect((await sequential([y], 3)).map((r) => r.allowed)).toEqual([true, true, false]);
  });

  it("an admitted multi-bucket call spends in every bucket", async () => {
    const a = bucket("5/min", "user");
    const g = bucket("5/min", "global");
    expect((await decide(database, [a, g])).allowed).toBe(true);
    // each bucket has 4 left
    expect((await sequential([a], 5)).map((r) => r.allowed)).toEqual([true, true, true, true, false]);
    expect((await sequential([g], 5)).map((r) => r.allowed)).toEqual([true, true, true, true, false]);
  });

  it("a refused multi-bucket call spends no quota in the bucket that would have admitted it", async () => {
    const tight = bucket("1/min", "key");
    const roomy = bucket("5/min", "user");
    expect((await decide(database, [tight])).allowed).toBe(true); // tight is now empty
    for (let i = 0; i < 4; i++) {
      const r = await decide(database, [roomy, tight]);
      expect(r.allowed).toBe(false);
      expect(r.refusedBy).toBe("key");
      expect(r.states.find((s) => s.name === "user")!.remaining).toBe(5);
    }
    // roomy still holds all five
    expect((await sequential([roomy], 6)).map((r) => r.allowed)).toEqual([true, true, true, true, true, false]);
  });

  it("a refusal on first use of the other bucket creates it full, not spent", async () => {
    const tight = bucket("1/min", "key");
    await decide(database, [tight]);
    const fresh = bucket("2/min", "user"); // never used: its row is created by this call
    expect((await decide(database, [fresh, tight])).allowed).toBe(false);
    expect((await sequential([fresh], 3)).map((r) => r.allowed)).toEqual([true, true, false]);
  });

  it("the bucket order given does not matter (rows are locked in key order)", async () => {
    const a = bucket("2/min", "a");
    const b = bucket("2/min", "b");
    expect((await decide(database, [b, a])).allowed).toBe(true);
    expect((await decide(database, [a, b])).allowed).toBe(true);
    const third = await decide(database, [b, a]);
    expect(third.allowed).toBe(false);
    expect(third.states.map((s) => s.name)).toEqual(["b", "a"]); // states follow the caller's order
  });

  it("50 concurrent calls on a fresh bucket of limit 10 admit exactly 10", async () => {
    const b = bucket("10/min");
    const results = await Promise.all(Array.from({ length: 50 }, () => decide(database, [b])));
    expect(results.filter((r) => r.allowed)).toHaveLength(10);
    expect((await decide(database, [b])).allowed).toBe(false);
  });

  it("50 concurrent calls on an existing bucket of limit 10 admit exactly 10", async () => {
    const b = bucket("11/min");
    expect((await decide(database, [b])).allowed).toBe(true); // the row exists, 10 left
    const results = await Promise.all(Array.from({ length: 50 }, () => decide(database, [b])));
    expect(results.filter((r) => r.allowed)).toHaveLength(10);
  });

  it("concurrent multi-bucket calls in opposite orders: exact, and no deadlock", async () => {
    const a = bucket("10/min", "a");
    const g = bucket("15/min", "g");
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) => decide(database, i % 2 === 0 ? [a, g] : [g, a])),
    );
    expect(results.filter((r) => r.allowed)).toHaveLength(10);
    // g spent exactly 10 of its 15
    expect((await sequential([g], 6)).map((r) => r.allowed)).toEqual([true, true, true, true, true, false]);
  });

  it("retryAfterS of a 10/min bucket just exhausted is between 1 and 60 (one slot: at most 6 s)", async () => {
    const b = bucket("10/min");
    const results = await sequential([b], 11);
    expect(results.slice(0, 10).every((r) => r.allowed && r.retryAfterS === 0)).toBe(true);
    const refused = results[10]!;
    expect(refused.allowed).toBe(false);
    expect(refused.retryAfterS).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfterS).toBeLessThanOrEqual(60);
    expect(refused.retryAfterS).toBeLessThanOrEqual(6);
    expect(Number.isInteger(refused.retryAfterS)).toBe(true);
  });

  it("retryAfterS comes from the bucket that refuses longest", async () => {
    const slow = bucket("1/h", "slow");
    const fast = bucket("1/s", "fast");
    await decide(database, [slow, fast]);
    const r = await decide(database, [fast, slow]);
    expect(r.allowed).toBe(false);
    expect(r.refusedBy).toBe("slow");
    expect(r.retryAfterS).toBeGreaterThan(3_000);
    expect(r.retryAfterS).toBeLessThanOrEqual(3_600);
  });

  it("a bucket refills over time (a 1/s bucket admits again after a second)", async () => {
    const b = bucket("1/s");
    expect((await sequential([b], 2)).map((r) => r.allowed)).toEqual([true, false]);
    await new Promise((r) => setTimeout(r, 1_100));
    expect((await decide(database, [b])).allowed).toBe(true);
  });

  it("no buckets: allowed, and nothing is written", async () => {
    const [before] = await rowsOf<{ n: number }>(database.db, sql`select count(*)::int as n from rate_limit_buckets`);
    const r = await decide(database, []);
    expect(r).toEqual({ allowed: true, retryAfterS: 0, retryAfterMs: 0, states: [] });
    const [after] = await rowsOf<{ n: number }>(database.db, sql`select count(*)::int as n from rate_limit_buckets`);
    expect(after!.n).toBe(before!.n);
  });
});

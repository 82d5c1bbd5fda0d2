// rate_limit_decide()'s arithmetic (migration 0009): a bucket's TAT is advanced by the emission
// interval T once per admitted call of a group. Kept in epoch milliseconds (~1.8e12, a float
// step of 2^-12 ms), a T that is not a multiple of the step (33/min: 1818.18... ms) rounded the
// same way at each addition, and a full burst asked in one group lost its last call to the
// tolerance (33/min admitted 32) and showed `remaining` one low. And the tolerance itself, a
// fixed microsecond, was whole calls for a policy of millions a second.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { createLimiter, decide, type Bucket } from "../../src/services/rate-limit.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

const bucketOf = (text: string): Bucket => ({ key: `user:${randomUUID()}:handle_create`, policy: parseRatePolicy(text)!, name: "user" });

describe("a full bucket's burst asked at once (grouped)", () => {
  it.each(["33/min", "46/min", "9/min", "10/min", "7/h"])("%s: exactly the burst admitted, `remaining` counting down by one", async (text) => {
    const b = bucketOf(text);
    const limiter = createLimiter(database);
    const results = await Promise.all(Array.from({ length: b.policy.limit + 5 }, () => limiter.decide([b])));
    const admitted = results.filter((r) => r.allowed);
    expect(admitted).toHaveLength(b.policy.limit);
    expect(admitted.map((r) => r.states[0]!.remaining).sort((x, y) => y - x)).toEqual(Array.from({ length: b.policy.limit }, (_, i) => b.policy.limit - 1 - i));
  });
});

describe("a very fast policy", () => {
  it.each(["1000000/s", "999999999/s"])("%s: a cost of the limit plus one is refused on a full bucket, the limit itself admitted", async (text) => {
    const b = bucketOf(text);
    expect((await decide(database, [b], { cost: b.policy.limit + 1 })).allowed).toBe(false);
    expect((await decide(database, [bucketOf(text)], { cost: b.policy.limit })).allowed).toBe(true);
  });
});

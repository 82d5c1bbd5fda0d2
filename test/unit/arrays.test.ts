// db/arrays.ts: arrays travel as one PostgreSQL array literal; every value must come back as it
// went, whatever it holds (quotes, backslashes, braces, commas, the word NULL, unicode).
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pgArray } from "../../src/db/arrays.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

describe("pgArray()", () => {
  it("round-trips awkward text through text[] (prepared statement)", async () => {
    const values = ['plain', 'with "quotes"', "back\\slash", "{braces}", "a,b", "NULL", "", " spaced ", "ünïcødé ✓", "'single'", null];
    const rows = await database.query<{ v: string | null; o: number }>("select v, o::int from unnest($1::text[]) with ordinality as t(v, o) order by o", [pgArray(values)]);
    expect(rows.map((r) => r.v)).toEqual(values);
  });

  it("numbers and booleans", async () => {
    // booleans compared in SQL: postgres.js reads a NULL element of boolean[] as false
    const [r] = await database.query<{ n: number[]; f: number[]; b: boolean }>("select $1::int[] as n, $2::float8[] as f, $3::boolean[] is not distinct from '{t,f,NULL}'::boolean[] as b", [
      pgArray([1, -2, 0]),
      pgArray([0.5, 1e-9, 1795434036308.25]),
      pgArray([true, false, null]),
    ]);
    expect(r!.n.map(Number)).toEqual([1, -2, 0]);
    expect(r!.f.map(Number)).toEqual([0.5, 1e-9, 1795434036308.25]);
    expect(r!.b).toBe(true);
  });

  it("refuses a number that is not finite", () => {
    expect(() => pgArray([Number.NaN])).toThrow();
    expect(() => pgArray([Number.POSITIVE_INFINITY])).toThrow();
  });

  it("is the same literal drizzle's own parameters accept", async () => {
    const rows = await database.db.execute(sql`select cardinality(${pgArray(["a", "b"])}::text[]) as n`);
    const n = Array.isArray(rows) ? rows[0].n : (rows as { rows: { n: number }[] }).rows[0]!.n;
    expect(Number(n)).toBe(2);
  });
});

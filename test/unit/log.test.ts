import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeError } from "../../src/log.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

describe("describeError", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await freshDatabase();
  });
  afterAll(() => db.drop());

  it("never carries a failed query's parameters, which drizzle puts in its message", async () => {
    const secret = "s3cret-parameter-value-0123456789";
    let caught: unknown;
    try {
      // A failing statement with a secret bound as a parameter (a unique violation on purpose).
      await db.db.execute(sql`select ${secret}::text, 1/0`);
    } catch (err) {
      caught = err;
    }
    expect(caught, "the query must fail for this test to mean anything").toBeInstanceOf(Error);
    expect(String((caught as Error).message) + String((caught as Error).stack)).toContain(secret); // drizzle's own text does
    const described = JSON.stringify(describeError(caught));
    expect(described).not.toContain(secret);
    expect(described).toMatch(/division by zero/);
  });
});

// Idempotency claims belong to the request that took them.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { claim, complete, release, requestHash } from "../../src/services/idempotency.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

describe("idempotency claims", () => {
  let db: TestDatabase;
  let userId: string;
  beforeAll(async () => {
    db = await freshDatabase();
    userId = randomUUID();
  });
  afterAll(() => db.drop());

  it("a request whose claim was taken over (presumed crashed) cannot complete or release its successor's", async () => {
    const hash = requestHash({ handle: "x" });
    const first = await claim(db.db, userId, "k1", hash, 70);
    expect(first.kind).toBe("claimed");
    expect((await claim(db.db, userId, "k1", hash, 70)).kind, "while the first is in flight").toBe("in_flight");
    // the first outlives the takeover window
    await db.db.execute(sql`update idempotency_keys set created_at = now() - interval '2 minutes'`);
    const second = await claim(db.db, userId, "k1", hash, 70);
    expect(second.kind).toBe("claimed");

    // the slow first request finishes: it must not touch the second's claim
    await complete(db.db, userId, "k1", (first as { token: string }).token, 200, '{"stale":true}');
    await release(db.db, userId, "k1", (first as { token: string }).token);
    const [row] = await rowsOf<{ state: string; body: string | null }>(db.db, sql`select state, body from idempotency_keys where key = 'k1'`);
    expect(row).toEqual({ state: "in_flight", body: null });

    // the second completes its own
    await complete(db.db, userId, "k1", (second as { token: string }).token, 200, '{"ok":true}');
    const replay = await claim(db.db, userId, "k1", hash, 70);
    expect(replay).toEqual({ kind: "replay", status: 200, body: '{"ok":true}' });
  });
});

// The housekeeping sweeps delete what no longer changes any decision, and nothing else.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { sweepIdempotencyKeys } from "../../src/services/idempotency.js";
import { sweepBuckets, sweepPauses } from "../../src/services/rate-limit.js";
import { sweepSessions } from "../../src/services/sessions.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

describe("housekeeping sweeps", () => {
  let db: TestDatabase;
  const keys = async (query: ReturnType<typeof sql>) => (await rowsOf<{ k: string }>(db.db, query)).map((r) => r.k).sort();
  beforeAll(async () => {
    db = await freshDatabase();
  });
  afterAll(() => db.drop());

  it("rate-limit buckets full for an hour go; others stay", async () => {
    await db.db.execute(sql`insert into rate_limit_buckets (key, tat) values ('old', now() - interval '2 hours'), ('recent', now() - interval '10 minutes'), ('busy', now() + interval '30 seconds')`);
    await sweepBuckets(db.db);
    expect(await keys(sql`select key as k from rate_limit_buckets`)).toEqual(["busy", "recent"]);
  });

  it("idempotency keys older than 24 h go; pauses over a minute past go", async () => {
    const u = randomUUID();
    await db.db.execute(sql`insert into idempotency_keys (user_id, key, request_hash, state, created_at) values
      (${u}, 'old', '\\x00', 'done', now() - interval '25 hours'), (${u}, 'new', '\\x00', 'done', now() - interval '23 hours')`);
    await db.db.execute(sql`insert into upstream_pauses (scope, until) values ('past', now() - interval '5 minutes'), ('active', now() + interval '30 seconds')`);
    await sweepIdempotencyKeys(db.db);
    await sweepPauses(db.db);
    expect(await keys(sql`select key as k from idempotency_keys`)).toEqual(["new"]);
    expect(await keys(sql`select scope as k from upstream_pauses`)).toEqual(["active"]);
  });

  it("sessions ended a week ago go with their refresh tokens; live ones and their tokens stay", async () => {
    const [u] = await rowsOf<{ id: string }>(db.db, sql`insert into users (username, password_hash, role) values ('sweepy', 'x', 'member') returning id`);
    const session = async (expires: string, revoked: string | null) =>
      (await rowsOf<{ id: string }>(db.db, sql`insert into sessions (user_id, expires_at, revoked_at)
        values (${u!.id}, now() + ${expires}::interval, ${revoked === null ? null : sql`now() + ${revoked}::interval`}) returning id`))[0]!.id;
    const live = await session("20 days", null);
    const expiredLongAgo = await session("-8 days", null);
    const revokedLongAgo = await session("20 days", "-8 days");
    const revokedYesterday = await session("20 days", "-1 day");
    const token = (sid: string, name: string, expires: string) =>
      db.db.execute(sql`insert into refresh_tokens (token_hash, session_id, expires_at) values (${Buffer.from(name)}, ${sid}, now() + ${expires}::interval)`);
    await token(live, "live-current", "20 days");
    await token(live, "live-spent-long-expired", "-3 days");
    await token(expiredLongAgo, "gone-with-session", "20 days");
    await sweepSessions(db.db);
    expect(await keys(sql`select id::text as k from sessions`)).toEqual([live, revokedYesterday].sort());
    expect(await keys(sql`select convert_from(token_hash, 'UTF8') as k from refresh_tokens`)).toEqual(["live-current"]);
    void revokedLongAgo;
  });
});

// The housekeeping sweeps delete what no longer changes any decision, and nothing else.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { maintainTables, type Maintained } from "../../src/db/maintenance.js";
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

// PGlite only: a server runs its own autovacuum, and the service leaves it to it (src/index.ts).
describe.skipIf(!!process.env.TEST_DATABASE_URL)("embedded maintenance: autovacuum's part, on PGlite", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await freshDatabase();
  });
  afterAll(() => db.drop());
  const tables = (done: Maintained[]) => done.map((d) => d.table);
  const auditPlan = async () =>
    (
      await rowsOf<{ "QUERY PLAN": string }>(
        db.db,
        sql`explain select id from audit_events where handle = 'h-big' order by at desc, seq desc limit 50`,
      )
    )
      .map((r) => r["QUERY PLAN"])
      .join("\n");

  it("analyzes every table once, then only what changed past autovacuum's threshold (50 + 10% of its rows)", async () => {
    const first = await maintainTables(db.db);
    expect(tables(first)).toEqual(expect.arrayContaining(["audit_events", "rate_limit_buckets", "users"]));
    expect(await maintainTables(db.db)).toEqual([]); // nothing changed since
    await db.db.execute(sql`insert into rate_limit_buckets (key, tat) select 'few-' || g, now() from generate_series(1, 40) g`);
    expect(await maintainTables(db.db)).toEqual([]); // 40 changes: under the threshold of 50
    await db.db.execute(sql`insert into rate_limit_buckets (key, tat) select 'more-' || g, now() from generate_series(1, 20) g`);
    expect(await maintainTables(db.db)).toEqual([{ table: "rate_limit_buckets", vacuum: false, analyze: true }]);
  });

  it("vacuums a table once 50 + 20% of its rows are dead", async () => {
    await db.db.execute(sql`insert into rate_limit_buckets (key, tat) select 'dead-' || g, now() from generate_series(1, 400) g`);
    await maintainTables(db.db);
    await db.db.execute(sql`delete from rate_limit_buckets where key like 'dead-%' and right(key, 1) in ('1', '2', '3', '4', '5')`); // 200 dead of 460 (the threshold: 50 + 92)
    expect(await maintainTables(db.db)).toEqual([{ table: "rate_limit_buckets", vacuum: true, analyze: true }]);
  });

  it("so the audit log's filters walk an index in order instead of reading and sorting every match", async () => {
    await db.db.execute(sql`insert into audit_events (id, request_id, action, outcome, handle, at)
      select gen_random_uuid(), 'r' || g, 'handle.create', 'success', case when g % 3 = 0 then 'h-big' else 'h-' || g end, now() - g * interval '1 second'
      from generate_series(1, 20000) g`);
    expect(await auditPlan()).toMatch(/\bSort\b/); // planned as if the table were as small as when last analyzed
    expect(tables(await maintainTables(db.db))).toContain("audit_events");
    expect(await auditPlan()).not.toMatch(/\bSort\b/);
  });
});

// Migration 0010 on a database that already holds outcome rows: the migration itself only adds
// columns and triggers; the indexes and the rows' positions come after it (db/online.ts), while
// the outcome filter stays right throughout; the table stays append-only but for that one change.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { readMigrationFiles } from "drizzle-orm/migrator";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openPglite, openPostgres, rowsOf, type Database } from "../../src/db/client.js";
import { migrate, migrationsFolder } from "../../src/db/migrate.js";
import { ONLINE_INDEXES, runOnlineSteps } from "../../src/db/online.js";
import { decodeCursor, listAuditEvents } from "../../src/services/audit.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

const admin = { id: randomUUID(), role: "admin" as const };
const refusal = (q: Promise<unknown>) => q.then(() => "done", (err: Error & { cause?: Error }) => err.cause?.message ?? err.message);

describe("migration 0010 over outcome rows written before it (on PGlite)", () => {
  let database: Database;
  const before = { old: randomUUID(), older: randomUUID() };
  let placedLater: string;
  beforeAll(async () => {
    database = await openPglite(undefined);
  });
  afterAll(() => database.close());

  it("adds no index and places no row itself, yet the outcome filter finds the rows written before, in order", async () => {
    const all = readMigrationFiles({ migrationsFolder: migrationsFolder() });
    const i = all.findIndex((m) => m.sql.some((s) => s.includes("audit_outcome_event_position")));
    expect(i).toBe(10);
    // The database as the version before left it: 0000 to 0009 applied, two calls on record.
    await database.db.execute(sql`create schema drizzle`);
    await database.db.execute(sql`create table drizzle.__drizzle_migrations (id serial primary key, hash text not null, created_at bigint)`);
    for (const m of all.slice(0, i)) {
      for (const s of m.sql) if (s.trim()) await database.db.execute(sql.raw(s));
      await database.db.execute(sql`insert into drizzle.__drizzle_migrations (hash, created_at) values (${m.hash}, ${m.folderMillis})`);
    }
    await database.db.execute(sql`insert into audit_events (id, request_id, action, at) values
      (${before.older}, 'r1', 'handle.create', '2025-05-05T05:05:05.555555Z'), (${before.old}, 'r2', 'handle.create', '2025-05-06T00:00:00Z')`);
    await database.db.execute(sql`insert into audit_event_outcomes (event_id, outcome, upstream_status) values
      (${before.older}, 'upstream_refused', 409), (${before.old}, 'upstream_refused', 409)`);

    expect((await migrate(database.db)).applied).toBe(all.length - i);

    const [unplaced] = await rowsOf<{ n: number }>(database.db, sql`select count(*)::int as n from audit_event_outcomes where event_at is null`);
    expect(unplaced!.n).toBe(2);
    const indexes = await rowsOf<{ relname: string }>(database.db, sql`select relname from pg_class where relname in ${ONLINE_INDEXES.map((x) => x.name)}`);
    expect(indexes).toEqual([]);
    // A call after the migration, between the two in time order: placed by the trigger at once.
    placedLater = randomUUID();
    await database.db.execute(sql`insert into audit_events (id, request_id, action, at) values (${placedLater}, 'r3', 'handle.create', '2025-05-05T12:00:00Z')`);
    await database.db.execute(sql`insert into audit_event_outcomes (event_id, outcome) values (${placedLater}, 'upstream_refused')`);
    const pageOf = (limit: number, cursor?: string) => listAuditEvents(database.db, admin, { outcome: "upstream_refused" }, limit, cursor ? decodeCursor(cursor) : undefined);
    expect((await pageOf(10)).events.map((e) => e.id)).toEqual([before.old, placedLater, before.older]);
    const first = await pageOf(1);
    const second = await pageOf(1, first.nextCursor!);
    const third = await pageOf(1, second.nextCursor!);
    expect([first, second, third].flatMap((p) => p.events.map((e) => e.id))).toEqual([before.old, placedLater, before.older]);
    expect(third.nextCursor).toBeNull();
  });

  it("the online steps build the indexes and place the rows; run again, they have nothing to do", async () => {
    const report = await runOnlineSteps(database);
    expect(report).toEqual({ ran: true, built: ONLINE_INDEXES.map((x) => x.name), placed: 2 });
    const [row] = await rowsOf<{ n: number }>(
      database.db,
      sql`select count(*)::int as n from audit_event_outcomes o join audit_events e on e.id = o.event_id where o.event_at = e.at and o.event_seq = e.seq`,
    );
    expect(row!.n).toBe(3);
    expect((await listAuditEvents(database.db, admin, { outcome: "upstream_refused" }, 10)).events.map((e) => e.id)).toEqual([before.old, placedLater, before.older]);
    expect(await runOnlineSteps(database)).toEqual({ ran: true, built: [], placed: 0 });
  });

  it("an index a killed build left invalid is built again", async () => {
    const name = ONLINE_INDEXES[1]!.name;
    await database.db.execute(sql`update pg_index set indisvalid = false where indexrelid = ${name}::regclass`);
    expect(await runOnlineSteps(database)).toEqual({ ran: true, built: [name], placed: 0 });
    const [state] = await rowsOf<{ valid: boolean }>(database.db, sql`select indisvalid as valid from pg_index where indexrelid = ${name}::regclass`);
    expect(state!.valid).toBe(true);
  });

  it("outcome rows stay append-only: only a missing position may be filled in, and only with the event's own", async () => {
    const fresh = randomUUID();
    await database.db.execute(sql`insert into audit_events (id, request_id, action) values (${fresh}, 'r4', 'handle.create')`);
    await database.db.execute(sql`insert into audit_event_outcomes (event_id, outcome) values (${fresh}, 'success')`);
    expect(await refusal(database.db.execute(sql`update audit_event_outcomes set outcome = 'denied' where event_id = ${before.old}`))).toMatch(/append-only/);
    expect(await refusal(database.db.execute(sql`update audit_event_outcomes set event_at = now() where event_id = ${before.old}`))).toMatch(/append-only/);
    expect(await refusal(database.db.execute(sql`delete from audit_event_outcomes where event_id = ${fresh}`))).toMatch(/append-only/);
    // A row without its position (an outcome restored before its event): given a wrong one, refused.
    const orphan = randomUUID();
    await database.db.execute(sql`insert into audit_event_outcomes (event_id, outcome) values (${orphan}, 'success')`);
    expect(await refusal(database.db.execute(sql`update audit_event_outcomes set event_at = now(), event_seq = 1 where event_id = ${orphan}`))).toMatch(/append-only/);
    expect(await refusal(database.db.execute(sql`update audit_event_outcomes set event_at = e.at, event_seq = e.seq, detail = '{}' from audit_events e where e.id = ${before.old} and event_id = ${orphan}`))).toMatch(/append-only/);
    expect((await runOnlineSteps(database)).placed, "an outcome without its event is left, not looped on").toBe(0);
  });
});

describe("two instances starting together", () => {
  let database: TestDatabase;
  beforeAll(async () => {
    database = await freshDatabase();
  });
  afterAll(() => database.drop());

  it.runIf(!!process.env.TEST_DATABASE_URL)("run the online steps once: the second finds the first at it and leaves them (skipped on PGlite: needs TEST_DATABASE_URL)", async () => {
    const other = postgres(database.url!, { max: 1, onnotice: () => {} });
    try {
      const reserved = await other.reserve();
      await reserved`select pg_advisory_lock(${0x4841_4c55})`;
      expect(await runOnlineSteps(database)).toEqual({ ran: false, built: [], placed: 0 });
      await reserved`select pg_advisory_unlock(${0x4841_4c55})`;
      reserved.release();
      expect((await runOnlineSteps(database)).ran).toBe(true);
    } finally {
      await other.end();
    }
  });

  it.runIf(!!process.env.TEST_DATABASE_URL)("build and place whatever statement or lock timeout the database sets (skipped on PGlite: needs TEST_DATABASE_URL)", async () => {
    const db = database.db;
    await db.execute(sql`insert into audit_events (id, request_id, action) select gen_random_uuid(), 'r', 'handle.create' from generate_series(1, 100000)`);
    // rows as the version before wrote them, without their position
    await db.execute(sql`alter table audit_event_outcomes disable trigger audit_event_outcomes_event_position`);
    await db.execute(sql`insert into audit_event_outcomes (event_id, outcome) select id, 'success' from audit_events where request_id = 'r'`);
    await db.execute(sql`alter table audit_event_outcomes enable trigger audit_event_outcomes_event_position`);
    await db.execute(sql`drop index audit_events_domain_at_idx`); // the first built: while the older transaction below is open
    const [{ name }] = (await rowsOf<{ name: string }>(db, sql`select current_database() as name`)) as [{ name: string }];
    await db.execute(sql.raw(`alter database "${name}" set statement_timeout = '20ms'`));
    await db.execute(sql.raw(`alter database "${name}" set lock_timeout = '20ms'`));
    try {
      const instance = await openPostgres(database.url!, { max: 1 }); // a new connection: it has the database's settings
      try {
        const [setting] = await rowsOf<{ t: string }>(instance.db, sql`select current_setting('statement_timeout') as t`);
        expect(setting!.t, "the control: the pool has it").toBe("20ms");
        // An older transaction still open: a concurrent build waits for it, as lock_timeout would not.
        const reader = postgres(database.url!, { max: 1, onnotice: () => {}, connection: { statement_timeout: "0" } as never });
        let opened!: () => void;
        const open = new Promise<void>((r) => (opened = r));
        const held = reader.begin("isolation level repeatable read", async (tx) => {
          await tx`select 1 from audit_events limit 1`;
          opened();
          await new Promise((r) => setTimeout(r, 300));
        });
        await open;
        try {
          expect(await runOnlineSteps(instance)).toEqual({ ran: true, built: ["audit_events_domain_at_idx"], placed: 100_000 });
        } finally {
          await held;
          await reader.end();
        }
      } finally {
        await instance.close();
      }
      const [state] = await rowsOf<{ valid: boolean }>(db, sql`select indisvalid as valid from pg_index where indexrelid = 'audit_events_domain_at_idx'::regclass`);
      expect(state!.valid).toBe(true);
    } finally {
      await db.execute(sql.raw(`alter database "${name}" reset statement_timeout`));
      await db.execute(sql.raw(`alter database "${name}" reset lock_timeout`));
    }
  }, 60_000);
});

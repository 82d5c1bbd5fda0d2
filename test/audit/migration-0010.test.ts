// Migration 0010 on a database that already holds outcome rows: each is given its event's
// position, the append-only triggers still hold afterwards, and the outcome filter finds them.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { readMigrationFiles } from "drizzle-orm/migrator";
import { afterAll, beforeAll, expect, it } from "vitest";
import { openPglite, rowsOf, type Database } from "../../src/db/client.js";
import { migrate, migrationsFolder } from "../../src/db/migrate.js";
import { listAuditEvents } from "../../src/services/audit.js";

let database: Database;
beforeAll(async () => {
  database = await openPglite(undefined);
});
afterAll(() => database.close());

it("fills in the position of the outcome rows written before it, and keeps them append-only (on PGlite)", async () => {
  const all = readMigrationFiles({ migrationsFolder: migrationsFolder() });
  const i = all.findIndex((m) => m.sql.some((s) => s.includes("audit_outcome_event_position")));
  expect(i).toBe(10);
  // The database as the version before left it: 0000 to 0009 applied, and a call on record.
  await database.db.execute(sql`create schema drizzle`);
  await database.db.execute(sql`create table drizzle.__drizzle_migrations (id serial primary key, hash text not null, created_at bigint)`);
  for (const m of all.slice(0, i)) {
    for (const s of m.sql) if (s.trim()) await database.db.execute(sql.raw(s));
    await database.db.execute(sql`insert into drizzle.__drizzle_migrations (hash, created_at) values (${m.hash}, ${m.folderMillis})`);
  }
  const event = randomUUID();
  await database.db.execute(sql`insert into audit_events (id, request_id, action, at) values (${event}, 'before-0010', 'handle.create', '2025-05-05T05:05:05.555555Z')`);
  await database.db.execute(sql`insert into audit_event_outcomes (event_id, outcome, upstream_status) values (${event}, 'upstream_refused', 409)`);

  expect((await migrate(database.db)).applied).toBe(all.length - i);

  const [row] = await rowsOf<{ same: boolean }>(
    database.db,
    sql`select (o.event_at = e.at and o.event_seq = e.seq) as same from audit_event_outcomes o join audit_events e on e.id = o.event_id`,
  );
  expect(row!.same).toBe(true);
  const found = await listAuditEvents(database.db, { id: randomUUID(), role: "admin" }, { outcome: "upstream_refused" }, 10);
  expect(found.events.map((e) => e.id)).toEqual([event]);
  const refusal = (q: Promise<unknown>) => q.then(() => "done", (err: Error & { cause?: Error }) => err.cause?.message ?? err.message);
  expect(await refusal(database.db.execute(sql`update audit_event_outcomes set outcome = 'success'`))).toMatch(/append-only/);
  expect(await refusal(database.db.execute(sql`delete from audit_event_outcomes`))).toMatch(/append-only/);
});

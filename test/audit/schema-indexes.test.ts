// Every index schema.ts declares exists, valid, once the migrations and the online steps have run
// (db/online.ts builds some after the migrations: a name missing from either would go unnoticed).
import { getTableConfig, PgTable } from "drizzle-orm/pg-core";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import * as schema from "../../src/db/schema.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

it("every index of schema.ts is in the database, valid, with the table, columns and predicate it declares", async () => {
  const declared = (Object.values(schema) as unknown[])
    .filter((t): t is PgTable => t instanceof PgTable)
    .flatMap((t) => {
      const c = getTableConfig(t);
      return c.indexes.map((i) => ({ table: c.name, name: i.config.name!, columns: i.config.columns.map((col) => (col as { name: string }).name), partial: i.config.where !== undefined }));
    });
  expect(declared.length).toBeGreaterThan(10);
  const present = await rowsOf<{ name: string; table: string; valid: boolean; columns: string[]; partial: boolean }>(
    database.db,
    sql`select c.relname as name, t.relname as "table", i.indisvalid as valid, i.indpred is not null as partial,
          array(select a.attname::text from unnest(i.indkey) with ordinality as k(n, o) join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n order by k.o) as columns
        from pg_index i join pg_class c on c.oid = i.indexrelid join pg_class t on t.oid = i.indrelid
        where t.relnamespace = 'public'::regnamespace`,
  );
  const byName = new Map(present.map((p) => [p.name, p]));
  for (const d of declared) {
    expect(byName.get(d.name), d.name).toMatchObject({ table: d.table, valid: true, columns: d.columns, partial: d.partial });
  }
});

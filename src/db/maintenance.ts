// Embedded PostgreSQL (PGlite) runs no autovacuum: without it the planner never learns how big a
// table is, and plans every query for a table of a few rows. The audit log's filters then read
// every matching row and sort them (a bitmap scan and a sort, not the index in order), page after
// page. The service does autovacuum's part itself, with autovacuum's default thresholds: ANALYZE
// a table once 50 + 10% of its rows have changed since the last one, VACUUM it once 50 + 20% of
// them are dead. A PostgreSQL server has its own autovacuum; this is not run there.
import { sql } from "drizzle-orm";
import { rowsOf, type Db } from "./client.js";

export type Maintained = { table: string; vacuum: boolean; analyze: boolean };

/** Vacuums and analyzes the public tables that need it; returns what it did. */
export async function maintainTables(ex: Db): Promise<Maintained[]> {
  // The counts this reads are flushed when a session goes idle, which PGlite's one session never
  // does between statements: ask for the flush, let one statement end, and read them afresh.
  await ex.execute(sql`select pg_stat_force_next_flush()`);
  await ex.execute(sql`select pg_stat_clear_snapshot()`);
  const due = await rowsOf<{ table: string; vacuum: boolean; analyze: boolean }>(
    ex,
    sql`select s.relname as "table",
          s.n_dead_tup > 50 + 0.2 * greatest(c.reltuples, 0) as vacuum,
          (s.last_analyze is null and s.last_autoanalyze is null) or s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0) as analyze
        from pg_stat_user_tables s join pg_class c on c.oid = s.relid
        where s.schemaname = 'public'
        order by s.relname`,
  );
  const done: Maintained[] = [];
  for (const t of due) {
    if (!t.vacuum && !t.analyze) continue;
    // Outside a transaction (VACUUM refuses one); one table at a time, so each holds the
    // embedded database's one connection briefly.
    await ex.execute(sql`${sql.raw(t.vacuum ? "vacuum (analyze)" : "analyze")} ${sql.identifier(t.table)}`);
    done.push({ table: t.table, vacuum: t.vacuum, analyze: true });
  }
  return done;
}

// Applies drizzle-kit's migrations from drizzle/, in one transaction under an advisory lock, so
// that several instances starting together migrate once. The bookkeeping table is drizzle's own
// (drizzle.__drizzle_migrations), so drizzle-kit and this agree on what has run.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { readMigrationFiles, type MigrationMeta } from "drizzle-orm/migrator";
import { rowsOf, type Db } from "./client.js";

/** drizzle/ at the project root, found from this file whether it runs from src/ or dist/. */
export function migrationsFolder(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, "drizzle");
    if (existsSync(join(candidate, "meta", "_journal.json"))) return candidate;
    dir = dirname(dir);
  }
  throw new Error("migrations folder drizzle/ not found");
}

let cached: MigrationMeta[] | undefined;
function migrations(): MigrationMeta[] {
  cached ??= readMigrationFiles({ migrationsFolder: migrationsFolder() });
  return cached;
}

const LOCK_ID = 0x4841_4c54; // "HALT"

export async function migrate(db: Db): Promise<{ applied: number }> {
  const all = migrations();
  return db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${LOCK_ID})`);
    await tx.execute(sql`create schema if not exists drizzle`);
    await tx.execute(sql`create table if not exists drizzle.__drizzle_migrations (
      id serial primary key, hash text not null, created_at bigint)`);
    const done = await rowsOf<{ created_at: string | number }>(
      tx,
      sql`select created_at from drizzle.__drizzle_migrations order by created_at desc limit 1`,
    );
    const last = done[0] ? Number(done[0].created_at) : -1;
    let applied = 0;
    for (const m of all) {
      if (m.folderMillis <= last) continue;
      for (const statement of m.sql) {
        if (statement.trim()) await tx.execute(sql.raw(statement));
      }
      await tx.execute(
        sql`insert into drizzle.__drizzle_migrations (hash, created_at) values (${m.hash}, ${m.folderMillis})`,
      );
      applied++;
    }
    return { applied };
  });
}

/** True when the database answers and holds every migration this code knows. */
export async function isMigrated(db: Db): Promise<boolean> {
  const all = migrations();
  const latest = all[all.length - 1];
  if (!latest) return true;
  const rows = await rowsOf<{ n: number }>(
    db,
    sql`select count(*)::int as n from drizzle.__drizzle_migrations where created_at >= ${latest.folderMillis}`,
  );
  return (rows[0]?.n ?? 0) > 0;
}

// A scratch database on the PostgreSQL server the benchmarks measure: DATABASE_URL, falling back
// to TEST_DATABASE_URL. Created fresh and migrated, dropped afterwards.
import { sql } from "drizzle-orm";
import { openPostgres, type Database } from "../src/db/client.js";
import { migrate } from "../src/db/migrate.js";

export function serverUrl(): string {
  const url = process.env.DATABASE_URL || process.env.TEST_DATABASE_URL;
  if (!url) {
    process.stderr.write("set DATABASE_URL (or TEST_DATABASE_URL) to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres\n");
    process.exit(2);
  }
  return url;
}

export async function scratchDatabase(tag: string, poolMax = 10): Promise<{ database: Database; url: string; drop(): Promise<void> }> {
  const base = new URL(serverUrl());
  const name = `hbff_bench_${tag}_${process.pid}`;
  const adminUrl = new URL(base);
  adminUrl.pathname = "/postgres";
  const admin = await openPostgres(adminUrl.toString(), { max: 1 });
  await admin.db.execute(sql.raw(`drop database if exists "${name}" with (force)`));
  await admin.db.execute(sql.raw(`create database "${name}"`));
  const url = new URL(base);
  url.pathname = `/${name}`;
  const database = await openPostgres(url.toString(), { max: poolMax });
  await migrate(database.db);
  return {
    database,
    url: url.toString(),
    async drop() {
      await database.close();
      await admin.db.execute(sql.raw(`drop database if exists "${name}" with (force)`));
      await admin.close();
    },
  };
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

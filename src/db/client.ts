// One schema, two drivers: embedded PGlite (DATA_DIR) by default, postgres.js with DATABASE_URL.
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import type { ExtractTablesWithRelations, SQL } from "drizzle-orm";
import type { PgDatabase, PgQueryResultHKT, PgTransaction } from "drizzle-orm/pg-core";
import { lockDataDir } from "./data-dir-lock.js";
import * as schema from "./schema.js";

type Schema = typeof schema;
export type Db = PgDatabase<PgQueryResultHKT, Schema>;
export type Tx = PgTransaction<PgQueryResultHKT, Schema, ExtractTablesWithRelations<Schema>>;
/** Anything a query can run on: the pool or an open transaction. */
export type Executor = Db | Tx;

/** A parameter of a raw statement: arrays travel as one text literal (see arrays.ts). */
export type SqlParam = string | number | boolean | null;

/**
 * A constant SQL text with $1… parameters, run as a named prepared statement: parsed and planned
 * once per connection, then one round trip per execution. (drizzle runs its queries unprepared on
 * postgres.js: each one is parsed and planned again, after a describe round trip of its own.) For
 * the hot path's grouped statements only, whose texts are a fixed set: a text made per call would
 * leave a prepared statement behind on every connection.
 */
export type RawQuery = <T>(text: string, params: readonly SqlParam[]) => Promise<T[]>;

export type Database = {
  readonly db: Db;
  readonly query: RawQuery;
  /**
   * RawQuery on a connection of its own, for one kind of grouped statement: the same server
   * backend every time, with that kind's statements pipelined on it. (postgres.js hands out its
   * idle connections round-robin, so a lone statement would go to the backend idle the longest,
   * whose caches are coldest; a lane keeps its backends warm.) `connections` (1 by default) of its
   * own a name, besides the pool's (instances sharing a Database share its lanes), opened at first
   * use and reconnected as the pool's are.
   */
  lane(name: string, connections?: number): RawQuery;
  readonly kind: "pglite" | "postgres";
  /** the most connections this instance opens: the pool's, the lanes' and a session's while one runs (1 for PGlite, which is one process) */
  readonly poolMax: number;
  /** connections of this instance, by state (active, idle…), for /metrics */
  poolConnections(): Promise<Record<string, number>>;
  /**
   * `fn`'s statements on one session of their own, outside any transaction, for as long as it
   * runs: for a session-level advisory lock and for statements no transaction may hold
   * (`create index concurrently`). No statement or lock timeout there, whatever the role's.
   */
  session<T>(fn: (q: RawQuery) => Promise<T>): Promise<T>;
  close(): Promise<void>;
};

/** Rows of a raw `db.execute()`, whatever the driver (postgres.js: an array; PGlite: `{rows}`). */
export async function rowsOf<T>(ex: Executor, query: SQL): Promise<T[]> {
  const r = (await ex.execute(query)) as unknown;
  return (Array.isArray(r) ? r : (r as { rows: T[] }).rows) as T[];
}

export async function openPostgres(url: string, opts: { max?: number } = {}): Promise<Database> {
  const { default: postgres } = await import("postgres");
  const { drizzle } = await import("drizzle-orm/postgres-js");
  const max = opts.max ?? 10;
  const appName = `haltman-bff:${randomUUID().slice(0, 8)}`;
  const options = {
    idle_timeout: 30,
    connect_timeout: 10,
    // postgres.js hands int8 back as strings: keep them numbers (our int8 are counters and ids < 2^53).
    types: { bigint: postgres.BigInt },
    transform: { undefined: null },
    onnotice: () => {},
    connection: { application_name: appName } as Record<string, string>,
  };
  const client = postgres(url, { ...options, max });
  const db = drizzle(client, { schema }) as unknown as Db;
  const prepared = (c: typeof client): RawQuery => <T>(text: string, params: readonly SqlParam[]) =>
    c.unsafe(text, params as SqlParam[], { prepare: true }) as unknown as Promise<T[]>;
  // A lane is a client of its own (postgres.js reconnects it as it does the pool's; its
  // reserve() was tried and left a reserved connection hanging when the server dropped it).
  const lanes = new Map<string, typeof client>();
  let laneConnections = 0;
  let sessions = 0;
  return {
    db,
    query: prepared(client),
    lane(name, connections = 1) {
      let lane = lanes.get(name);
      if (!lane) {
        lane = postgres(url, {
          ...options,
          max: connections,
          connection: {
            ...options.connection,
            // Generic plans for the grouped statements (and PL/pgSQL's inside them): they take
            // arrays, whose custom plans PostgreSQL would otherwise re-make on every execution
            // (they look cheaper than a generic plan that assumes 100 elements). Only here: the
            // pool's ad hoc queries (audit listings on skewed columns) keep their custom plans.
            plan_cache_mode: "force_generic_plan",
            // A grouped statement stuck (a lock held elsewhere, a connection gone quiet) fails
            // its group with 503 rather than holding every call of its kind behind it.
            statement_timeout: 5000,
          },
        });
        lanes.set(name, lane);
        laneConnections += connections;
      }
      return prepared(lane);
    },
    kind: "postgres",
    // the pool's, the lanes' and a session's while one runs (pg_stat_activity, below, counts them all)
    get poolMax() {
      return max + laneConnections + sessions;
    },
    // postgres.js keeps no public pool statistics; the server knows this instance's connections.
    poolConnections: async () => {
      const rows = await client<{ state: string | null; n: number }[]>`
        select state, count(*)::int as n from pg_stat_activity where application_name = ${appName} group by state`;
      return Object.fromEntries(rows.map((r) => [r.state ?? "unknown", r.n]));
    },
    // A client of one connection, as a lane is (not the pool's reserve(): see above), with the
    // timeouts a role or the database may set turned off at its start (startup parameters win
    // over both: an index build takes as long as the table needs), and kept as long as the run
    // (postgres.js would replace it after 30-60 min by default, and the advisory lock with it).
    session: async (fn) => {
      const one = postgres(url, {
        ...options,
        max: 1,
        max_lifetime: null,
        connection: { ...options.connection, statement_timeout: "0", lock_timeout: "0" } as Record<string, string>, // ("0" as text: postgres.js leaves out a number 0)
      });
      sessions++;
      try {
        return await fn(<T>(text: string, params: readonly SqlParam[]) => one.unsafe(text, params as SqlParam[]) as unknown as Promise<T[]>);
      } finally {
        sessions--;
        await one.end({ timeout: 5 });
      }
    },
    close: async () => {
      await Promise.all([client.end({ timeout: 5 }), ...[...lanes.values()].map((l) => l.end({ timeout: 5 }))]);
    },
  };
}

export async function openPglite(dataDir: string | undefined, opts: { loadDataDir?: Blob } = {}): Promise<Database> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  let dir: string | undefined;
  let lock: { release(): void } | undefined;
  if (dataDir !== undefined) {
    mkdirSync(resolve(dataDir), { recursive: true, mode: 0o700 });
    lock = lockDataDir(resolve(dataDir)); // one process at a time (data-dir-lock.ts)
    dir = resolve(dataDir, "pglite");
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      lock.release();
      throw err;
    }
  }
  const client = await PGlite.create({ ...(dir ? { dataDir: dir } : {}), ...(opts.loadDataDir ? { loadDataDir: opts.loadDataDir } : {}) }).catch((err: unknown) => {
    lock?.release();
    throw err;
  });
  const db = drizzle(client, { schema }) as unknown as Db;
  const query = async <T>(text: string, params: readonly SqlParam[]) => (await client.query<T>(text, params as SqlParam[])).rows;
  return {
    db,
    query,
    lane: () => query, // one process, one connection
    session: (fn) => fn(query),
    kind: "pglite",
    poolMax: 1,
    poolConnections: async () => ({ active: client.closed ? 0 : 1 }),
    close: async () => {
      try {
        await client.close();
      } finally {
        lock?.release();
      }
    },
  };
}

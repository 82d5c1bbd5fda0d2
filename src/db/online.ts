// The schema work too long for a migration's transaction, which would hold its tables locked
// meanwhile (a `create index` blocks every insert into its table while it builds; an update of
// every row of a table, for as long as it takes): run after the migrations, while the service
// serves, by one instance at a time, until all of it is done. Each step is idempotent; an index
// a killed build left invalid is dropped and built again.
import type { Database, RawQuery } from "./client.js";

/** The indexes of schema.ts that migration 0010 leaves to this, as drizzle-kit wrote them. */
export const ONLINE_INDEXES: readonly { name: string; table: string; definition: string }[] = [
  { name: "audit_events_domain_at_idx", table: "audit_events", definition: `USING btree ("domain","at","seq") WHERE "audit_events"."domain" is not null` },
  { name: "audit_events_outcome_at_idx", table: "audit_events", definition: `USING btree ("outcome","at","seq") WHERE "audit_events"."outcome" is not null` },
  { name: "audit_event_outcomes_unplaced_idx", table: "audit_event_outcomes", definition: `USING btree ("outcome") WHERE "audit_event_outcomes"."event_at" is null` },
  { name: "audit_event_outcomes_outcome_at_idx", table: "audit_event_outcomes", definition: `USING btree ("outcome","event_at","event_seq")` },
];

/** Rows given their event's position a statement (each its own short transaction). */
const PLACE_BATCH = 5_000;

const LOCK_ID = 0x4841_4c55; // the migrations' lock ("HALT") + 1

export type OnlineReport = { ran: boolean; built: string[]; placed: number };

/** Told each step done (a pino logger is one). */
export type OnlineProgress = { info(fields: object, msg: string): void };

/**
 * Builds what is missing and places the outcome rows written before migration 0010. Returns
 * `ran: false` when another instance holds the work (the service looks again from its
 * housekeeping, should that one not finish).
 */
export async function runOnlineSteps(database: Database, log?: OnlineProgress): Promise<OnlineReport> {
  return database.session(async (q) => {
    const [lock] = await q<{ ok: boolean }>(`select pg_try_advisory_lock(${LOCK_ID}) as ok`, []);
    if (!lock?.ok) return { ran: false, built: [], placed: 0 };
    try {
      const built: string[] = [];
      // The partial indexes first (the one of unplaced rows serves the audit reads meanwhile),
      // then the rows' positions, then the index of positions, built once over their final values.
      for (const index of ONLINE_INDEXES.slice(0, 3)) if (await ensureIndex(q, index, log)) built.push(index.name);
      const placed = await placeOutcomes(q, log);
      for (const index of ONLINE_INDEXES.slice(3)) if (await ensureIndex(q, index, log)) built.push(index.name);
      return { ran: true, built, placed };
    } finally {
      await q(`select pg_advisory_unlock(${LOCK_ID})`, []);
    }
  });
}

async function ensureIndex(q: RawQuery, index: (typeof ONLINE_INDEXES)[number], log?: OnlineProgress): Promise<boolean> {
  const [state] = await q<{ valid: boolean }>(
    `select i.indisvalid as valid from pg_index i join pg_class c on c.oid = i.indexrelid
      where c.relname = $1 and c.relnamespace = current_schema()::regnamespace`,
    [index.name],
  );
  if (state?.valid) return false;
  // Invalid: a build under this lock that did not finish (its process ended). Nothing else builds it.
  if (state) await q(`drop index concurrently if exists "${index.name}"`, []);
  const started = performance.now();
  await q(`create index concurrently "${index.name}" on "${index.table}" ${index.definition}`, []);
  log?.info({ index: index.name, ms: Math.round(performance.now() - started) }, "audit index built");
  return true;
}

/** Outcome rows written before 0010 get their event's (at, seq), in batches, in key order. */
async function placeOutcomes(q: RawQuery, log?: OnlineProgress): Promise<number> {
  let placed = 0;
  let after = "00000000-0000-0000-0000-000000000000";
  for (;;) {
    const [batch] = await q<{ n: number; last: string | null }>(
      `with todo as (
         select event_id from audit_event_outcomes where event_id > $1 and event_at is null order by event_id limit ${PLACE_BATCH}
       ), done as (
         update audit_event_outcomes o set event_at = e.at, event_seq = e.seq
         from todo join audit_events e on e.id = todo.event_id
         where o.event_id = todo.event_id
         returning 1
       )
       select (select count(*) from done)::int as n, (select event_id from todo order by event_id desc limit 1) as last`,
      [after],
    );
    placed += Number(batch?.n ?? 0);
    if (!batch?.last) break;
    after = batch.last;
  }
  if (placed > 0) log?.info({ rows: placed }, "audit outcomes written before migration 0010 placed");
  return placed;
}

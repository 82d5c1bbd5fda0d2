// Rate limits decided inside PostgreSQL, on the database's clock, so they hold in total across
// every instance. GCRA: each bucket keeps a theoretical arrival time (TAT); a call of cost n is
// admitted when TAT' = max(TAT, now) + n·T stays within one period of now, T = period / limit.
// Several buckets are decided together in one statement that locks their rows in key order (no
// deadlock between statements), and a refusal writes nothing (a refused call spends no quota).
import { sql } from "drizzle-orm";
import type { RatePolicy } from "../config.js";
import { rowsOf, type Executor } from "../db/client.js";

export type Bucket = { key: string; policy: RatePolicy; name: string };

export type BucketState = {
  name: string;
  key: string;
  policy: RatePolicy;
  /** calls still allowed right now */
  remaining: number;
  /** seconds until the bucket is full again */
  resetS: number;
};

export type Decision = {
  allowed: boolean;
  /** when refused: seconds until this call would pass */
  retryAfterS: number;
  /** when refused: the first bucket that refused */
  refusedBy?: string;
  states: BucketState[];
};

type Row = { key: string; wait_ms: number; n: number };

export async function decide(ex: Executor, buckets: Bucket[], cost = 1): Promise<Decision> {
  if (buckets.length === 0) return { allowed: true, retryAfterS: 0, states: [] };
  const sorted = [...buckets].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  let rows = await decideOnce(ex, sorted, cost);
  if (rows.length < sorted.length) {
    // First use of a bucket: create it (sorted, so concurrent creators lock in one order), then decide.
    await ex.execute(sql`insert into rate_limit_buckets (key, tat)
      values ${sql.join(sorted.map((b) => sql`(${b.key}, now())`), sql`, `)}
      on conflict (key) do nothing`);
    rows = await decideOnce(ex, sorted, cost);
  }
  const byKey = new Map(rows.map((r) => [r.key, Number(r.wait_ms)]));
  let allowed = true;
  let retryMs = 0;
  let refusedBy: string | undefined;
  for (const b of sorted) {
    const wait = byKey.get(b.key) ?? 0;
    const t = b.policy.periodMs / b.policy.limit;
    const over = wait + cost * t - b.policy.periodMs;
    if (over > 0) {
      allowed = false;
      if (over > retryMs) {
        retryMs = over;
        refusedBy = b.name;
      }
    }
  }
  const states = buckets.map((b): BucketState => {
    const t = b.policy.periodMs / b.policy.limit;
    const before = Math.max(0, byKey.get(b.key) ?? 0);
    const after = allowed ? before + cost * t : before;
    return {
      name: b.name,
      key: b.key,
      policy: b.policy,
      remaining: Math.max(0, Math.floor((b.policy.periodMs - after) / t + 1e-9)),
      resetS: Math.ceil(after / 1000),
    };
  });
  return { allowed, retryAfterS: allowed ? 0 : Math.ceil(retryMs / 1000), ...(refusedBy ? { refusedBy } : {}), states };
}

async function decideOnce(ex: Executor, sorted: Bucket[], cost: number): Promise<Row[]> {
  const values = sql.join(
    sorted.map((b) => sql`(${b.key}::text, ${b.policy.periodMs / b.policy.limit}::float8, ${b.policy.periodMs}::float8)`),
    sql`, `,
  );
  // `wait_ms` is how far the bucket's TAT is ahead of now, before this call. The update runs only
  // when every bucket was found and every one admits the call.
  return rowsOf<Row>(
    ex,
    sql`with req(key, t_ms, period_ms) as (values ${values}),
    clock as (select extract(epoch from now()) * 1000 as now_ms),
    cur as (
      select b.key, greatest(extract(epoch from b.tat) * 1000, clock.now_ms) as base_ms, clock.now_ms, req.t_ms, req.period_ms
      from rate_limit_buckets b join req on req.key = b.key cross join clock
      order by b.key
      for update of b
    ),
    verdict as (
      select count(*)::int as n, coalesce(bool_and(base_ms + ${cost} * t_ms - now_ms <= period_ms), true) as ok from cur
    ),
    upd as (
      update rate_limit_buckets b set tat = to_timestamp((cur.base_ms + ${cost} * cur.t_ms) / 1000.0)
      from cur, verdict
      where verdict.ok and verdict.n = ${sorted.length} and b.key = cur.key
      returning b.key
    )
    select cur.key, (cur.base_ms - cur.now_ms)::float8 as wait_ms, verdict.n from cur cross join verdict`,
  );
}

/** Drops buckets that have been full for an hour (a row of a bucket that is full is the same as no row). */
export async function sweepBuckets(ex: Executor): Promise<number> {
  const rows = await rowsOf<{ key: string }>(ex, sql`delete from rate_limit_buckets where tat < now() - interval '1 hour' returning key`);
  return rows.length;
}

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
  /** refused because upstream asked us to pause (a 429 of its own) */
  paused?: boolean;
  /** when refused: seconds until this call would pass */
  retryAfterS: number;
  /** when refused: the first bucket that refused */
  refusedBy?: string;
  states: BucketState[];
};

type Row = { key: string; wait_ms: number; n: number; pause_ms: number | null };

/**
 * Decides a call against every bucket at once. `pauses` are scopes of upstream_pauses that also
 * hold the call back (a pause refuses without spending quota, like any refusal).
 */
export async function decide(ex: Executor, buckets: Bucket[], opts: { cost?: number; pauses?: string[] } = {}): Promise<Decision> {
  const cost = opts.cost ?? 1;
  const pauses = opts.pauses ?? [];
  if (buckets.length === 0) return { allowed: true, retryAfterS: 0, states: [] };
  const sorted = [...buckets].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  let rows = await decideOnce(ex, sorted, cost, pauses);
  if (rows.length < sorted.length) {
    // First use of a bucket: create it (sorted, so concurrent creators lock in one order), then decide.
    await ex.execute(sql`insert into rate_limit_buckets (key, tat)
      values ${sql.join(sorted.map((b) => sql`(${b.key}, now())`), sql`, `)}
      on conflict (key) do nothing`);
    rows = await decideOnce(ex, sorted, cost, pauses);
  }
  const pauseMs = Number(rows[0]?.pause_ms ?? 0);
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
  if (pauseMs > 0 && allowed) {
    allowed = false;
    retryMs = pauseMs;
    refusedBy = "upstream";
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
  return {
    allowed,
    retryAfterS: allowed ? 0 : Math.ceil(retryMs / 1000),
    ...(refusedBy ? { refusedBy } : {}),
    ...(refusedBy === "upstream" ? { paused: true } : {}),
    states,
  };
}

async function decideOnce(ex: Executor, sorted: Bucket[], cost: number, pauses: string[]): Promise<Row[]> {
  const pauseScopes = pauses.length > 0 ? sql.join(pauses.map((p) => sql`${p}`), sql`, `) : sql`null`;
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
    paused as (
      select max(extract(epoch from p.until) * 1000) as until_ms from upstream_pauses p where p.scope in (${pauseScopes}) and p.until > now()
    ),
    verdict as (
      select count(*)::int as n,
        coalesce(bool_and(base_ms + ${cost} * t_ms - now_ms <= period_ms), true) and (select until_ms from paused) is null as ok
      from cur
    ),
    upd as (
      update rate_limit_buckets b set tat = to_timestamp((cur.base_ms + ${cost} * cur.t_ms) / 1000.0)
      from cur, verdict
      where verdict.ok and verdict.n = ${sorted.length} and b.key = cur.key
      returning b.key
    )
    select cur.key, (cur.base_ms - cur.now_ms)::float8 as wait_ms, verdict.n,
      ((select until_ms from paused) - cur.now_ms)::float8 as pause_ms
    from cur cross join verdict`,
  );
}

/** Drops buckets that have been full for an hour (a row of a bucket that is full is the same as no row). */
export async function sweepBuckets(ex: Executor): Promise<number> {
  const rows = await rowsOf<{ key: string }>(ex, sql`delete from rate_limit_buckets where tat < now() - interval '1 hour' returning key`);
  return rows.length;
}

/** Bucket states without deciding anything (for answers given before the limits are asked). */
export async function peekStates(ex: Executor, buckets: Bucket[]): Promise<BucketState[]> {
  if (buckets.length === 0) return [];
  const rows = await rowsOf<{ key: string; wait_ms: number }>(
    ex,
    sql`select key, greatest(extract(epoch from tat - now()) * 1000, 0)::float8 as wait_ms from rate_limit_buckets
        where key in (${sql.join(buckets.map((b) => sql`${b.key}`), sql`, `)})`,
  );
  const byKey = new Map(rows.map((r) => [r.key, Number(r.wait_ms)]));
  return buckets.map((b) => {
    const t = b.policy.periodMs / b.policy.limit;
    const wait = byKey.get(b.key) ?? 0;
    return {
      name: b.name,
      key: b.key,
      policy: b.policy,
      remaining: Math.max(0, Math.floor((b.policy.periodMs - wait) / t + 1e-9)),
      resetS: Math.ceil(wait / 1000),
    };
  });
}

/** Records a pause upstream asked for; a longer pause already recorded is kept. */
export async function pauseUpstream(ex: Executor, scope: string, seconds: number): Promise<void> {
  await ex.execute(sql`insert into upstream_pauses (scope, until) values (${scope}, now() + make_interval(secs => ${seconds}))
    on conflict (scope) do update set until = greatest(upstream_pauses.until, excluded.until)`);
}

export async function sweepPauses(ex: Executor): Promise<void> {
  await ex.execute(sql`delete from upstream_pauses where until < now() - interval '1 minute'`);
}

// Rate limits decided inside PostgreSQL, on the database's clock, so they hold in total across
// every instance. GCRA: each bucket keeps a theoretical arrival time (TAT); a call of cost n is
// admitted when TAT' = max(TAT, now) + n·T stays within one period of now, T = period / limit.
// Several buckets are decided together in one statement that locks their rows in key order (no
// deadlock between statements), and a refusal writes nothing (a refused call spends no quota).
import { sql } from "drizzle-orm";
import type { RatePolicy } from "../config.js";
import { pgArray } from "../db/arrays.js";
import { rowsOf, type Executor } from "../db/client.js";
import { batched } from "./batch.js";

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

type Row = { o_req: number; o_key: string; o_wait_ms: number; o_allowed: boolean; o_pause_ms: number | null };

export type DecideOptions = { cost?: number; pauses?: string[] };

export type Limiter = {
  /** Decides one call; calls made in the same tick are decided together in one statement. */
  decide(buckets: Bucket[], opts?: DecideOptions): Promise<Decision>;
};

type Pending = { buckets: Bucket[]; opts: DecideOptions };

/**
 * Groups the decisions asked for in one event-loop tick into one call of rate_limit_decide(): one
 * round trip for all of them, the same exact answers as one at a time in arrival order (the
 * function admits greedily in that order, under row locks taken in key order).
 */
export function createLimiter(ex: Executor, opts: { maxBatch?: number } = {}): Limiter {
  const run = batched<Pending, Decision>(async (group) => {
    const req: number[] = [], key: string[] = [], t: number[] = [], period: number[] = [], cost: number[] = [];
    const pauseReq: number[] = [], pauseScope: string[] = [];
    group.forEach((p, i) => {
      for (const b of p.buckets) {
        req.push(i);
        key.push(b.key);
        t.push(b.policy.periodMs / b.policy.limit);
        period.push(b.policy.periodMs);
        cost.push(p.opts.cost ?? 1);
      }
      for (const s of p.opts.pauses ?? []) {
        pauseReq.push(i);
        pauseScope.push(s);
      }
    });
    const rows = await rowsOf<Row>(
      ex,
      sql`select * from rate_limit_decide(${pgArray(req)}::int[], ${pgArray(key)}::text[], ${pgArray(t)}::float8[],
        ${pgArray(period)}::float8[], ${pgArray(cost)}::float8[], ${pgArray(pauseReq)}::int[], ${pgArray(pauseScope)}::text[])`,
    );
    const byReq = new Map<number, Row[]>();
    for (const r of rows) {
      const list = byReq.get(Number(r.o_req)) ?? [];
      list.push(r);
      byReq.set(Number(r.o_req), list);
    }
    return group.map((p, i) => toDecision(p, byReq.get(i) ?? []));
  }, opts);

  return {
    decide(buckets, o = {}) {
      if (buckets.length === 0) return Promise.resolve({ allowed: true, retryAfterS: 0, states: [] });
      return run({ buckets, opts: o });
    },
  };
}

function toDecision(p: Pending, rows: Row[]): Decision {
  const cost = p.opts.cost ?? 1;
  const waitByKey = new Map(rows.map((r) => [r.o_key, Number(r.o_wait_ms)]));
  const allowed = rows.length > 0 && rows[0]!.o_allowed === true;
  const pauseMs = rows[0]?.o_pause_ms == null ? 0 : Number(rows[0].o_pause_ms);
  let retryMs = 0;
  let refusedBy: string | undefined;
  if (!allowed) {
    for (const b of p.buckets) {
      const wait = waitByKey.get(b.key) ?? 0;
      const over = wait + cost * (b.policy.periodMs / b.policy.limit) - b.policy.periodMs;
      if (over > retryMs) {
        retryMs = over;
        refusedBy = b.name;
      }
    }
    if (pauseMs > 0 && pauseMs >= retryMs) {
      retryMs = pauseMs;
      refusedBy = "upstream";
    }
  }
  const states = p.buckets.map((b) => {
    const before = Math.max(0, waitByKey.get(b.key) ?? 0);
    return stateOf(b, allowed ? before + (cost * b.policy.periodMs) / b.policy.limit : before);
  });
  return {
    allowed,
    retryAfterS: allowed ? 0 : Math.max(1, Math.ceil(retryMs / 1000)),
    ...(refusedBy ? { refusedBy } : {}),
    ...(refusedBy === "upstream" ? { paused: true } : {}),
    states,
  };
}

/** One decision on its own (tests, tools); the service uses one shared Limiter. */
export function decide(ex: Executor, buckets: Bucket[], opts: DecideOptions = {}): Promise<Decision> {
  return createLimiter(ex).decide(buckets, opts);
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
  return buckets.map((b) => stateOf(b, byKey.get(b.key) ?? 0));
}

/** A bucket whose TAT is `waitMs` ahead of now: how many calls fit, and when it is full again. */
function stateOf(b: Bucket, waitMs: number): BucketState {
  const t = b.policy.periodMs / b.policy.limit;
  return {
    name: b.name,
    key: b.key,
    policy: b.policy,
    remaining: Math.max(0, Math.floor((b.policy.periodMs - waitMs) / t + 1e-9)),
    resetS: Math.ceil(waitMs / 1000),
  };
}

/** Records a pause upstream asked for; a longer pause already recorded is kept. */
export async function pauseUpstream(ex: Executor, scope: string, seconds: number): Promise<void> {
  await ex.execute(sql`insert into upstream_pauses (scope, until) values (${scope}, now() + make_interval(secs => ${seconds}))
    on conflict (scope) do update set until = greatest(upstream_pauses.until, excluded.until)`);
}

export async function sweepPauses(ex: Executor): Promise<void> {
  await ex.execute(sql`delete from upstream_pauses where until < now() - interval '1 minute'`);
}

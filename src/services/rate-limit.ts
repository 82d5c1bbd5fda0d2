// Rate limits decided inside PostgreSQL, on the database's clock, so they hold in total across
// every instance. GCRA: each bucket keeps a theoretical arrival time (TAT); a call of cost n is
// admitted when TAT' = max(TAT, now) + n·T stays within burst·T of now, T = period / limit (the
// burst is the limit unless the policy cuts it: a full bucket lets `burst` calls go at once).
// Several buckets are decided together in one statement that locks their rows in one fixed order
// (no deadlock between statements), and a refused call spends no quota.
import { sql } from "drizzle-orm";
import type { RatePolicy } from "../config.js";
import { pgArray } from "../db/arrays.js";
import { rowsOf, type Database, type Executor, type SqlParam } from "../db/client.js";
import { batched, type BatchOptions } from "./batch.js";

export type Bucket = { key: string; policy: RatePolicy; name: string };

/** A policy's emission interval T, and how far ahead of now its TAT may run (burst·T), in ms. */
const interval = (p: RatePolicy) => p.periodMs / p.limit;
const tolerance = (p: RatePolicy) => (p.burst ?? p.limit) * interval(p);

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
  /** the same, exactly, in milliseconds (0 when allowed) */
  retryAfterMs: number;
  /** when refused: the first bucket that refused */
  refusedBy?: string;
  states: BucketState[];
};

/** rate_limit_decide()'s answer: per request (allowed, pause), per input row (wait). */
type Row = { o_allowed: (boolean | null)[] | null; o_pause_ms: number[] | null; o_wait_ms: number[] | null };

export type DecideOptions = {
  cost?: number;
  pauses?: string[];
};

export type Limiter = {
  /** Decides one call; calls made while a group is being decided are decided together, next. */
  decide(buckets: Bucket[], opts?: DecideOptions): Promise<Decision>;
};

type Pending = { buckets: Bucket[]; opts: DecideOptions };

const DECIDE = `select o_allowed, o_pause_ms, o_wait_ms
  from rate_limit_decide($1::text[], $2::int[], $3::int[], $4::float8[], $5::float8[], $6::float8[], $7::int[], $8::text[])`;

/** A group's buckets as rate_limit_decide() and proxy_admit() take them: each distinct bucket once. */
export type BucketArrays = {
  keys: string[];
  req: number[];
  idx: number[];
  t: number[];
  period: number[];
  cost: number[];
  name: string[];
  pauseReq: number[];
  pauseScope: string[];
};

export function bucketArrays(group: readonly { buckets: Bucket[]; cost?: number; pauses?: string[] }[]): BucketArrays {
  const a: BucketArrays = { keys: [], req: [], idx: [], t: [], period: [], cost: [], name: [], pauseReq: [], pauseScope: [] };
  const position = new Map<string, number>();
  group.forEach((p, i) => {
    for (const b of p.buckets) {
      let k = position.get(b.key);
      if (k === undefined) {
        a.keys.push(b.key);
        k = a.keys.length; // 1-based, as SQL arrays are
        position.set(b.key, k);
      }
      a.req.push(i);
      a.idx.push(k);
      a.name.push(b.name);
      a.t.push(interval(b.policy));
      a.period.push(tolerance(b.policy)); // the function's "period": how far ahead the TAT may run
      a.cost.push(p.cost ?? 1);
    }
    for (const s of p.pauses ?? []) {
      a.pauseReq.push(i);
      a.pauseScope.push(s);
    }
  });
  return a;
}

/** rate_limit_decide()'s eight arguments, in its order (proxy_admit() takes them too). */
export const decideArgs = (a: BucketArrays): SqlParam[] => [
  pgArray(a.keys), pgArray(a.req), pgArray(a.idx), pgArray(a.t), pgArray(a.period), pgArray(a.cost), pgArray(a.pauseReq), pgArray(a.pauseScope),
];

/**
 * Groups the decisions asked for while a group is on its way into the next call of
 * rate_limit_decide() (batch.ts): one round trip for all of them, the same exact answers as one at
 * a time in arrival order (the function admits greedily in that order, under row locks taken in
 * one fixed order).
 */
export function createLimiter(database: Pick<Database, "query">, opts: BatchOptions = {}): Limiter {
  const run = batched<Pending, Decision>(async (group) => {
    const [row] = await database.query<Row>(DECIDE, decideArgs(bucketArrays(group.map((p) => ({ buckets: p.buckets, ...p.opts })))));
    const waits = waitsByRequest(group, row?.o_wait_ms);
    return group.map((p, i) => toDecision(p.buckets, p.opts.cost ?? 1, row?.o_allowed?.[i] === true, Number(row?.o_pause_ms?.[i] ?? 0), waits[i]!));
  }, opts);

  return {
    decide(buckets, o = {}) {
      if (buckets.length === 0) return Promise.resolve({ allowed: true, retryAfterS: 0, retryAfterMs: 0, states: [] });
      return run({ buckets, opts: o });
    },
  };
}

/** The buckets' waits as the database lists them (in input order), cut into each request's. */
export function waitsByRequest(group: readonly { buckets: Bucket[] }[], waits: readonly number[] | null | undefined): number[][] {
  let at = 0;
  return group.map((p) => {
    const mine = (waits ?? []).slice(at, at + p.buckets.length).map(Number);
    at += p.buckets.length;
    return mine;
  });
}

/** What the database decided for one call, told as the service tells it (headers, Retry-After, reason). */
export function toDecision(buckets: Bucket[], cost: number, allowed: boolean, pauseMs: number, waitMs: number[]): Decision {
  let retryMs = 0;
  let refusedBy: string | undefined;
  if (!allowed) {
    buckets.forEach((b, j) => {
      const over = (waitMs[j] ?? 0) + cost * interval(b.policy) - tolerance(b.policy);
      if (over > retryMs) {
        retryMs = over;
        refusedBy = b.name;
      }
    });
    if (pauseMs > 0 && pauseMs >= retryMs) {
      retryMs = pauseMs;
      refusedBy = "upstream";
    }
  }
  const states = buckets.map((b, j) => {
    const before = Math.max(0, waitMs[j] ?? 0);
    return stateOf(b, allowed ? before + cost * interval(b.policy) : before);
  });
  return {
    allowed,
    retryAfterS: allowed ? 0 : Math.max(1, Math.ceil(retryMs / 1000)),
    retryAfterMs: allowed ? 0 : retryMs,
    ...(refusedBy ? { refusedBy } : {}),
    ...(refusedBy === "upstream" ? { paused: true } : {}),
    states,
  };
}

/** One decision on its own (tests, tools); the service uses one shared Limiter. */
export function decide(database: Pick<Database, "query">, buckets: Bucket[], opts: DecideOptions = {}): Promise<Decision> {
  return createLimiter(database).decide(buckets, opts);
}


/** Drops buckets that have been full for an hour (a row of a bucket that is full is the same as no row). */
export async function sweepBuckets(ex: Executor): Promise<number> {
  // Key order and SKIP LOCKED: never a deadlock with rate_limit_decide(), never a row it holds.
  const rows = await rowsOf<{ key: string }>(
    ex,
    sql`delete from rate_limit_buckets where key in (
      select key from rate_limit_buckets where tat < now() - interval '1 hour' order by key for update skip locked)
    returning key`,
  );
  return rows.length;
}

/** Bucket states without deciding anything (for answers given before the limits are asked). */
export async function peekStates(ex: Executor, buckets: Bucket[]): Promise<BucketState[]> {
  if (buckets.length === 0) return [];
  const rows = await rowsOf<{ key: string; wait_ms: number; t_ms: number | null }>(
    ex,
    sql`select key, greatest(extract(epoch from tat - now()) * 1000, 0)::float8 as wait_ms, t_ms from rate_limit_buckets
        where key in (${sql.join(buckets.map((b) => sql`${b.key}`), sql`, `)})`,
  );
  const byKey = new Map(rows.map((r) => [r.key, r]));
  return buckets.map((b) => {
    const row = byKey.get(b.key);
    if (!row) return stateOf(b, 0);
    // Counted under another emission interval (the policy changed since): the backlog as the next
    // decision will rescale it (rate_limit_decide()), so that the calls made still count.
    const t = interval(b.policy);
    const tMs = row.t_ms === null ? null : Number(row.t_ms);
    const wait = Number(row.wait_ms);
    return stateOf(b, tMs !== null && Math.abs(tMs - t) > 1e-9 * t ? (wait * t) / tMs : wait);
  });
}

/** A bucket whose TAT is `waitMs` ahead of now: how many calls fit, and when it is full again. */
function stateOf(b: Bucket, waitMs: number): BucketState {
  return {
    name: b.name,
    key: b.key,
    policy: b.policy,
    remaining: Math.max(0, Math.floor((tolerance(b.policy) - waitMs) / interval(b.policy) + 1e-9)),
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

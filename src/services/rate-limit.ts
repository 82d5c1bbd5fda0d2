// Rate limits decided inside PostgreSQL, on the database's clock, so they hold in total across
// every instance. GCRA: each bucket keeps a theoretical arrival time (TAT); a call of cost n is
// admitted when TAT' = max(TAT, now) + n·T stays within one period of now, T = period / limit.
// Several buckets are decided together in one statement that locks their rows in key order (no
// deadlock between statements), and a refusal writes nothing (a refused call spends no quota).
import { sql, type SQL } from "drizzle-orm";
import type { RatePolicy } from "../config.js";
import { pgArray } from "../db/arrays.js";
import { rowsOf, type Executor } from "../db/client.js";
import type { auditEvents } from "../db/schema.js";
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

export type DecideOptions = {
  cost?: number;
  pauses?: string[];
  /**
   * An audit row written by the same statement as the decision: as the attempt (outcome null)
   * when the call is admitted, as `rate_limited` (with the reason) when it is refused. Decision
   * and record are one atomic statement: no record, no quota spent, and the other way round.
   */
  audit?: AuditRow;
};

type AuditRow = typeof auditEvents.$inferInsert;

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
    const req: number[] = [], key: string[] = [], t: number[] = [], period: number[] = [], cost: number[] = [], name: string[] = [];
    const pauseReq: number[] = [], pauseScope: string[] = [];
    group.forEach((p, i) => {
      for (const b of p.buckets) {
        req.push(i);
        key.push(b.key);
        name.push(b.name);
        t.push(b.policy.periodMs / b.policy.limit);
        period.push(b.policy.periodMs);
        cost.push(p.opts.cost ?? 1);
      }
      for (const s of p.opts.pauses ?? []) {
        pauseReq.push(i);
        pauseScope.push(s);
      }
    });
    const decideCall = sql`rate_limit_decide(${pgArray(req)}::int[], ${pgArray(key)}::text[], ${pgArray(t)}::float8[],
        ${pgArray(period)}::float8[], ${pgArray(cost)}::float8[], ${pgArray(pauseReq)}::int[], ${pgArray(pauseScope)}::text[])`;
    const audited = group.flatMap((p, i) => (p.opts.audit ? [{ i, row: p.opts.audit }] : []));
    const rows = await rowsOf<Row>(
      ex,
      audited.length === 0 ? sql`select * from ${decideCall}` : decideAndRecord(decideCall, { req, key, t, period, cost, name }, audited),
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

/**
 * The decision and its audit rows in one statement. The refusal's reason is the bucket furthest
 * over its limit, or `upstream` when a pause holds the call back longer (as toDecision says it).
 */
function decideAndRecord(
  decideCall: SQL,
  input: { req: number[]; key: string[]; t: number[]; period: number[]; cost: number[]; name: string[] },
  audited: { i: number; row: AuditRow }[],
): SQL {
  const col = <K extends keyof AuditRow>(k: K) => pgArray(audited.map((a) => (a.row[k] ?? null) as string | number | null));
  return sql`with d as materialized (select * from ${decideCall}),
    inp as (
      select * from unnest(${pgArray(input.req)}::int[], ${pgArray(input.key)}::text[], ${pgArray(input.t)}::float8[],
        ${pgArray(input.period)}::float8[], ${pgArray(input.cost)}::float8[], ${pgArray(input.name)}::text[])
        as i(req, key, t, period, cost, name)
    ),
    v as (
      select d.o_req as req, bool_and(d.o_allowed) as ok, coalesce(max(d.o_pause_ms), 0) as pause_ms,
        max(d.o_wait_ms + i.cost * i.t - i.period) as over,
        (array_agg(i.name order by d.o_wait_ms + i.cost * i.t - i.period desc))[1] as worst
      from d join inp i on i.req = d.o_req and i.key = d.o_key
      group by d.o_req
    ),
    a as (
      select * from unnest(${pgArray(audited.map((a) => a.i))}::int[], ${col("id")}::uuid[], ${col("requestId")}::text[],
        ${col("actorId")}::uuid[], ${col("actorUsername")}::text[], ${col("action")}::text[], ${col("keyId")}::uuid[],
        ${col("keyOwnerId")}::uuid[], ${col("handle")}::text[], ${col("domain")}::text[], ${col("ip")}::text[],
        ${col("userAgent")}::text[])
        as a(req, id, request_id, actor_id, actor_username, action, key_id, key_owner_id, handle, domain, ip, user_agent)
    ),
    ins as (
      insert into audit_events (id, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id, handle, domain, ip, user_agent, detail)
      select a.id, a.request_id, a.actor_id, a.actor_username, a.action,
        case when v.ok then null else 'rate_limited' end,
        a.key_id, a.key_owner_id, a.handle, a.domain, a.ip, a.user_agent,
        case when v.ok then null else jsonb_build_object('error', 'rate_limited', 'reason',
          case when v.pause_ms > 0 and v.pause_ms >= greatest(v.over, 0) then 'upstream' else v.worst end) end
      from a join v on v.req = a.req
      returning 1
    )
    select * from d`;
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

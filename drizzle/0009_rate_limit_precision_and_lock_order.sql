-- Two corrections to the rate limiter, found in review (test/limits/decide-precision.test.ts and
-- test/limits/mixed-versions.test.ts):
--
-- 1. rate_limit_decide() (0008's, the hot path's and login throttling's): within a group, a
--    bucket's TAT was kept in epoch milliseconds and advanced by the emission interval T once per
--    admitted call; where T is not a multiple of the float step there (~0.24 us at 1.8e12), each
--    addition rounded the same way, and a whole burst asked in one group lost its last call to
--    the 0.001 ms tolerance (33/min admitted 32) and showed `remaining` one low. The loop now
--    works on backlogs relative to the clock, converted back only on write; and the tolerance is
--    a thousandth of T when that is below a microsecond (a policy of millions a second got whole
--    calls from it).
-- 2. The 7-argument rate_limit_decide() of 0004, kept for instances of the previous version during
--    a rolling upgrade, locked its buckets in plain key order, where 0008's locks per-user buckets
--    first and `global` last: an old and a new instance deciding calls of one user at once could
--    deadlock (40P01, a 503 after a second). It now locks in 0008's order, and its upsert locks the
--    rows that exist as well as those it makes, in one statement (DO UPDATE ... WHERE false locks
--    without writing, as 0008's does): DO NOTHING locked only the rows it made, before the others,
--    so a new key's bucket was held before the user's existing one.
CREATE OR REPLACE FUNCTION rate_limit_decide(
  p_keys text[], p_req int[], p_idx int[], p_t float8[], p_period float8[], p_cost float8[],
  p_pause_req int[], p_pause_scope text[], p_skip boolean[] DEFAULT NULL,
  -- per request: admitted (null when skipped), the longest pause holding it back (0: none), and the
  -- input row of its bucket furthest over its limit; per input row: how far ahead of now its
  -- bucket's TAT was when the request was decided
  OUT o_allowed boolean[], OUT o_pause_ms float8[], OUT o_worst int[], OUT o_wait_ms float8[]
)
LANGUAGE plpgsql
-- generic plans for the statements inside, on any connection (see db/client.ts, lanes)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  n int := coalesce(array_length(p_req, 1), 0);
  np int := coalesce(array_length(p_pause_req, 1), 0);
  nk int := coalesce(array_length(p_keys, 1), 0);
  m int;
  tat float8[];
  tms float8[];
  dirty boolean[];
  pause_scope text[];
  pause_until float8[];
  now_ms float8;
  i int := 1;
  pj int := 1;
  j int;
  b int;
  r int;
  first_i int;
  ok boolean;
  base float8;
  over float8;
  worst_over float8;
  pmax float8;
  kp int;
BEGIN
  IF n = 0 THEN RETURN; END IF;
  m := p_req[n] + 1;
  o_allowed := array_fill(NULL::boolean, ARRAY[m]);
  o_pause_ms := array_fill(0::float8, ARRAY[m]);
  o_worst := array_fill(NULL::int, ARRAY[m]);
  o_wait_ms := array_fill(0::float8, ARRAY[n]);

  INSERT INTO rate_limit_buckets AS bk (key, tat)
    SELECT u.k, now() FROM unnest(p_keys) AS u(k) ORDER BY rate_limit_lock_rank(u.k), u.k
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO UPDATE SET tat = bk.tat WHERE false;
  SELECT array_agg(coalesce(extract(epoch from l.tat) * 1000, 0) ORDER BY s.i), array_agg(l.t_ms ORDER BY s.i)
    INTO tat, tms
    FROM unnest(p_keys) WITH ORDINALITY AS s(k, i)
    LEFT JOIN (SELECT bk.key, bk.tat, bk.t_ms FROM rate_limit_buckets bk WHERE bk.key = ANY (p_keys)
               ORDER BY rate_limit_lock_rank(bk.key), bk.key FOR UPDATE) AS l
      ON l.key = s.k;
  dirty := array_fill(false, ARRAY[nk]);
  IF np > 0 THEN
    SELECT array_agg(p.scope), array_agg(extract(epoch from p.until) * 1000) INTO pause_scope, pause_until
      FROM upstream_pauses p WHERE p.scope = ANY (p_pause_scope) AND p.until > now();
  END IF;

  -- The clock is read once the locks are held. From here on a bucket's TAT is held as its backlog
  -- (how far ahead of now it is, 0 when behind): small numbers, whose float steps are far below a
  -- microsecond, where epoch milliseconds (~1.8e12, a step ~0.24 us) lost a little at every
  -- addition of an interval that is not a multiple of the step.
  now_ms := extract(epoch from clock_timestamp()) * 1000;
  FOR b IN 1 .. nk LOOP tat[b] := greatest(tat[b] - now_ms, 0); END LOOP;

  WHILE i <= n LOOP
    r := p_req[i];
    first_i := i;
    IF p_skip IS NOT NULL AND p_skip[r + 1] THEN
      WHILE i <= n AND p_req[i] = r LOOP i := i + 1; END LOOP;
      CONTINUE;
    END IF;
    ok := true;
    worst_over := NULL;
    WHILE i <= n AND p_req[i] = r LOOP
      b := p_idx[i];
      -- A bucket counted under another emission interval (its policy changed): rescale its
      -- backlog first, so that n calls outstanding under the old policy are n calls under the new.
      IF tms[b] IS NULL OR abs(tms[b] - p_t[i]) > 1e-9 * p_t[i] THEN
        IF tms[b] IS NOT NULL THEN tat[b] := tat[b] * p_t[i] / tms[b]; END IF;
        tms[b] := p_t[i];
        dirty[b] := true;
      END IF;
      base := tat[b];
      o_wait_ms[i] := base;
      over := base + p_cost[i] * p_t[i] - p_period[i];
      -- (a float error's tolerance: a microsecond, or a thousandth of the interval when that is
      -- shorter, so that no policy, however fast, gets a call more from it)
      IF over > least(0.001, 0.001 * p_t[i]) THEN ok := false; END IF;
      IF worst_over IS NULL OR over > worst_over THEN worst_over := over; o_worst[r + 1] := i; END IF;
      i := i + 1;
    END LOOP;
    pmax := 0;
    WHILE pj <= np AND p_pause_req[pj] < r LOOP pj := pj + 1; END LOOP;
    WHILE pj <= np AND p_pause_req[pj] = r LOOP
      kp := array_position(pause_scope, p_pause_scope[pj]);
      IF kp IS NOT NULL AND pause_until[kp] - now_ms > pmax THEN pmax := pause_until[kp] - now_ms; END IF;
      pj := pj + 1;
    END LOOP;
    IF pmax > 0 THEN ok := false; o_pause_ms[r + 1] := pmax; END IF;
    o_allowed[r + 1] := ok;
    IF ok THEN
      FOR j IN first_i .. i - 1 LOOP
        b := p_idx[j];
        tat[b] := tat[b] + p_cost[j] * p_t[j];
        dirty[b] := true;
      END LOOP;
    END IF;
  END LOOP;

  INSERT INTO rate_limit_buckets AS bk (key, tat, t_ms)
    SELECT u.k, to_timestamp((now_ms + u.t) / 1000), u.tm FROM unnest(p_keys, tat, tms, dirty) AS u(k, t, tm, d) WHERE u.d
    ORDER BY rate_limit_lock_rank(u.k), u.k
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO UPDATE SET tat = excluded.tat, t_ms = excluded.t_ms;
END $$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION rate_limit_decide(
  p_req int[], p_key text[], p_t float8[], p_period float8[], p_cost float8[],
  p_pause_req int[], p_pause_scope text[]
) RETURNS TABLE (o_req int, o_key text, o_wait_ms float8, o_allowed boolean, o_pause_ms float8)
LANGUAGE plpgsql AS $$
DECLARE
  now_ms float8;
  tats jsonb := '{}';
  ts jsonb := '{}';
  changed jsonb := '{}';
  pauses jsonb := '{}';
  n int := coalesce(array_length(p_req, 1), 0);
  np int := coalesce(array_length(p_pause_req, 1), 0);
  i int := 1;
  pj int := 1;
  j int;
  r int;
  first_i int;
  ok boolean;
  base float8;
  pmax float8;
  rec record;
BEGIN
  INSERT INTO rate_limit_buckets AS b (key, tat)
    SELECT k, now() FROM (SELECT DISTINCT k FROM unnest(p_key) AS k) AS u ORDER BY rate_limit_lock_rank(k), k
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO UPDATE SET tat = b.tat WHERE false;
  FOR rec IN SELECT b.key AS k, extract(epoch from b.tat) * 1000 AS tat_ms, b.t_ms AS t FROM rate_limit_buckets b
             WHERE b.key = ANY (p_key) ORDER BY rate_limit_lock_rank(b.key), b.key FOR UPDATE LOOP
    tats := tats || jsonb_build_object(rec.k, rec.tat_ms);
    IF rec.t IS NOT NULL THEN ts := ts || jsonb_build_object(rec.k, rec.t); END IF;
  END LOOP;
  -- The clock is read once the locks are held: a wait on a busy row must not date the decision.
  now_ms := extract(epoch from clock_timestamp()) * 1000;
  -- A bucket counted under another emission interval (its policy changed): rescale the backlog,
  -- so that n calls outstanding under the old policy are n calls under the new one.
  FOR i IN 1 .. n LOOP
    IF (ts ? p_key[i]) AND abs((ts ->> p_key[i])::float8 - p_t[i]) > 1e-9 * p_t[i] THEN
      base := greatest((tats ->> p_key[i])::float8 - now_ms, 0) * p_t[i] / (ts ->> p_key[i])::float8;
      tats := jsonb_set(tats, ARRAY[p_key[i]], to_jsonb(now_ms + base));
      changed := changed || jsonb_build_object(p_key[i], true);
    END IF;
    IF NOT (ts ? p_key[i]) OR abs((ts ->> p_key[i])::float8 - p_t[i]) > 1e-9 * p_t[i] THEN
      ts := ts || jsonb_build_object(p_key[i], p_t[i]);
      changed := changed || jsonb_build_object(p_key[i], true);
    END IF;
  END LOOP;
  i := 1;
  IF np > 0 THEN
    FOR rec IN SELECT p.scope AS s, extract(epoch from p.until) * 1000 AS until_ms FROM upstream_pauses p
               WHERE p.scope = ANY (p_pause_scope) AND p.until > now() LOOP
      pauses := pauses || jsonb_build_object(rec.s, rec.until_ms);
    END LOOP;
  END IF;
  WHILE i <= n LOOP
    r := p_req[i];
    first_i := i;
    ok := true;
    WHILE i <= n AND p_req[i] = r LOOP
      base := greatest((tats ->> p_key[i])::float8, now_ms);
      IF base + p_cost[i] * p_t[i] - now_ms > p_period[i] + 0.001 THEN
        ok := false;
      END IF;
      i := i + 1;
    END LOOP;
    pmax := NULL;
    WHILE pj <= np AND p_pause_req[pj] < r LOOP pj := pj + 1; END LOOP;
    WHILE pj <= np AND p_pause_req[pj] = r LOOP
      IF pauses ? p_pause_scope[pj] AND (pauses ->> p_pause_scope[pj])::float8 > now_ms THEN
        pmax := greatest(coalesce(pmax, 0), (pauses ->> p_pause_scope[pj])::float8 - now_ms);
      END IF;
      pj := pj + 1;
    END LOOP;
    IF pmax IS NOT NULL THEN ok := false; END IF;
    FOR j IN first_i .. i - 1 LOOP
      base := greatest((tats ->> p_key[j])::float8, now_ms);
      o_req := r; o_key := p_key[j]; o_wait_ms := base - now_ms; o_allowed := ok; o_pause_ms := pmax;
      RETURN NEXT;
      IF ok THEN
        tats := jsonb_set(tats, ARRAY[p_key[j]], to_jsonb(base + p_cost[j] * p_t[j]));
        changed := changed || jsonb_build_object(p_key[j], true);
      END IF;
    END LOOP;
  END LOOP;
  UPDATE rate_limit_buckets b SET tat = to_timestamp((tats ->> b.key)::float8 / 1000), t_ms = (ts ->> b.key)::float8
    WHERE b.key = ANY (ARRAY(SELECT jsonb_object_keys(changed)));
  RETURN;
END $$;

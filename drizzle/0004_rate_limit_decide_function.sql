-- Decides a group of calls against their rate-limit buckets in one statement (one round trip).
-- Input rows are (request, bucket) pairs, each request's rows contiguous and in arrival order.
-- Every bucket row is locked in key order (no deadlock between concurrent groups), then the
-- requests are admitted greedily in order: a request passes only if every one of its buckets has
-- room and none of its pause scopes is active; an admitted request spends cost x T in each of its
-- buckets, a refused one spends nothing. Times are the database's, never an instance's:
-- - the clock is read once the locks are held (a wait on the hot global row must not date a decision);
-- - the capacity test tolerates a microsecond of float error (epoch milliseconds are ~1.8e12, a
--   float step ~0.24 us: a burst's last call must not be refused for it);
-- - a bucket records the emission interval (t_ms, added by 0005) its TAT was counted in: when a
--   policy changes (an admin override), the backlog is rescaled so calls already made still count;
-- - the final UPDATE finds its rows through the primary key (= ANY of an array: an IN (subquery)
--   form was planned as a scan of the whole bucket table, 3.3 ms a decision at 20,000 buckets).
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
    SELECT DISTINCT k, now() FROM unnest(p_key) AS k ORDER BY 1
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO NOTHING;
  FOR rec IN SELECT b.key AS k, extract(epoch from b.tat) * 1000 AS tat_ms, b.t_ms AS t FROM rate_limit_buckets b
             WHERE b.key = ANY (p_key) ORDER BY b.key FOR UPDATE LOOP
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

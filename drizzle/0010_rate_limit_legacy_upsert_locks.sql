-- The 7-argument rate_limit_decide() (0004's, kept for instances of the version before 0008
-- during a rolling upgrade; locking in 0008's order since 0009): its upsert created the missing
-- rows with DO NOTHING, which locks only the rows it creates, before the FOR UPDATE that locks
-- the others. A new key's bucket was then held before the user's existing one, the reverse of
-- 0008's order: an old and a new instance on one user's first call with a new key could still
-- deadlock (found in review; test/limits/mixed-versions.test.ts). The upsert now locks every row,
-- the existing ones too, in one statement and in 0008's order (DO UPDATE ... WHERE false locks
-- without writing, as 0008's does).
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

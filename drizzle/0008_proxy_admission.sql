-- The hot path of a proxied call, before upstream, in one statement: proxy_admit() checks the key
-- the service chose is still the caller's to use, records the attempt, decides the rate limits
-- and records a refusal. rate_limit_decide() is rewritten for it (and keeps serving login
-- throttling):
--
-- rate_limit_decide(): the buckets of a group are held in arrays indexed by their position in
-- p_keys (the group's distinct bucket keys; each input row names its bucket by that position in
-- p_idx), instead of jsonb objects keyed by name (each jsonb update copied the whole object: 60 us
-- a call in a group of 32, and growing with the group). Input rows are (request, bucket) pairs,
-- each request's rows contiguous and in arrival order, requests numbered from 0; requests are
-- admitted greedily in that order: a request passes only if every one of its buckets has room and
-- none of its pause scopes is active; an admitted request spends cost x T in each of its buckets,
-- a refused one spends nothing, a skipped one (p_skip[req + 1]) is not decided (o_allowed null).
-- Times are the database's, never an instance's:
-- - every bucket row is created if missing and locked by one statement, in one fixed order (no
--   deadlock between concurrent groups, whatever their keys): per-user buckets first, the shared
--   ones last (the stored keys', then `global`), so the rows every call needs are held for the
--   shortest time; an existing row is locked by the upsert itself (DO UPDATE ... WHERE false locks
--   without writing), so housekeeping cannot delete it between its creation and its use;
-- - the clock is read once the locks are held (a wait on a busy row must not date a decision);
-- - the capacity test tolerates a microsecond of float error (epoch milliseconds are ~1.8e12, a
--   float step ~0.24 us: a burst's last call must not be refused for it);
-- - a bucket records the emission interval (t_ms) its TAT was counted in: when a policy changes (an
--   admin override), the backlog is rescaled so calls already made still count;
-- - the 7-argument rate_limit_decide() of 0004 stays, for instances of the previous version
--   during a rolling upgrade.
CREATE FUNCTION rate_limit_lock_rank(k text) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT CASE WHEN k = 'global' THEN 2 WHEN k LIKE 'key:%' THEN 1 ELSE 0 END $$;
--> statement-breakpoint
CREATE FUNCTION rate_limit_decide(
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

  -- The clock is read once the locks are held.
  now_ms := extract(epoch from clock_timestamp()) * 1000;

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
        IF tms[b] IS NOT NULL THEN tat[b] := now_ms + greatest(tat[b] - now_ms, 0) * p_t[i] / tms[b]; END IF;
        tms[b] := p_t[i];
        dirty[b] := true;
      END IF;
      base := greatest(tat[b], now_ms);
      o_wait_ms[i] := base - now_ms;
      over := base + p_cost[i] * p_t[i] - now_ms - p_period[i];
      IF over > 0.001 THEN ok := false; END IF;
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
        tat[b] := greatest(tat[b], now_ms) + p_cost[j] * p_t[j];
        dirty[b] := true;
      END LOOP;
    END IF;
  END LOOP;

  INSERT INTO rate_limit_buckets AS bk (key, tat, t_ms)
    SELECT u.k, to_timestamp(u.t / 1000), u.tm FROM unnest(p_keys, tat, tms, dirty) AS u(k, t, tm, d) WHERE u.d
    ORDER BY rate_limit_lock_rank(u.k), u.k
    ON CONFLICT ON CONSTRAINT rate_limit_buckets_pkey DO UPDATE SET tat = excluded.tat, t_ms = excluded.t_ms;
END $$;
--> statement-breakpoint
-- Every decision rewrites its bucket rows: room on the page keeps those updates HOT (no index
-- entry per update), and the hot `global` row's old versions are pruned in place.
ALTER TABLE rate_limit_buckets SET (fillfactor = 50);
--> statement-breakpoint
-- proxy_admit(): a group of proxied calls, before upstream. Per request (arrays of one element a
-- request, requests numbered from 0): the caller, the stored key the service chose for it, whether
-- that key was chosen as the caller's only usable key (no X-Key-Id), the rate-limit overrides the
-- service read for the caller (users.rate_limits as text), and the attempt's audit record. Per
-- (request, bucket) and per (request, pause scope): as rate_limit_decide() takes them, with each
-- bucket's policy name (for the refusal's reason).
-- 1. Verifies each choice against the database: the key exists and the caller owns it or holds an
--    active grant on it; chosen as the only one, the caller may use no other; the overrides are
--    those the policies were computed from. A request that fails is answered `o_verified` false
--    and nothing else happens to it: the service chooses again and asks again. So a revoked grant,
--    a deleted key, a second grant or a new override takes effect at the next call, on every
--    instance, although instances remember their choices.
-- 2. Records the attempt of every verified request (outcome to follow), before any bucket lock.
-- 3. Decides the verified requests (rate_limit_decide).
-- 4. Records each refusal as the attempt's outcome: `rate_limited`, with the reason (the bucket
--    furthest over its limit, or `upstream` when a pause holds the call back longer).
-- One row: per request, whether its choice held, the decision, the longest pause, and for an
-- admitted call the key's sealed material, read in this statement (the service keeps no copy of
-- it); per (request, bucket), the bucket's wait, as rate_limit_decide() tells it.
CREATE FUNCTION proxy_admit(
  p_user uuid[], p_key uuid[], p_only boolean[], p_limits text[],
  p_event uuid[], p_request_id text[], p_actor_username text[], p_action text[],
  p_handle text[], p_domain text[], p_ip text[], p_user_agent text[],
  p_keys text[], p_req int[], p_idx int[], p_t float8[], p_period float8[], p_cost float8[],
  p_pause_req int[], p_pause_scope text[], p_name text[],
  OUT o_verified boolean[], OUT o_allowed boolean[], OUT o_pause_ms float8[], OUT o_wait_ms float8[],
  OUT o_owner uuid[], OUT o_sealed bytea[], OUT o_wrapped bytea[], OUT o_keyring text[]
)
LANGUAGE plpgsql
-- generic plans for the statements inside, on any connection (see db/client.ts, lanes)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
  m int := coalesce(array_length(p_user, 1), 0);
  d record;
BEGIN
  IF m = 0 THEN RETURN; END IF;

  SELECT array_agg(v.ok ORDER BY r.i), array_agg(k.owner_id ORDER BY r.i), array_agg(k.sealed_key ORDER BY r.i),
         array_agg(k.wrapped_dek ORDER BY r.i), array_agg(k.keyring_id ORDER BY r.i)
    INTO o_verified, o_owner, o_sealed, o_wrapped, o_keyring
    FROM unnest(p_user, p_key, p_only, p_limits) WITH ORDINALITY AS r(uid, kid, only1, lim, i)
    LEFT JOIN users u ON u.id = r.uid
    LEFT JOIN haltman_keys k ON k.id = r.kid
    CROSS JOIN LATERAL (SELECT
        u.id IS NOT NULL AND k.id IS NOT NULL
        AND (k.owner_id = r.uid OR EXISTS (SELECT 1 FROM key_grants g WHERE g.key_id = k.id AND g.user_id = r.uid
               AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > now())))
        AND (NOT r.only1 OR (
               NOT EXISTS (SELECT 1 FROM haltman_keys k2 WHERE k2.owner_id = r.uid AND k2.id <> k.id)
               AND NOT EXISTS (SELECT 1 FROM key_grants g2 WHERE g2.user_id = r.uid AND g2.key_id <> k.id
                 AND g2.revoked_at IS NULL AND (g2.expires_at IS NULL OR g2.expires_at > now()))))
        AND u.rate_limits IS NOT DISTINCT FROM r.lim::jsonb AS ok) AS v;

  INSERT INTO audit_events (id, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id, handle, domain, ip, user_agent)
    SELECT a.id, a.rid, a.uid, a.uname, a.act, NULL, a.kid, o_owner[a.i::int], a.h, a.d, a.ip, a.ua
    FROM unnest(p_event, p_request_id, p_user, p_actor_username, p_action, p_key, p_handle, p_domain, p_ip, p_user_agent)
      WITH ORDINALITY AS a(id, rid, uid, uname, act, kid, h, d, ip, ua, i)
    WHERE o_verified[a.i::int];

  SELECT * INTO d FROM rate_limit_decide(p_keys, p_req, p_idx, p_t, p_period, p_cost, p_pause_req, p_pause_scope,
    (SELECT array_agg(NOT x ORDER BY o) FROM unnest(o_verified) WITH ORDINALITY AS s(x, o)));
  o_allowed := d.o_allowed;
  o_pause_ms := d.o_pause_ms;
  o_wait_ms := d.o_wait_ms;

  -- A refusal is the attempt's outcome; its reason: the bucket furthest over its limit, or
  -- `upstream` when a pause holds the call back longer.
  IF false = ANY (o_allowed) THEN
    INSERT INTO audit_event_outcomes (event_id, outcome, detail)
      SELECT p_event[q], 'rate_limited', jsonb_build_object('error', 'rate_limited', 'reason',
          CASE WHEN d.o_pause_ms[q] > 0
                AND d.o_pause_ms[q] >= greatest(d.o_wait_ms[d.o_worst[q]] + p_cost[d.o_worst[q]] * p_t[d.o_worst[q]] - p_period[d.o_worst[q]], 0)
               THEN 'upstream' ELSE p_name[d.o_worst[q]] END)
      FROM generate_series(1, m) AS q
      WHERE o_verified[q] AND NOT o_allowed[q];
  END IF;

  -- The key's material goes back for admitted calls only.
  FOR q IN 1 .. m LOOP
    IF o_allowed[q] IS NOT TRUE THEN
      o_sealed[q] := NULL; o_wrapped[q] := NULL;
    END IF;
  END LOOP;
END $$;

-- Every audit filter gets an index ending in (at, seq). An outcome is the event's own, except for
-- a proxied call's attempt, whose outcome is a row of audit_event_outcomes written later: that row
-- now carries its event's (at, seq), copied on insert by the trigger below whoever writes it (this
-- version, the one before it during a rolling upgrade, or proxy_admit()).
--
-- Only what is instant happens here, in the migration's transaction: the columns (no default, so
-- no rewrite) and the triggers. The indexes are built concurrently and the rows written before are
-- given their position in batches, afterwards and while the service runs (src/db/online.ts): in
-- here they would hold the audit tables locked, refusing every audited call meanwhile, for seconds
-- per million events.
ALTER TABLE "audit_event_outcomes" ADD COLUMN "event_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "audit_event_outcomes" ADD COLUMN "event_seq" bigint;--> statement-breakpoint
CREATE FUNCTION audit_outcome_event_position() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  pos_at timestamptz;
  pos_seq bigint;
BEGIN
  SELECT e.at, e.seq INTO pos_at, pos_seq FROM audit_events e WHERE e.id = NEW.event_id;
  -- An outcome restored before its event (a data-only restore goes table by table) keeps what it
  -- brings.
  IF FOUND THEN
    NEW.event_at := pos_at;
    NEW.event_seq := pos_seq;
  END IF;
  RETURN NEW;
END;
$$;--> statement-breakpoint
CREATE TRIGGER audit_event_outcomes_event_position BEFORE INSERT ON audit_event_outcomes
  FOR EACH ROW EXECUTE FUNCTION audit_outcome_event_position();--> statement-breakpoint
-- Still append-only, with one exception: an outcome row without its event's position may be given
-- it (the event's own, nothing else; every other column as it was).
CREATE FUNCTION audit_outcome_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND OLD.event_at IS NULL
     AND (NEW.event_id, NEW.at, NEW.outcome, NEW.upstream_status, NEW.detail)
         IS NOT DISTINCT FROM (OLD.event_id, OLD.at, OLD.outcome, OLD.upstream_status, OLD.detail)
     AND EXISTS (SELECT 1 FROM audit_events e WHERE e.id = NEW.event_id AND e.at = NEW.event_at AND e.seq = NEW.event_seq) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END;
$$;--> statement-breakpoint
DROP TRIGGER audit_event_outcomes_no_update_delete ON audit_event_outcomes;--> statement-breakpoint
CREATE TRIGGER audit_event_outcomes_no_update_delete BEFORE UPDATE OR DELETE ON audit_event_outcomes
  FOR EACH ROW EXECUTE FUNCTION audit_outcome_refuse_change();

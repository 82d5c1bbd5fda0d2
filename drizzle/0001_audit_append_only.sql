-- The audit log is append-only for everyone, the table's owner included: the service owns the
-- tables it migrates, so privileges alone would not hold. Only a migration that drops these
-- triggers (run deliberately by an operator) can change history.
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END;
$$;
--> statement-breakpoint
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
--> statement-breakpoint
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
--> statement-breakpoint
CREATE TRIGGER audit_event_outcomes_no_update_delete BEFORE UPDATE OR DELETE ON audit_event_outcomes
  FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
--> statement-breakpoint
CREATE TRIGGER audit_event_outcomes_no_truncate BEFORE TRUNCATE ON audit_event_outcomes
  FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- Every audit filter gets its index ending in (at, seq). `domain`: a partial index (most events
-- have none). `outcome`: it is the event's own, except for a proxied call's attempt, whose outcome
-- is a row of audit_event_outcomes written later; that row now carries its event's (at, seq),
-- copied on insert by the trigger below whoever writes it (this version, the one before it during
-- a rolling upgrade, or proxy_admit()), so both halves of an outcome filter are ordered index scans.
ALTER TABLE "audit_event_outcomes" ADD COLUMN "event_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "audit_event_outcomes" ADD COLUMN "event_seq" bigint;--> statement-breakpoint
CREATE FUNCTION audit_outcome_event_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  SELECT e.at, e.seq INTO NEW.event_at, NEW.event_seq FROM audit_events e WHERE e.id = NEW.event_id;
  RETURN NEW;
END;
$$;--> statement-breakpoint
CREATE TRIGGER audit_event_outcomes_event_position BEFORE INSERT ON audit_event_outcomes
  FOR EACH ROW EXECUTE FUNCTION audit_outcome_event_position();--> statement-breakpoint
-- The rows written before: the append-only trigger is set aside for this one statement, which
-- adds a copy of what audit_events holds and changes nothing recorded.
ALTER TABLE "audit_event_outcomes" DISABLE TRIGGER audit_event_outcomes_no_update_delete;--> statement-breakpoint
UPDATE "audit_event_outcomes" o SET event_at = e.at, event_seq = e.seq FROM "audit_events" e WHERE e.id = o.event_id;--> statement-breakpoint
ALTER TABLE "audit_event_outcomes" ENABLE TRIGGER audit_event_outcomes_no_update_delete;--> statement-breakpoint
CREATE INDEX "audit_event_outcomes_outcome_at_idx" ON "audit_event_outcomes" USING btree ("outcome","event_at","event_seq");--> statement-breakpoint
CREATE INDEX "audit_events_domain_at_idx" ON "audit_events" USING btree ("domain","at","seq") WHERE "audit_events"."domain" is not null;--> statement-breakpoint
CREATE INDEX "audit_events_outcome_at_idx" ON "audit_events" USING btree ("outcome","at","seq") WHERE "audit_events"."outcome" is not null;

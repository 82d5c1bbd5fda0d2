DROP INDEX "audit_events_at_idx";--> statement-breakpoint
DROP INDEX "audit_events_actor_idx";--> statement-breakpoint
DROP INDEX "audit_events_key_owner_idx";--> statement-breakpoint
DROP INDEX "audit_events_key_idx";--> statement-breakpoint
DROP INDEX "audit_events_handle_idx";--> statement-breakpoint
DROP INDEX "audit_events_action_idx";--> statement-breakpoint
CREATE INDEX "audit_events_at_seq_idx" ON "audit_events" USING btree ("at","seq");--> statement-breakpoint
CREATE INDEX "audit_events_actor_at_idx" ON "audit_events" USING btree ("actor_id","at","seq");--> statement-breakpoint
CREATE INDEX "audit_events_key_owner_at_idx" ON "audit_events" USING btree ("key_owner_id","at","seq");--> statement-breakpoint
CREATE INDEX "audit_events_key_at_idx" ON "audit_events" USING btree ("key_id","at","seq");--> statement-breakpoint
CREATE INDEX "audit_events_handle_at_idx" ON "audit_events" USING btree ("handle","at","seq");--> statement-breakpoint
CREATE INDEX "audit_events_action_at_idx" ON "audit_events" USING btree ("action","at","seq");
CREATE TABLE "haltman_keys" (
	"id" uuid PRIMARY KEY NOT NULL,
	"owner_id" uuid NOT NULL,
	"name" text NOT NULL,
	"last4" text NOT NULL,
	"fingerprint" "bytea" NOT NULL,
	"sealed_key" "bytea" NOT NULL,
	"wrapped_dek" "bytea" NOT NULL,
	"keyring_id" text NOT NULL,
	"status" text DEFAULT 'ok' NOT NULL,
	"status_reason" text,
	"last_used_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "haltman_keys_fingerprint_unique" UNIQUE("fingerprint")
);
--> statement-breakpoint
CREATE TABLE "key_grants" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"key_id" uuid NOT NULL,
	"user_id" uuid NOT NULL,
	"granted_by" uuid NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"expires_at" timestamp with time zone,
	"revoked_at" timestamp with time zone,
	"revoked_by" uuid
);
--> statement-breakpoint
CREATE TABLE "vault_secrets" (
	"name" text PRIMARY KEY NOT NULL,
	"sealed" "bytea" NOT NULL,
	"keyring_id" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "haltman_keys" ADD CONSTRAINT "haltman_keys_owner_id_users_id_fk" FOREIGN KEY ("owner_id") REFERENCES "public"."users"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "key_grants" ADD CONSTRAINT "key_grants_key_id_haltman_keys_id_fk" FOREIGN KEY ("key_id") REFERENCES "public"."haltman_keys"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "key_grants" ADD CONSTRAINT "key_grants_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "haltman_keys_owner_idx" ON "haltman_keys" USING btree ("owner_id");--> statement-breakpoint
CREATE INDEX "haltman_keys_keyring_idx" ON "haltman_keys" USING btree ("keyring_id");--> statement-breakpoint
CREATE UNIQUE INDEX "key_grants_one_open_idx" ON "key_grants" USING btree ("key_id","user_id") WHERE "key_grants"."revoked_at" is null;--> statement-breakpoint
CREATE INDEX "key_grants_user_idx" ON "key_grants" USING btree ("user_id");
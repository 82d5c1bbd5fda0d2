// Idempotency-Key for proxied creates, scoped to the acting user. The first request claims the key;
// a repeat with the same body gets the stored answer (24 h), another body 422, a repeat while the
// first is in flight 409. Only answers upstream gave below 500 are kept: after a 5xx, or a refusal
// of ours (429), the claim is released so that the client may retry.
import { createHash, randomUUID } from "node:crypto";
import { and, eq, sql } from "drizzle-orm";
import { rowsOf, type Executor } from "../db/client.js";
import { idempotencyKeys } from "../db/schema.js";

export const IDEMPOTENCY_TTL_H = 24;
export const MAX_IDEMPOTENCY_KEY = 255;

export type Claim =
  | { kind: "claimed"; token: string }
  | { kind: "replay"; status: number; body: string }
  | { kind: "mismatch" }
  | { kind: "in_flight" };

export const requestHash = (parts: unknown) => createHash("sha256").update(JSON.stringify(parts)).digest();

export async function claim(ex: Executor, userId: string, key: string, hash: Buffer, abandonAfterS: number): Promise<Claim> {
  const token = randomUUID();
  // Take the key if it is new, older than the TTL, or claimed by a request that never finished
  // (a crash) longer ago than any upstream call can take.
  const taken = await rowsOf<{ key: string }>(
    ex,
    sql`insert into idempotency_keys (user_id, key, request_hash, state, claim_token) values (${userId}, ${key}, ${hash}, 'in_flight', ${token}::uuid)
      on conflict (user_id, key) do update set request_hash = excluded.request_hash, state = 'in_flight', status = null, body = null,
        created_at = now(), claim_token = excluded.claim_token
      where idempotency_keys.created_at < now() - make_interval(hours => ${IDEMPOTENCY_TTL_H})
         or (idempotency_keys.state = 'in_flight' and idempotency_keys.created_at < now() - make_interval(secs => ${abandonAfterS}))
      returning key`,
  );
  if (taken.length > 0) return { kind: "claimed", token };
  const [row] = await ex
    .select()
    .from(idempotencyKeys)
    .where(and(eq(idempotencyKeys.userId, userId), eq(idempotencyKeys.key, key)))
    .limit(1);
  if (!row) return claim(ex, userId, key, hash, abandonAfterS); // released meanwhile
  if (!Buffer.from(row.requestHash).equals(hash)) return { kind: "mismatch" };
  if (row.state === "in_flight") return { kind: "in_flight" };
  return { kind: "replay", status: Number(row.status), body: row.body ?? "" };
}

// Both act only on the caller's own claim: a request slow enough to have had its claim taken over
// (a crash is presumed after the upstream timeout and a minute) must not touch its successor's.
export async function complete(ex: Executor, userId: string, key: string, token: string, status: number, body: string): Promise<void> {
  await ex
    .update(idempotencyKeys)
    .set({ state: "done", status, body })
    .where(and(eq(idempotencyKeys.userId, userId), eq(idempotencyKeys.key, key), eq(idempotencyKeys.state, "in_flight"), eq(idempotencyKeys.claimToken, token)));
}

export async function release(ex: Executor, userId: string, key: string, token: string): Promise<void> {
  await ex
    .delete(idempotencyKeys)
    .where(and(eq(idempotencyKeys.userId, userId), eq(idempotencyKeys.key, key), eq(idempotencyKeys.state, "in_flight"), eq(idempotencyKeys.claimToken, token)));
}

export async function sweepIdempotencyKeys(ex: Executor): Promise<void> {
  await ex.execute(sql`delete from idempotency_keys where created_at < now() - make_interval(hours => ${IDEMPOTENCY_TTL_H})`);
}

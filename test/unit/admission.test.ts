// services/admission.ts with proxy_admit() on a real database: one group of calls, some of whose
// key choices no longer hold. A stale choice is answered unverified and nothing else happens to it
// (no attempt, no quota); the others are decided in arrival order, a refusal recorded as the
// attempt's outcome, and only an admitted call gets the key's material.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { rowsOf } from "../../src/db/client.js";
import { createAdmission, type AdmissionRequest } from "../../src/services/admission.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

let database: TestDatabase;
const user = { id: randomUUID(), username: "adm-user", role: "member" as const };
const keyId = randomUUID();
beforeAll(async () => {
  database = await freshDatabase();
  await database.db.execute(sql`insert into users (id, username, password_hash, role) values (${user.id}, ${user.username}, 'x', 'member')`);
  await database.db.execute(sql`insert into haltman_keys (id, owner_id, name, last4, fingerprint, sealed_key, wrapped_dek, keyring_id)
    values (${keyId}, ${user.id}, 'k', 'abcd', ${Buffer.from(keyId)}, ${Buffer.from("sealed")}, ${Buffer.from("wrapped")}, 'k1')`);
});
afterAll(() => database.drop());

const meta = { requestId: "req", ip: "10.0.0.1", userAgent: "test" };
const tight = parseRatePolicy("1/min")!;
const open = parseRatePolicy("10/min")!; // one call is 6 s of the bucket: two would show

function request(chosenKeyId: string, tag: string): AdmissionRequest {
  return {
    caller: user,
    key: { id: chosenKeyId, ownerId: user.id, userLimits: {}, only: true },
    buckets: [
      { name: "user", key: `user:${tag}`, policy: tight },
      { name: "global", key: `global:${tag}`, policy: open },
    ],
    pauses: [],
    attempt: { eventId: randomUUID(), action: "handle.create", handle: `h-${randomUUID().slice(0, 8)}`, domain: null, meta },
  };
}

describe("one group through proxy_admit()", () => {
  it("a stale choice beside valid ones: unverified and untouched; the others decided in order", async () => {
    const admit = createAdmission(database);
    const tag = randomUUID();
    const stale = request(randomUUID(), tag); // a key that does not exist (deleted since it was chosen)
    const first = request(keyId, tag);
    const second = request(keyId, tag);
    const [s, f, r] = await Promise.all([admit(stale), admit(first), admit(second)]);

    expect(s).toEqual({ verified: false });
    expect(f.verified && f.decision.allowed).toBe(true);
    expect(f.verified && f.key && Buffer.from(f.key.sealedKey).toString()).toBe("sealed");
    expect(r.verified && r.decision.allowed).toBe(false);
    expect(r.verified && r.decision.refusedBy).toBe("user");
    expect(r.verified && r.key).toBeUndefined();

    const events = await rowsOf<{ id: string; outcome: string | null; reason: string | null }>(
      database.db,
      sql`select e.id, coalesce(o.outcome, e.outcome) as outcome, o.detail->>'reason' as reason
          from audit_events e left join audit_event_outcomes o on o.event_id = e.id
          where e.id in (${stale.attempt.eventId}, ${first.attempt.eventId}, ${second.attempt.eventId})`,
    );
    const byId = new Map(events.map((e) => [e.id, e]));
    expect(byId.has(stale.attempt.eventId)).toBe(false);
    expect(byId.get(first.attempt.eventId)?.outcome).toBeNull(); // an attempt, its outcome to follow
    expect(byId.get(second.attempt.eventId)).toMatchObject({ outcome: "rate_limited", reason: "user" });

    // the shared bucket spent one call: the admitted one (not the stale, not the refused)
    const [g] = await rowsOf<{ wait: number }>(
      database.db,
      sql`select extract(epoch from tat - now()) * 1000 as wait from rate_limit_buckets where key = ${`global:${tag}`}`,
    );
    const t = open.periodMs / open.limit;
    expect(Number(g!.wait)).toBeGreaterThan(0.8 * t);
    expect(Number(g!.wait)).toBeLessThanOrEqual(1.01 * t);
  });
});

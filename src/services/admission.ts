// Admitting a proxied call: everything before upstream in one statement (proxy_admit(), migration
// 0008), grouped with the calls that arrive while a group is on its way (batch.ts). The database
// checks the key choice this instance remembers, records the attempt, decides the three rate
// limits on its own clock and records a refusal; the answer carries the key's sealed material for
// an admitted call, read in the same statement. One round trip before upstream, and the attempt is
// durable (committed) before the call can go.
import type { Database, SqlParam } from "../db/client.js";
import { pgArray } from "../db/arrays.js";
import type { KeyEnvelope, KeyRowRef } from "../crypto/envelope.js";
import { auditRow, type AuditAction, type RequestMeta } from "./audit.js";
import { batched, type BatchOptions } from "./batch.js";
import { bucketArrays, decideArgs, toDecision, waitsByRequest, type Bucket, type Decision } from "./rate-limit.js";
import type { Caller, ChosenKey } from "./vault.js";

export type AdmissionRequest = {
  caller: Caller;
  key: ChosenKey;
  buckets: Bucket[];
  pauses: string[];
  /** the attempt's audit record */
  attempt: { eventId: string; action: AuditAction; handle: string | null; domain: string | null; meta: RequestMeta };
};

export type Admission =
  /** the key choice no longer holds (grant revoked, key deleted, another key usable, overrides changed): choose again */
  | { verified: false }
  | { verified: true; decision: Decision; key?: KeyRowRef & KeyEnvelope };

export type Admitter = (req: AdmissionRequest) => Promise<Admission>;

/** proxy_admit()'s one row: per request, except o_wait_ms (per request and bucket, in input order). */
type Row = {
  o_verified: (boolean | null)[] | null;
  o_allowed: (boolean | null)[] | null;
  o_pause_ms: number[] | null;
  o_wait_ms: number[] | null;
  o_owner: (string | null)[] | null;
  o_sealed: (Uint8Array | null)[] | null;
  o_wrapped: (Uint8Array | null)[] | null;
  o_keyring: (string | null)[] | null;
};

const ADMIT = `select o_verified, o_allowed, o_pause_ms, o_wait_ms, o_owner, o_sealed, o_wrapped, o_keyring
  from proxy_admit($1::uuid[], $2::uuid[], $3::boolean[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],
    $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int[], $15::int[], $16::float8[], $17::float8[],
    $18::float8[], $19::int[], $20::text[], $21::text[])`;

export function createAdmission(database: Pick<Database, "query">, opts: BatchOptions = {}): Admitter {
  return batched<AdmissionRequest, Admission>(async (group) => {
    const rows = group.map((r) =>
      auditRow(
        { action: r.attempt.action, outcome: null, actor: r.caller, meta: r.attempt.meta, keyId: r.key.id, handle: r.attempt.handle, domain: r.attempt.domain },
        r.attempt.eventId,
      ),
    );
    const b = bucketArrays(group.map((r) => ({ buckets: r.buckets, pauses: r.pauses })));
    const col = (f: (i: number) => SqlParam) => pgArray(group.map((_, i) => f(i)));
    const [a] = await database.query<Row>(ADMIT, [
      col((i) => group[i]!.caller.id),
      col((i) => group[i]!.key.id),
      col((i) => group[i]!.key.only),
      col((i) => JSON.stringify(group[i]!.key.userLimits)),
      col((i) => rows[i]!.id!),
      col((i) => rows[i]!.requestId),
      col((i) => rows[i]!.actorUsername ?? null),
      col((i) => rows[i]!.action),
      col((i) => rows[i]!.handle ?? null),
      col((i) => rows[i]!.domain ?? null),
      col((i) => rows[i]!.ip ?? null),
      col((i) => rows[i]!.userAgent ?? null),
      ...decideArgs(b),
      pgArray(b.name),
    ]);
    const waits = waitsByRequest(group, a?.o_wait_ms);
    return group.map((r, i): Admission => {
      if (a?.o_verified?.[i] !== true) return { verified: false };
      const allowed = a.o_allowed?.[i] === true;
      const decision = toDecision(r.buckets, 1, allowed, Number(a.o_pause_ms?.[i] ?? 0), waits[i]!);
      const sealed = a.o_sealed?.[i];
      const wrapped = a.o_wrapped?.[i];
      // (admitted without its material cannot happen: proxy.ts answers it as a key that cannot be opened)
      if (!allowed || !sealed || !wrapped) return { verified: true, decision };
      return {
        verified: true,
        decision,
        key: { id: r.key.id, ownerId: a.o_owner![i]!, sealedKey: Buffer.from(sealed), wrappedDek: Buffer.from(wrapped), keyringId: a.o_keyring![i]! },
      };
    });
  }, opts);
}

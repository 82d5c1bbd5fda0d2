// Refusing a flood cheaply. When the database refuses a call for its caller's own limit, it also
// says how long until that caller's next call could pass. This instance then refuses that caller's
// calls of that action itself, without asking the database, for that long and at most
// LOCAL_REFUSAL_MAX_MS: a frontend stuck in a retry loop costs one audit row a call, not a rate-limit
// decision. Exactness holds: the window starts when the refused call was handed to the database
// (before the database decided), so it always ends before the database would admit again; a call
// refused here is one the database would have refused. The window is cut short by an admin
// changing that user's limits, or ending their use of a key (a grant revoked, a key deleted: the
// contract checks the key choice before the limits), on this instance at once, a refusal still
// on its way from the database when the change came included, and on other instances within the
// cap.
// Every such refusal is still audited (durably, before the answer) like any other.
import type { BucketState } from "./rate-limit.js";
import type { UpstreamOperation } from "../upstream/client.js";

/** The longest an instance refuses on its own after the database refused. */
export const LOCAL_REFUSAL_MAX_MS = 1_000;

export type LocalRefusal = {
  /** until when (performance.now()) this instance refuses on its own */
  until: number;
  /** when the database's next admission can be, at the earliest (performance.now()) */
  nextAllowed: number;
  /** the RateLimit states of the database's refusal */
  states: BucketState[];
};

export type LocalRefusals = {
  /** The caller's current local refusal for this action, if any. */
  check(userId: string, op: UpstreamOperation): LocalRefusal | undefined;
  /** The database refused a call handed to it at `askedAt` for the caller's own limit, `retryMs` before it could pass. */
  note(userId: string, op: UpstreamOperation, askedAt: number, retryMs: number, states: BucketState[]): void;
  forgetUser(userId: string): void;
};

export function createLocalRefusals(opts: { maxMs?: number; maxEntries?: number; now?: () => number } = {}): LocalRefusals {
  const maxMs = opts.maxMs ?? LOCAL_REFUSAL_MAX_MS;
  const maxEntries = opts.maxEntries ?? 10_000;
  const now = opts.now ?? (() => performance.now());
  const byKey = new Map<string, LocalRefusal>();
  // When each user was last forgotten: a refusal the database decided before then (under the
  // limits or the key access the change ended) and answered after it is not taken up. Kept for
  // maxMs, beyond which note() would not take such a refusal anyway.
  const forgottenAt = new Map<string, number>();
  const key = (userId: string, op: UpstreamOperation) => `${userId}|${op}`;
  return {
    check(userId, op) {
      const k = key(userId, op);
      const r = byKey.get(k);
      if (!r) return undefined;
      if (now() < r.until) return r;
      byKey.delete(k);
      return undefined;
    },
    note(userId, op, askedAt, retryMs, states) {
      if (!(retryMs > 0) || maxMs <= 0) return;
      const until = askedAt + Math.min(retryMs, maxMs);
      if (until <= now()) return;
      const forgotten = forgottenAt.get(userId);
      if (forgotten !== undefined && askedAt <= forgotten) return;
      const k = key(userId, op);
      byKey.delete(k);
      if (byKey.size >= maxEntries) byKey.delete(byKey.keys().next().value!);
      byKey.set(k, { until, nextAllowed: askedAt + retryMs, states });
    },
    forgetUser(userId) {
      for (const k of byKey.keys()) if (k.startsWith(`${userId}|`)) byKey.delete(k);
      const at = now();
      for (const [u, t] of forgottenAt) {
        if (t >= at - maxMs) break;
        forgottenAt.delete(u);
      }
      forgottenAt.delete(userId); // (re-inserted last: the map stays in time order)
      forgottenAt.set(userId, at);
    },
  };
}

// Password hashing: argon2id at (at least) OWASP's minimum, on a bounded number of libuv threads,
// so a login storm queues here instead of exhausting memory or starving the database driver.
import argon2 from "argon2";
import { rateLimited } from "../errors.js";

export type HashParams = { memoryCost: number; timeCost: number; parallelism: number };

/** OWASP's minimum for argon2id: 19 MiB, 2 passes, 1 lane (about 50 ms a hash on this machine). */
export const DEFAULT_HASH_PARAMS: HashParams = { memoryCost: 19_456, timeCost: 2, parallelism: 1 };

export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 1024;

/** Counts code points, as a person would: "8 characters" of emoji is 8, not 16. */
export function passwordLength(p: string): number {
  let n = 0;
  for (const _ of p) n++;
  return n;
}

export type PasswordHasher = {
  hash(password: string): Promise<string>;
  /** Verifies; `needsRehash` when the stored parameters are weaker than the current ones. */
  verify(hash: string, password: string): Promise<{ ok: boolean; needsRehash: boolean }>;
  /** Burns the time of one verification, so an unknown user costs what a wrong password costs. */
  verifyDummy(password: string): Promise<void>;
  readonly params: HashParams;
  /** hashes running and waiting, for /metrics */
  stats(): { running: number; waiting: number };
};

export function createPasswordHasher(opts: {
  params?: HashParams;
  /** hashes at once: each holds memoryCost KiB and a libuv thread */
  concurrency?: number;
  /** queued beyond this, a login is refused at once with 429 rather than waiting */
  maxWaiting?: number;
} = {}): PasswordHasher {
  const params = opts.params ?? DEFAULT_HASH_PARAMS;
  const concurrency = opts.concurrency ?? 2;
  const maxWaiting = opts.maxWaiting ?? 64;
  let running = 0;
  const waiting: Array<() => void> = [];

  async function withSlot<T>(fn: () => Promise<T>): Promise<T> {
    if (running >= concurrency) {
      if (waiting.length >= maxWaiting) {
        throw rateLimited("login", 1, "too many logins at once; retry in a second");
      }
      await new Promise<void>((resolve) => waiting.push(resolve));
    } else {
      running++;
    }
    try {
      return await fn();
    } finally {
      // Hand the slot straight to the next waiter (running stays the same), or free it.
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  }

  const options = { type: argon2.argon2id, ...params } as const;
  let dummy: Promise<string> | undefined;

  return {
    params,
    hash: (password) => withSlot(() => argon2.hash(password, options)),
    async verify(hash, password) {
      const ok = await withSlot(() => argon2.verify(hash, password).catch(() => false));
      return { ok, needsRehash: ok && argon2.needsRehash(hash, params) };
    },
    async verifyDummy(password) {
      dummy ??= argon2.hash("haltman-bff dummy password", options);
      const h = await dummy;
      await withSlot(() => argon2.verify(h, password).catch(() => false));
    },
    stats: () => ({ running, waiting: waiting.length }),
  };
}

// Password hashing: argon2id at (at least) OWASP's minimum, a bounded number at once, so a login
// storm queues here instead of exhausting memory. The service hashes in a child process of its
// own at the lowest CPU priority (hash-process.ts): a storm then takes the cores the proxied calls
// and the database leave idle; the CLI and the tests hash in process.
import argon2 from "argon2";
import { fork, type ChildProcess } from "node:child_process";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
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

/**
 * Hashes at once by default. In process: all the cores but one (at least one): each hash keeps a
 * core busy for ~50 ms, and two at once on two cores left the proxied calls and PostgreSQL too
 * little during a login storm. In the low-priority child: one for every two cores (at least one).
 * Even at nice 19 a hash holds its core until a woken process preempts it; with a hash on each of
 * two cores a login storm raised the proxied calls' p99 by +10 to +95 ms (mean +36), with one by
 * -6 to +27 ms (mean +12), for as many logins (bench:profile -- storm rate 500, six runs each,
 * alternated): logins wait for idle time either way.
 */
export function defaultHashConcurrency(isolated = false): number {
  const cores = availableParallelism();
  return isolated ? Math.max(1, Math.floor(cores / 2)) : Math.max(1, cores - 1);
}

type HashOptions = HashParams & { type: number };

/** Where the hashing happens. */
type Engine = {
  hash(password: string, options: HashOptions): Promise<string>;
  verify(hash: string, password: string): Promise<boolean>;
  close(): Promise<void>;
  /** the hashing process, when there is one (tests) */
  pid?(): number | undefined;
  /** ends the hashing process (what it was doing fails); the next hash starts another */
  restart?(): void;
};

const inProcess: Engine = {
  hash: (password, options) => argon2.hash(password, options as Parameters<typeof argon2.hash>[1] & { raw?: false }),
  verify: (hash, password) => argon2.verify(hash, password).catch(() => false),
  close: async () => {},
};

/**
 * argon2 in a child process (hash-process.ts) at the lowest priority. Started at first use and
 * again after it ended; a hash in progress when it ends fails (the login answers 503). Passwords
 * go to it over the IPC pipe between the two processes, nowhere else.
 */
function childProcessEngine(): Engine {
  const here = fileURLToPath(import.meta.url);
  const entry = here.replace(/passwords\.(ts|js)$/, "hash-process.$1");
  let child: ChildProcess | undefined;
  let next = 0;
  type Pending = { resolve: (v: unknown) => void; reject: (e: unknown) => void; child: ChildProcess };
  const pending = new Map<number, Pending>();
  const settle = (id: number) => {
    const p = pending.get(id);
    if (p) pending.delete(id);
    return p;
  };
  /** Fails what was asked of that process (or of any), not of one started since. */
  const failAll = (of?: ChildProcess) => {
    for (const [id, p] of pending) if (!of || p.child === of) settle(id)!.reject(new HashingUnavailable());
  };
  const get = () => {
    if (child) return child;
    // None of the service's node flags (an --inspect port, an --env-file); from the sources
    // (tests, `npm run dev`), the TypeScript loader.
    const execArgv = entry.endsWith(".ts") ? ["--import", "tsx"] : [];
    // None of the service's environment (it holds the keyring and the database's URL), but glibc's
    // arena settings: that process is where argon2's 19 MiB buffers live (see the Dockerfile).
    const env: Record<string, string> = {};
    for (const k of ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "PATH"]) if (process.env[k]) env[k] = process.env[k]!;
    const c = fork(entry, [], { execArgv, env, stdio: ["ignore", "ignore", "inherit", "ipc"], serialization: "advanced" });
    c.on("message", (m: { id: number; ok: boolean; value?: unknown }) => {
      const p = settle(m.id);
      if (!p) return;
      if (m.ok) p.resolve(m.value);
      else p.reject(new HashingUnavailable());
    });
    const gone = () => {
      if (child === c) child = undefined;
      failAll(c);
    };
    c.on("exit", gone);
    c.on("error", gone);
    // Neither keeps the service alive: it ends when the server does.
    c.unref();
    (c.channel as { unref?: () => void } | undefined)?.unref?.();
    child = c;
    return c;
  };
  const ask = <T>(msg: Record<string, unknown>) =>
    new Promise<T>((resolve, reject) => {
      const id = ++next;
      let c: ChildProcess;
      try {
        c = get();
      } catch {
        reject(new HashingUnavailable());
        return;
      }
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject, child: c });
      c.send({ id, ...msg }, (err) => {
        if (err) settle(id)?.reject(new HashingUnavailable());
      });
    });
  return {
    hash: (password, options) => ask<string>({ op: "hash", password, options }),
    verify: (hash, password) => ask<boolean>({ op: "verify", hash, password }),
    async close() {
      const c = child;
      child = undefined;
      if (c && c.exitCode === null) {
        const ended = new Promise((r) => c.once("exit", r));
        c.kill();
        await ended;
      }
      failAll();
    },
    pid: () => child?.pid,
    restart() {
      const c = child;
      child = undefined;
      if (c && c.exitCode === null) c.kill("SIGKILL");
      failAll(c);
    },
  };
}

/** The longest a hash may wait in the hashing process before its login answers 503. */
export const HASH_TIMEOUT_MS = 15_000;

/** The hashing process could not answer (it ended, could not be started, or took too long). */
export class HashingUnavailable extends Error {
  readonly code = "HASHING_UNAVAILABLE";
  constructor() {
    super("password hashing is unavailable");
    this.name = "HashingUnavailable";
  }
}

/**
 * Whether a stored hash is weaker than `params`: not argon2id, another version, or memory, time or
 * parallelism below them. (argon2's own needsRehash is true for any difference, so a hash made
 * stronger, say before a rollback, would be rewritten weaker; and it ignores the type.)
 */
export function weakerThan(hash: string, params: HashParams): boolean {
  // PHC string: $argon2id$v=19$m=65536,p=1,t=3$salt$hash (argon2 writes the parameters sorted).
  const m = /^\$(argon2(?:id|i|d))\$v=(\d+)\$([a-z0-9=,]+)\$/.exec(hash);
  if (!m) return true;
  const p = Object.fromEntries(m[3]!.split(",").map((kv) => kv.split("=") as [string, string]));
  const below = (v: string | undefined, min: number) => v === undefined || !/^\d+$/.test(v) || Number(v) < min;
  return m[1] !== "argon2id" || Number(m[2]) !== 0x13 || below(p.m, params.memoryCost) || below(p.t, params.timeCost) || below(p.p, params.parallelism);
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
  /** Ends the hashing process, if any (shutdown). */
  close?(): Promise<void>;
  /** the hashing process's pid, when hashing is isolated and it runs */
  processId?(): number | undefined;
};

export function createPasswordHasher(opts: {
  params?: HashParams;
  /** hashes at once: each holds memoryCost KiB and a libuv thread */
  concurrency?: number;
  /** queued beyond this, a login is refused at once with 429 rather than waiting */
  maxWaiting?: number;
  /** hash in a child process at the lowest CPU priority (the service does; the CLI does not) */
  isolated?: boolean;
  /** isolated: the longest a hash may take before its login answers 503 */
  timeoutMs?: number;
} = {}): PasswordHasher {
  const params = opts.params ?? DEFAULT_HASH_PARAMS;
  const engine = opts.isolated ? childProcessEngine() : inProcess;
  const timeoutMs = opts.isolated ? (opts.timeoutMs ?? HASH_TIMEOUT_MS) : undefined;
  const concurrency = opts.concurrency ?? defaultHashConcurrency(opts.isolated);
  const maxWaiting = opts.maxWaiting ?? 64;
  let running = 0;
  const waiting: Array<() => void> = [];

  async function withSlot<T>(fn: () => Promise<T>): Promise<T> {
    if (running >= concurrency) {
      if (waiting.length >= maxWaiting) {
        // Logins, password changes and user creation all hash: the message says what is busy.
        throw rateLimited("login", 1, "too many passwords being hashed at once (logins, password changes, new users); retry in a second");
      }
      await new Promise<void>((resolve) => waiting.push(resolve));
    } else {
      running++;
    }
    // The slot is held until the hash has ended, even past its caller's timeout below: argon2
    // cannot be stopped, and a slot given to the next hash meanwhile would run more of them at
    // once than `concurrency` (each with its memory), just when the machine is too busy for them.
    const work = fn();
    const free = () => {
      // Hand the slot straight to the next waiter (running stays the same), or free it.
      const next = waiting.shift();
      if (next) next();
      else running--;
    };
    work.then(free, free);
    if (timeoutMs === undefined) return work;
    return new Promise<T>((resolve, reject) => {
      // A hash that takes this long (the machine saturated: the child only gets idle time) is
      // answered 503 rather than holding the login for ever. One still not done as long again
      // means a hashing process that no longer answers: it is ended (its hashes fail, their slots
      // free) and the next hash starts another.
      const timer = setTimeout(() => {
        reject(new HashingUnavailable());
        const wedged = setTimeout(() => engine.restart?.(), timeoutMs);
        wedged.unref();
        work.then(() => clearTimeout(wedged), () => clearTimeout(wedged));
      }, timeoutMs);
      timer.unref();
      work.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  const options = { type: argon2.argon2id, ...params } as const;
  let dummy: Promise<string> | undefined;

  return {
    params,
    hash: (password) => withSlot(() => engine.hash(password, options)),
    async verify(hash, password) {
      const ok = await withSlot(() => engine.verify(hash, password));
      return { ok, needsRehash: ok && weakerThan(hash, params) };
    },
    async verifyDummy(password) {
      // Made once, where every hash is made (the hashing process, in a slot), not on this thread.
      dummy ??= withSlot(() => engine.hash("haltman-bff dummy password", options));
      const h = await dummy.catch((err) => {
        dummy = undefined;
        throw err;
      });
      await withSlot(() => engine.verify(h, password));
    },
    stats: () => ({ running, waiting: waiting.length }),
    close: () => engine.close(),
    processId: () => engine.pid?.(),
  };
}

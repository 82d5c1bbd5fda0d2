// The session gate against a real database, on a clock of the test's: a state is never older than
// the TTL, a session in use is read again in the background (so calls do not wait on the
// database once every TTL), and forget() wins over a load already under way.
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sessions, users } from "../../src/db/schema.js";
import { createSession, createSessionGate, type SessionGate } from "../../src/services/sessions.js";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

describe("session gate", () => {
  let database: TestDatabase;
  let userId: string;
  beforeAll(async () => {
    database = await freshDatabase();
    const [u] = await database.db.insert(users).values({ username: "gate", passwordHash: "x", role: "member" }).returning({ id: users.id });
    userId = u!.id;
  });
  afterAll(() => database?.drop());

  const newSession = async () => (await createSession(database.db, { userId, refreshTtlS: 3600, ip: null, userAgent: null })).sessionId;
  const revoke = (sessionId: string) => database.db.update(sessions).set({ revokedAt: new Date(), revokedReason: "test" }).where(eq(sessions.id, sessionId));
  /**
   * A gate on a clock the test moves, counting its reads of the database; `hold(n)` keeps the
   * n-th read's answer from the gate until `release()` (a slow read: the database has answered,
   * which `answered` tells, and the gate is not told yet).
   */
  const gateOnClock = (opts: { maxEntries?: number } = {}) => {
    const clock = { t: 1_000_000 };
    let reads = 0;
    const holds = new Map<number, { until: Promise<void>; answer: () => void }>();
    const hold = (n: number) => {
      let release!: () => void;
      let answer!: () => void;
      const until = new Promise<void>((r) => (release = r));
      const answered = new Promise<void>((r) => (answer = r));
      holds.set(n, { until, answer });
      return { release, answered };
    };
    // the query builder, its answer held (every method of the chain stays wrapped)
    const held = (builder: object, h: { until: Promise<void>; answer: () => void }): object =>
      new Proxy(builder, {
        get(target, prop) {
          const v = Reflect.get(target, prop, target) as unknown;
          if (typeof v !== "function") return v;
          if (prop === "then") {
            return (res: (x: unknown) => unknown, rej: (e: unknown) => unknown) =>
              (target as PromiseLike<unknown>)
                .then((rows) => {
                  h.answer();
                  return h.until.then(() => rows);
                })
                .then(res, rej);
          }
          return (...args: unknown[]) => held((v as (...a: unknown[]) => object).apply(target, args), h);
        },
      });
    const counting = new Proxy(database.db, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (prop !== "select") return v;
        return (...args: unknown[]) => {
          const builder = (v as (...a: unknown[]) => object).apply(receiver, args);
          const h = holds.get(++reads);
          return h ? held(builder, h) : builder;
        };
      },
    });
    const answers: string[] = [];
    const gate: SessionGate = createSessionGate(counting, { ttlMs: 2_000, now: () => clock.t, observe: (a) => answers.push(a), ...opts });
    return { gate, clock, reads: () => reads, answers, hold };
  };

  it("answers from memory within the TTL, and reads again once it has passed", async () => {
    const { gate, clock, reads } = gateOnClock();
    const sid = await newSession();
    expect((await gate.check(sid))?.active).toBe(true);
    expect(reads()).toBe(1);
    await revoke(sid);
    clock.t += 900; // under half the TTL: memory, no read
    expect((await gate.check(sid))?.active).toBe(true);
    expect(reads()).toBe(1);
    clock.t += 1_100; // 2 s: the revocation is seen by this very call
    expect((await gate.check(sid))?.active).toBe(false);
    expect(reads()).toBe(2);
  });

  it("reads a session in use again in the background past half the TTL: the next call has it fresh, before the TTL", async () => {
    const { gate, clock, reads, answers } = gateOnClock();
    const sid = await newSession();
    expect((await gate.check(sid))?.active).toBe(true);
    await revoke(sid);
    clock.t += 1_200;
    // answered from memory at once (still within the TTL), and read again meanwhile
    expect((await gate.check(sid))?.active).toBe(true);
    expect(reads()).toBe(2);
    await gate.settled();
    clock.t += 100; // 1.3 s after the first read: without the refresh this would still be memory's "active"
    expect((await gate.check(sid))?.active).toBe(false);
    expect(reads()).toBe(2);
    // only the first call waited for the database (what session_checks_total counts)
    expect(answers).toEqual(["database", "memory", "memory"]);
  });

  it("a state's age counts from when it was asked for, and one background read at a time per session", async () => {
    const { gate, clock, reads } = gateOnClock();
    const sid = await newSession();
    const first = gate.check(sid); // asked now...
    clock.t += 1_500; // ...answered 1.5 s later (a slow database)
    expect((await first)?.active).toBe(true);
    await revoke(sid);
    clock.t += 500; // 2 s after it was asked for: too old, however recently it came back
    expect((await gate.check(sid))?.active).toBe(false);
    expect(reads()).toBe(2);
    clock.t += 1_500;
    await Promise.all([gate.check(sid), gate.check(sid), gate.check(sid)]);
    expect(reads()).toBe(3); // three calls past half the TTL: one background read
    await gate.settled();
  });

  it("forget() wins over a read under way: what it read is not remembered", async () => {
    const { gate, reads } = gateOnClock();
    const sid = await newSession();
    const pending = gate.check(sid);
    gate.forget(sid);
    expect((await pending)?.active).toBe(true); // the read under way answers its own call...
    await revoke(sid);
    expect((await gate.check(sid))?.active).toBe(false); // ...and was not kept: this call read again
    expect(reads()).toBe(2);
  });

  it("does not join a read asked for a TTL ago or more: the call reads again; the old read's end leaves the new one be", async () => {
    const { gate, clock, reads, hold } = gateOnClock();
    const sid = await newSession();
    const read1 = hold(1);
    const read2 = hold(2);
    const slow = gate.check(sid); // read 1: the database answers "active", the gate is not told yet
    await read1.answered;
    clock.t += 2_000;
    await revoke(sid);
    const fresh = gate.check(sid); // read 1 was asked for 2 s ago: too old to join
    expect(reads()).toBe(2);
    read1.release();
    expect((await slow)?.active).toBe(true); // its own call, made before the revocation
    const joined = gate.check(sid); // read 2 is still under way, and recent: joined
    expect(reads()).toBe(2);
    read2.release();
    expect((await fresh)?.active).toBe(false);
    expect((await joined)?.active).toBe(false);
  });

  it("a read that comes back after a later one does not replace what the later one read", async () => {
    const { gate, clock, reads, hold, answers } = gateOnClock();
    const sid = await newSession();
    const read1 = hold(1);
    const slow = gate.check(sid);
    await read1.answered;
    clock.t += 2_000;
    await revoke(sid);
    expect((await gate.check(sid))?.active).toBe(false); // read 2, back first
    read1.release();
    expect((await slow)?.active).toBe(true);
    expect((await gate.check(sid))?.active).toBe(false); // from memory: read 2's state stays
    expect(reads()).toBe(2);
    expect(answers).toEqual(["database", "database", "memory"]);
  });

  it("evicts the entries read longest ago first: one read again moves to the end", async () => {
    const { gate, clock, answers } = gateOnClock({ maxEntries: 3 });
    const [a, b, c, d] = [await newSession(), await newSession(), await newSession(), await newSession()];
    await gate.check(a);
    await gate.check(b);
    clock.t += 1_000;
    await gate.check(a); // from memory, and read again in the background
    await gate.settled();
    await gate.check(c);
    await gate.check(d); // a fourth entry: b, read longest ago, goes
    answers.length = 0;
    await gate.check(a);
    await gate.check(b);
    expect(answers).toEqual(["memory", "database"]);
  });
});

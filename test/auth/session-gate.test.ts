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
  /** a gate on a clock the test moves, counting its reads of the database */
  const gateOnClock = () => {
    const clock = { t: 1_000_000 };
    let reads = 0;
    const counting = new Proxy(database.db, {
      get(target, prop, receiver) {
        if (prop === "select") reads++;
        return Reflect.get(target, prop, receiver);
      },
    });
    const answers: string[] = [];
    const gate: SessionGate = createSessionGate(counting, { ttlMs: 2_000, now: () => clock.t, observe: (a) => answers.push(a) });
    return { gate, clock, reads: () => reads, answers };
  };
  const settle = () => new Promise((r) => setTimeout(r, 50));

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
    await settle();
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
});

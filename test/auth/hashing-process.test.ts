// The service hashes passwords in a child process at the lowest CPU priority (services/
// hash-process.ts), so that a login storm takes idle cores rather than the proxied calls'. The
// hashes it makes and checks are the same as in process; when it dies, the next hash starts another.
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import argon2 from "argon2";
import { afterAll, describe, expect, it } from "vitest";
import { createPasswordHasher, HashingUnavailable } from "../../src/services/passwords.js";
import { FAST_HASH } from "../helpers/harness.js";

const hasher = createPasswordHasher({ params: FAST_HASH, isolated: true });
afterAll(() => hasher.close?.());

/** Fields of /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat from the third (state) on. */
const statOf = (path: string) => {
  const text = readFileSync(`${path}/stat`, "utf8");
  return text.slice(text.lastIndexOf(") ") + 2).split(" ");
};
/** The nice value (field 19) of each of a process's threads. */
const threadNices = (pid: number) => readdirSync(`/proc/${pid}/task`).map((t) => Number(statOf(`/proc/${pid}/task/${t}`)[16]));

describe("hashing in a low-priority child process", () => {
  it("hashes argon2id that argon2 itself verifies, and verifies argon2's own hashes", async () => {
    const h = await hasher.hash("correct horse battery staple");
    expect(h).toMatch(/^\$argon2id\$/);
    expect(await argon2.verify(h, "correct horse battery staple")).toBe(true);
    const mine = await argon2.hash("another password", { type: argon2.argon2id, ...FAST_HASH });
    expect(await hasher.verify(mine, "another password")).toEqual({ ok: true, needsRehash: false });
    expect((await hasher.verify(mine, "wrong password")).ok).toBe(false);
    expect((await hasher.verify("not a hash", "x")).ok).toBe(false);
  });

  it("runs in another process, at nice 19 on every thread, without the service's environment", async () => {
    process.env.HBFF_TEST_SECRET_CANARY = "canary-value-not-for-the-hasher";
    const h = createPasswordHasher({ params: FAST_HASH, isolated: true });
    try {
      await h.hash("warm");
      const pid = h.processId?.();
      expect(pid).toBeTypeOf("number");
      expect(pid).not.toBe(process.pid);
      // every thread, the thread pool's (which ran the hash) included
      const nices = threadNices(pid!);
      expect(nices.length).toBeGreaterThan(4);
      expect(nices).toEqual(nices.map(() => 19));
      expect(readFileSync(`/proc/${pid}/environ`, "utf8")).not.toContain("canary-value-not-for-the-hasher");
    } finally {
      delete process.env.HBFF_TEST_SECRET_CANARY;
      await h.close?.();
    }
  });

  it("hashes one at a time for every two cores by default, the others waiting their turn", async () => {
    const h = createPasswordHasher({ params: FAST_HASH, isolated: true });
    try {
      const expected = Math.max(1, Math.floor(availableParallelism() / 2));
      const jobs = Array.from({ length: expected + 3 }, (_, i) => h.hash(`storm ${i}`));
      expect(h.stats()).toEqual({ running: expected, waiting: 3 });
      expect((await Promise.all(jobs)).every((x) => x.startsWith("$argon2id$"))).toBe(true);
      expect(h.stats()).toEqual({ running: 0, waiting: 0 });
    } finally {
      await h.close?.();
    }
  });

  it("a hash under way when the process dies fails as unavailable; the next one starts a new process", async () => {
    await hasher.hash("warm");
    const first = hasher.processId?.()!;
    // Slow enough to be under way at the kill. Its hashes run at nice 19 and get only idle time: a
    // busy machine (the rest of the suite beside it) once held the one after the kill past the
    // default 15 s timeout, so this hasher waits longer; the timeout has its own test below.
    const slow = createPasswordHasher({ params: { memoryCost: 65_536, timeCost: 8, parallelism: 1 }, isolated: true, timeoutMs: 120_000 });
    try {
      const inFlight = slow.hash("slow one");
      await new Promise((r) => setTimeout(r, 50));
      process.kill(slow.processId?.()!, "SIGKILL");
      await expect(inFlight).rejects.toBeInstanceOf(HashingUnavailable);
      const again = await slow.hash("after");
      expect(again).toMatch(/^\$argon2id\$/);
    } finally {
      await slow.close?.();
    }
    expect(hasher.processId?.()).toBe(first); // the other hasher's process is its own
  }, 180_000);

  it("a hash that takes longer than the timeout fails as unavailable, and the next one still works", async () => {
    const h = createPasswordHasher({ params: { memoryCost: 65_536, timeCost: 20, parallelism: 1 }, isolated: true, timeoutMs: 30 });
    try {
      await expect(h.hash("too slow")).rejects.toBeInstanceOf(HashingUnavailable);
    } finally {
      await h.close?.();
    }
    expect(await hasher.hash("quick")).toMatch(/^\$argon2id\$/);
  });

  it("a timed-out hash keeps its slot while the process still works on it; a process that stays busy as long again is ended", async () => {
    const h = createPasswordHasher({ params: { memoryCost: 65_536, timeCost: 40, parallelism: 1 }, isolated: true, timeoutMs: 200, concurrency: 1 });
    try {
      const first = h.hash("too slow");
      await expect(first).rejects.toBeInstanceOf(HashingUnavailable);
      const pid = h.processId?.();
      expect(pid).toBeDefined();
      // the caller has its 503; the hash goes on in the process, and holds the one slot
      expect(h.stats()).toEqual({ running: 1, waiting: 0 });
      const second = h.hash("waits its turn");
      expect(h.stats()).toEqual({ running: 1, waiting: 1 });
      // 200 ms later the process is ended: the first hash's slot goes to the second (a new process)
      await expect(second).rejects.toBeInstanceOf(HashingUnavailable); // too slow as well
      expect(h.processId?.()).not.toBe(pid);
    } finally {
      await h.close?.();
    }
  });

  it("close() ends the process", async () => {
    const h = createPasswordHasher({ params: FAST_HASH, isolated: true });
    await h.hash("x");
    const pid = h.processId?.()!;
    await h.close?.();
    expect(() => process.kill(pid, 0)).toThrow();
  });
});

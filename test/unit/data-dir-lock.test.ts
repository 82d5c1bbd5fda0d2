// One process at a time on an embedded DATA_DIR: the lock file, its holder, and stale locks.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DataDirInUseError, lockDataDir } from "../../src/db/data-dir-lock.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "hbff-lock-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const lockFile = () => join(dir, "pglite.lock");
/**
 * This process's pid namespace: the locks below are written as if from a process beside us. Without
 * /proc (macOS) there is none to tell, every lock is judged by its heartbeat alone, and the two
 * tests of a pid's own liveness do not apply.
 */
const HAS_PROC = existsSync("/proc/self/ns/pid");
const ns = HAS_PROC ? readlinkSync("/proc/self/ns/pid") : null;
const age = (ms: number) => {
  const t = new Date(Date.now() - ms);
  utimesSync(lockFile(), t, t);
};
/** A pid that was alive a moment ago and is not any more. */
const deadPid = () => spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" }).stdout.trim();

describe("lockDataDir", () => {
  it("holds the directory: a second opening is refused until the first gives it back", () => {
    const first = lockDataDir(dir);
    expect(JSON.parse(readFileSync(lockFile(), "utf8"))).toMatchObject({ pid: process.pid });
    expect(() => lockDataDir(dir)).toThrow(DataDirInUseError);
    expect(() => lockDataDir(dir)).toThrow(/already open in this process/);
    first.release();
    expect(existsSync(lockFile())).toBe(false);
    lockDataDir(dir).release();
  });

  it("refuses while another live process holds it, naming that process", () => {
    // this test runner's parent: alive for the whole test, and not us
    writeFileSync(lockFile(), JSON.stringify({ pid: process.ppid, started: null, ns }) + "\n");
    let err: unknown;
    try {
      lockDataDir(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DataDirInUseError);
    expect((err as Error).message).toContain(`process ${process.ppid}`);
    expect(JSON.parse(readFileSync(lockFile(), "utf8")).pid).toBe(process.ppid); // untouched
  });

  it.skipIf(!HAS_PROC)("takes over a lock whose process is gone (a crash, a SIGKILL)", () => {
    writeFileSync(lockFile(), JSON.stringify({ pid: Number(deadPid()), started: null, ns }) + "\n");
    const lock = lockDataDir(dir);
    expect(JSON.parse(readFileSync(lockFile(), "utf8")).pid).toBe(process.pid);
    lock.release();
  });

  it.skipIf(!HAS_PROC)("takes over a lock whose pid lives again in another process (a container's restart)", () => {
    // the same pid, recorded with a start that is not the live process's own
    writeFileSync(lockFile(), JSON.stringify({ pid: process.ppid, started: "another-boot:1", ns }) + "\n");
    const lock = lockDataDir(dir);
    expect(JSON.parse(readFileSync(lockFile(), "utf8")).pid).toBe(process.pid);
    lock.release();
  });

  it("a lock from another pid namespace (another container on the volume) is held while touched, stale 10 s after", () => {
    // pid 1 lives in every namespace: only the heartbeat can tell
    writeFileSync(lockFile(), JSON.stringify({ pid: 1, started: "x:1", ns: "pid:[1]" }) + "\n");
    expect(() => lockDataDir(dir)).toThrow(/in use by process 1/);
    age(9_000);
    expect(() => lockDataDir(dir)).toThrow(DataDirInUseError);
    age(11_000);
    lockDataDir(dir).release();
  });

  it("the holder touches its lock (the heartbeat other namespaces judge it by)", async () => {
    const lock = lockDataDir(dir);
    age(60_000);
    const before = statSync(lockFile()).mtimeMs;
    await new Promise((r) => setTimeout(r, 2_300));
    expect(statSync(lockFile()).mtimeMs).toBeGreaterThan(before + 50_000);
    lock.release();
  });

  it("a torn lock file: refused while it is fresh (being written), taken over once old", () => {
    writeFileSync(lockFile(), "");
    expect(() => lockDataDir(dir)).toThrow(/being opened by another process/);
    const old = new Date(Date.now() - 60_000);
    utimesSync(lockFile(), old, old);
    lockDataDir(dir).release();
  });

  it("release leaves another holder's lock alone", () => {
    const lock = lockDataDir(dir);
    writeFileSync(lockFile(), JSON.stringify({ pid: process.ppid, started: null, ns }) + "\n"); // taken over meanwhile
    lock.release();
    expect(existsSync(lockFile())).toBe(true);
  });
});

// The password hashing process: argon2 at the lowest CPU priority (SCHED_IDLE where it can be
// had), so that a login storm takes the cores the proxied calls and the database leave idle, not
// theirs (services/passwords.ts). Started
// by the service as a child with an IPC channel; it hashes and verifies what it is sent, logs
// nothing (what it is sent are passwords), and ends with its parent.
import argon2 from "argon2";
import { execFileSync } from "node:child_process";
import { setPriority } from "node:os";

type Request =
  | { id: number; op: "hash"; password: string; options: { type: 0 | 1 | 2; memoryCost: number; timeCost: number; parallelism: number } }
  | { id: number; op: "verify"; hash: string; password: string };

// Nice 19 still competes for a core: a proxied call that wakes up may wait for a hash's time
// slice, and the scheduler counts a core running a hash as busy when it places the call's process.
// SCHED_IDLE (Linux) runs the hashes only on what is left idle, and a core that runs nothing else
// counts as free. No Node API sets it: util-linux's chrt does, for every thread already running
// (the thread pool's, started later by the main thread, inherits it). Either may be unavailable
// (no chrt, a sandbox that refuses it): the hashes then run at what was obtained.
try {
  setPriority(19);
} catch {
  // not allowed here: the hashes run at the parent's priority
}
try {
  execFileSync("chrt", ["--all-tasks", "--idle", "--pid", "0", String(process.pid)], { stdio: "ignore", timeout: 5_000 });
} catch {
  // nice 19 only
}

process.on("message", (m: Request) => {
  const work = m.op === "hash" ? argon2.hash(m.password, { ...m.options, raw: false }) : argon2.verify(m.hash, m.password).catch(() => false);
  work.then(
    (value) => process.send?.({ id: m.id, ok: true, value }),
    () => process.send?.({ id: m.id, ok: false }),
  );
});
process.on("disconnect", () => process.exit(0));

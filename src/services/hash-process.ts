// The password hashing process: argon2 at the lowest CPU priority (nice 19), so that a login storm
// takes the cores the proxied calls and the database leave idle, not theirs (services/passwords.ts).
// Started by the service as a child with an IPC channel; it hashes and verifies what it is sent,
// logs nothing (what it is sent are passwords), and ends with its parent.
import argon2 from "argon2";
import { readdirSync } from "node:fs";
import { setPriority } from "node:os";

type Request =
  | { id: number; op: "hash"; password: string; options: { type: 0 | 1 | 2; memoryCost: number; timeCost: number; parallelism: number } }
  | { id: number; op: "verify"; hash: string; password: string };

// Nice is per thread on Linux, and by the time this module runs the process already has all its
// threads (libuv's pool, where argon2 hashes, started while the modules were read): nice 19 is set
// on every thread in /proc/self/task (a thread started later inherits it). Set on the main thread
// alone, it left the hashes at nice 0, and a login storm raised the proxied calls' p99 by 81-275
// ms, against 13-34 ms with every thread at nice 19 (bench:profile -- storm rate 500). SCHED_IDLE
// (through util-linux's chrt) measured the same as nice 19 here, for a tool more and logins that
// starve sooner.
for (const tid of threads()) {
  try {
    setPriority(tid, 19);
  } catch {
    // not allowed here (or the thread is gone): that thread keeps the parent's priority
  }
}

function threads(): number[] {
  try {
    return readdirSync("/proc/self/task").map(Number);
  } catch {
    return [0]; // no /proc: this thread only
  }
}

process.on("message", (m: Request) => {
  const work = m.op === "hash" ? argon2.hash(m.password, { ...m.options, raw: false }) : argon2.verify(m.hash, m.password).catch(() => false);
  work.then(
    (value) => process.send?.({ id: m.id, ok: true, value }),
    () => process.send?.({ id: m.id, ok: false }),
  );
});
process.on("disconnect", () => process.exit(0));

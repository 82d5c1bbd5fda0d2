// The password hashing process: argon2 at the lowest CPU priority, so that a login storm takes the
// cores the proxied calls and the database leave idle, not theirs (services/passwords.ts). Started
// by the service as a child with an IPC channel; it hashes and verifies what it is sent, logs
// nothing (what it is sent are passwords), and ends with its parent.
import argon2 from "argon2";
import { setPriority } from "node:os";

type Request =
  | { id: number; op: "hash"; password: string; options: { type: 0 | 1 | 2; memoryCost: number; timeCost: number; parallelism: number } }
  | { id: number; op: "verify"; hash: string; password: string };

try {
  setPriority(19);
} catch {
  // not allowed here: the hashes run at the parent's priority
}

process.on("message", (m: Request) => {
  const work = m.op === "hash" ? argon2.hash(m.password, { ...m.options, raw: false }) : argon2.verify(m.hash, m.password).catch(() => false);
  work.then(
    (value) => process.send?.({ id: m.id, ok: true, value }),
    () => process.send?.({ id: m.id, ok: false }),
  );
});
process.on("disconnect", () => process.exit(0));

// One process at a time on an embedded database. PGlite is a single-process PostgreSQL: two
// processes on one DATA_DIR (the service and a CLI command, two services) each write its files as
// if alone, and corrupt it. A lock file in DATA_DIR names the process holding it; another process
// is refused while that one lives, and a lock whose process is gone (killed, crashed) is taken over.
// A pid means something only in its own pid namespace (two containers on one volume each have a
// pid 1): the holder also touches the file every 2 s, and a lock from another namespace is held
// while it is touched, stale 10 s after its last touch.
import { closeSync, openSync, readFileSync, readlinkSync, statSync, unlinkSync, utimesSync, writeSync } from "node:fs";
import { join } from "node:path";

export class DataDirInUseError extends Error {
  constructor(
    readonly dir: string,
    readonly pid: number | null,
  ) {
    super(
      pid === null
        ? `DATA_DIR ${dir} is being opened by another process; stop it first`
        : pid === process.pid
          ? `DATA_DIR ${dir} is already open in this process`
          : `DATA_DIR ${dir} is in use by process ${pid} (the service, or another command): stop it first; the embedded database takes one process at a time`,
    );
    this.name = "DataDirInUseError";
  }
}

type Holder = { pid: number; started: string | null; ns?: string | null };

const HEARTBEAT_MS = 2_000;
const STALE_AFTER_MS = 10_000;

function pidNamespace(): string | null {
  try {
    return readlinkSync("/proc/self/ns/pid");
  } catch {
    return null;
  }
}

/**
 * Who a process is: its pid, and where /proc tells, its start (boot id and start time), so that
 * a pid reused after a restart (a container's pid 1, every time) is not taken for the holder.
 */
function identity(pid: number): string | null {
  try {
    const boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const start = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]; // field 22, starttime
    return start ? `${boot}:${start}` : null;
  } catch {
    return null;
  }
}

/** Whether the file was written or touched within the last `ms` (false once it is gone). */
function touchedWithin(file: string, ms: number): boolean {
  try {
    return Date.now() - statSync(file).mtimeMs < ms;
  } catch {
    return false;
  }
}

function alive(h: Holder, file: string): boolean {
  // From another pid namespace (or with none to tell), its pid says nothing here; its heartbeat does.
  const ns = pidNamespace();
  if (ns === null || h.ns !== ns) return touchedWithin(file, STALE_AFTER_MS);
  try {
    process.kill(h.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false; // ESRCH: gone
  }
  // The pid lives; it is the holder unless we can tell it started after the lock was written.
  if (h.started === null) return h.pid !== process.pid;
  const now = identity(h.pid);
  return now === null || now === h.started;
}

/** The lock file's text, and the holder it names ("unreadable": empty or torn). */
function read(file: string): { raw: string; holder: Holder | "unreadable" } | undefined {
  let raw: string;
  try {
    raw = readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined; // gone
    throw err; // unreadable to us (another user's): said as it is
  }
  try {
    const h = JSON.parse(raw) as Partial<Holder>;
    if (typeof h.pid === "number" && Number.isInteger(h.pid) && h.pid > 0) {
      return { raw, holder: { pid: h.pid, started: typeof h.started === "string" ? h.started : null, ns: typeof h.ns === "string" ? h.ns : null } };
    }
  } catch {
    // below
  }
  return { raw, holder: "unreadable" };
}

/** Takes DATA_DIR's lock, or throws DataDirInUseError. `release()` gives it back (idempotent). */
export function lockDataDir(dir: string): { release(): void } {
  const file = join(dir, "pglite.lock");
  const mine: Holder = { pid: process.pid, started: identity(process.pid), ns: pidNamespace() };
  const text = JSON.stringify(mine) + "\n";
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(file, "wx", 0o644);
      try {
        writeSync(fd, text);
      } finally {
        closeSync(fd);
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      if (attempt >= 3) throw new DataDirInUseError(dir, null); // others keep taking it: one of them has it
    }
    const seen = read(file);
    if (!seen) continue; // gone meanwhile: try again
    const h = seen.holder;
    if (h === "unreadable") {
      // Being written this instant by another process, or left torn by one that died while
      // writing it: a few seconds tell the two apart.
      if (touchedWithin(file, 5_000)) throw new DataDirInUseError(dir, null);
    } else if (alive(h, file)) {
      throw new DataDirInUseError(dir, h.pid);
    }
    // Stale: its process is gone. Removed only if it still says what was judged, so that a
    // process taking it over at the same moment keeps the lock it has just made (what is left is
    // the instant between this read and the unlink).
    if (read(file)?.raw !== seen.raw) continue;
    try {
      unlinkSync(file);
    } catch {
      // another process removed it first: the next attempt sees whose lock is there
    }
  }

  let held = true;
  const heartbeat = setInterval(() => {
    try {
      const t = new Date();
      utimesSync(file, t, t);
    } catch {
      // gone: release() below is a no-op on someone else's lock
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();
  const release = () => {
    if (!held) return;
    held = false;
    clearInterval(heartbeat);
    process.off("exit", release);
    try {
      if (readFileSync(file, "utf8") === text) unlinkSync(file);
    } catch {
      // already gone
    }
  };
  // An exit through process.exit() gives it back too; a SIGKILL leaves it, stale, to be taken over.
  process.on("exit", release);
  return { release };
}

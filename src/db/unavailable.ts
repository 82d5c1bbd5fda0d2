// Which failures of the database are its being unavailable (a 503, a retry later), not a bug.

/** SQLSTATEs and driver codes meaning "the database cannot do this now", not "this is a bug". */
const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH",
  "CONNECT_TIMEOUT", "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED",
  "42501", // insufficient_privilege: e.g. the audit table made unwritable
  "25006", // read_only_sql_transaction: a replica or a read-only database
  "40P01", // deadlock_detected: PostgreSQL broke a lock cycle; the request may be retried
  "40001", // serialization_failure: likewise
  "55P03", // lock_not_available: a lock_timeout set on the role or database expired
  "42P01", // undefined_table: a store taken away (a botched migration or restore) is down, not a bug of the request
  "42883", // undefined_function: likewise (a database of another version)
]);
// connection, authorization (credentials changed under us), the database itself gone (3D000:
// dropped or renamed), resources, operator intervention, system (I/O) errors
const UNAVAILABLE_CLASSES = ["08", "28", "3D", "53", "57", "58"];

export function isDatabaseUnavailable(err: unknown): boolean {
  for (let e = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && (UNAVAILABLE_CODES.has(code) || UNAVAILABLE_CLASSES.includes(code.slice(0, 2)))) return true;
    // PGlite after close()
    if (e instanceof Error && /PGlite is closed/i.test(e.message)) return true;
  }
  return false;
}

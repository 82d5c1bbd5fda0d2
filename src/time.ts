// Instants as clients and cursors write them; and bounded waits.

/**
 * An ISO 8601 date or date-time that names a real moment: Date.parse rolls "2021-02-30" over to
 * March and takes 24:00 and year 0, all of which PostgreSQL refuses (a 500, had they reached it).
 * The moment must also fall in years 1 to 9999 in UTC: 9999-12-31T23:00-02:00 is in year 10000,
 * which a Date writes as "+010000-…", a form PostgreSQL refuses.
 */
export function isRealInstant(s: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const day = new Date(0);
  day.setUTCFullYear(y, mo - 1, d); // (Date.UTC would read years 0 to 99 as 1900 to 1999)
  if (day.getUTCFullYear() !== y || day.getUTCMonth() !== mo - 1 || day.getUTCDate() !== d) return false;
  if (m[4] !== undefined && (Number(m[4]) > 23 || Number(m[5]) > 59 || Number(m[6] ?? 0) > 59)) return false;
  const t = Date.parse(withZone(s));
  if (Number.isNaN(t)) return false;
  const utcYear = new Date(t).getUTCFullYear();
  return utcYear >= 1 && utcYear <= 9999;
}

/**
 * A date-time without a zone is read as UTC, as a date alone is (ECMAScript reads
 * "2026-12-04T10:00" in the server's own time zone, which a client cannot know).
 */
const withZone = (s: string) => (/[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?$/.test(s) ? `${s}Z` : s);

/** The moment an instant that isRealInstant() accepted names. */
export const parseInstant = (s: string): Date => new Date(withZone(s));

/** `p`, or a rejection once `ms` have passed without its answer. */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}

/** Settles when `p` does or `ms` have passed, whichever comes first (`p` never rejects). */
export const atMost = (p: Promise<void>, ms: number) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    void p.then(() => (clearTimeout(t), resolve()));
  });

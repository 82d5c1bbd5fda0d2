// Arrays passed as ONE text parameter (a PostgreSQL array literal, cast in SQL), so that a grouped
// statement has the same text whatever the size of its group: it is prepared once per connection
// instead of once per group size, on either driver.

export function pgArray(values: readonly (string | number | boolean | null)[]): string {
  // A loop and one string, not map/join: these are built for every grouped statement.
  let out = "{";
  for (let i = 0; i < values.length; i++) {
    if (i > 0) out += ",";
    out += element(values[i]!);
  }
  return out + "}";
}

const NEEDS_ESCAPE = /["\\]/;

function element(v: string | number | boolean | null): string {
  if (v === null) return "NULL";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new Error("pgArray: not a finite number");
    return String(v);
  }
  if (typeof v === "boolean") return v ? "t" : "f";
  return NEEDS_ESCAPE.test(v) ? `"${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"` : `"${v}"`;
}

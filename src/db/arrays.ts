// Arrays passed as ONE text parameter (a PostgreSQL array literal, cast in SQL), so that a grouped
// statement has the same text whatever the size of its group: it is prepared once per connection
// instead of once per group size, on either driver.

export function pgArray(values: readonly (string | number | boolean | null)[]): string {
  return `{${values.map(element).join(",")}}`;
}

function element(v: string | number | boolean | null): string {
  if (v === null) return "NULL";
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new Error("pgArray: not a finite number");
    return String(v);
  }
  if (typeof v === "boolean") return v ? "t" : "f";
  return `"${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

// Upstream's own validation, copied so that input it would refuse never spends its quota.
// Same normalisation (a non-string counts as "", then trim and lower-case), same patterns, same
// error code and field.
import { invalidParams } from "../errors.js";
import { DOMAIN_RE, HANDLE_RE } from "../simulator/patterns.js";

export function normaliseHandle(value: unknown): string {
  const h = (typeof value === "string" ? value : "").trim().toLowerCase();
  if (h.length < 1 || h.length > 64 || !HANDLE_RE.test(h)) {
    throw invalidParams("handle", "handle must be 1 to 64 characters of an e-mail local part (letters, digits, !#$%&'*+/=?^_`{|}~- and single dots between them)");
  }
  return h;
}

export function normaliseDomain(value: unknown): string {
  const d = (typeof value === "string" ? value : "").trim().toLowerCase();
  if (!DOMAIN_RE.test(d)) {
    throw invalidParams("domain", "domain must be a host name of two labels or more (IDN as punycode, no trailing dot, no IP address)");
  }
  return d;
}

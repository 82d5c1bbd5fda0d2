// Small helpers shared by the users tests (not a test file itself).
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/client.js";
import type { Service } from "../helpers/harness.js";

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Number of rows in the audit log, straight from the database. */
export async function auditCount(svc: Service): Promise<number> {
  const [r] = await rowsOf<{ n: number }>(svc.deps.db, sql`select count(*)::int as n from audit_events`);
  return Number(r!.n);
}

export async function userCount(svc: Service): Promise<number> {
  const [r] = await rowsOf<{ n: number }>(svc.deps.db, sql`select count(*)::int as n from users`);
  return Number(r!.n);
}

/** Every audit event of `action` the admin sees (one page of up to 500). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function auditEvents(svc: Service, query: string): Promise<any[]> {
  const r = await svc.call("GET", `/v1/audit?limit=500&${query}`, { token: svc.admin.token });
  if (r.status !== 200) throw new Error(`audit ${query}: ${r.status} ${r.text}`);
  return r.json.events;
}

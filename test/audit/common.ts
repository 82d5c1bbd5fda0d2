// Helpers shared by the audit tests (not a test file itself).
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { rowsOf } from "../../src/db/client.js";
import { auditEvents } from "../../src/db/schema.js";
import { auditRow, type AuditInput } from "../../src/services/audit.js";
import type { Service } from "../helpers/harness.js";

export type EventSpec = Partial<Omit<AuditInput, "meta">> & {
  at?: Date;
  requestId?: string;
  ip?: string | null;
  userAgent?: string | null;
};

/** An audit row as record() would write it, with test defaults (and an optional explicit time). */
export function row(spec: EventSpec): typeof auditEvents.$inferInsert {
  const r = auditRow({
    action: spec.action ?? "handle.create",
    outcome: spec.outcome === undefined ? "success" : spec.outcome,
    actor: spec.actor ?? null,
    meta: { requestId: spec.requestId ?? `req-${randomUUID()}`, ip: spec.ip ?? "192.0.2.1", userAgent: spec.userAgent ?? "test-agent" },
    keyId: spec.keyId ?? null,
    keyOwnerId: spec.keyOwnerId ?? null,
    subjectId: spec.subjectId ?? null,
    handle: spec.handle ?? null,
    domain: spec.domain ?? null,
    upstreamStatus: spec.upstreamStatus ?? null,
    detail: spec.detail ?? null,
  });
  return spec.at ? { ...r, at: spec.at } : r;
}

/** Inserts the rows in one statement (in the given order); returns their ids. */
export async function insertEvents(svc: Service, specs: EventSpec[]): Promise<string[]> {
  const rows = specs.map(row);
  await svc.deps.db.insert(auditEvents).values(rows);
  return rows.map((r) => r.id!);
}

export async function count(svc: Service, table: "audit_events" | "audit_event_outcomes"): Promise<number> {
  const [r] = await rowsOf<{ n: number }>(svc.deps.db, sql`select count(*)::int as n from ${sql.identifier(table)}`);
  return Number(r!.n);
}

/** RFC 4180: fields separated by commas, records by CRLF, quoted fields may hold both. */
export function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let rec: string[] = [];
  let field = "";
  let i = 0;
  let quoted = false;
  let fieldStarted = false;
  while (i < text.length) {
    const ch = text[i]!;
    if (quoted) {
      if (ch === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
        i++;
        continue;
      }
      field += ch;
      i++;
      continue;
    }
    if (ch === '"' && field === "" && !fieldStarted) {
      quoted = true;
      fieldStarted = true;
      i++;
      continue;
    }
    if (ch === ",") {
      rec.push(field);
      field = "";
      fieldStarted = false;
      i++;
      continue;
    }
    if (ch === "\r" && text[i + 1] === "\n") {
      rec.push(field);
      records.push(rec);
      rec = [];
      field = "";
      fieldStarted = false;
      i += 2;
      continue;
    }
    if (ch === "\n" || ch === "\r" || ch === '"') throw new Error(`bare ${JSON.stringify(ch)} outside quotes at ${i}`);
    field += ch;
    fieldStarted = true;
    i++;
  }
  if (field !== "" || rec.length > 0) throw new Error("the last record does not end with CRLF");
  return records;
}

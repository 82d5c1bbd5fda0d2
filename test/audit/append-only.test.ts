// The audit log is append-only in the database itself: on the service's own connection (the
// tables' owner), UPDATE, DELETE and TRUNCATE of audit_events and audit_event_outcomes are refused.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { record, recordOutcome } from "../../src/services/audit.js";
import { startService, type Service } from "../helpers/harness.js";
import { count } from "./common.js";

let svc: Service;
let eventId: string;
beforeAll(async () => {
  svc = await startService();
  eventId = await record(svc.deps.db, {
    action: "handle.create",
    outcome: null,
    actor: { id: svc.admin.id, username: "root" },
    meta: { requestId: "append-only-1", ip: "192.0.2.7", userAgent: "ua" },
    handle: "kept",
  });
  await recordOutcome(svc.deps.db, eventId, "success", 200);
});
afterAll(() => svc.close());

/** The error's whole chain of messages and codes (drizzle wraps the driver's error). */
function chain(err: unknown): string {
  const parts: string[] = [];
  for (let x = err, i = 0; x && i < 5; x = (x as { cause?: unknown }).cause, i++) {
    parts.push(String((x as Error).message), String((x as { code?: unknown }).code));
  }
  return parts.join(" | ");
}

async function refused(statement: ReturnType<typeof sql>) {
  let error: unknown;
  try {
    await svc.deps.db.execute(statement);
  } catch (err) {
    error = err;
  }
  expect(error, "the statement was not refused").toBeDefined();
  expect(chain(error)).toMatch(/append-only|42501/);
}

async function snapshot() {
  const events = await rowsOf<Record<string, unknown>>(svc.deps.db, sql`select * from audit_events order by seq`);
  const outcomes = await rowsOf<Record<string, unknown>>(svc.deps.db, sql`select * from audit_event_outcomes order by event_id`);
  // postgres.js returns int8 as bigint: stringify those as text
  return JSON.stringify({ events, outcomes }, (_, v) => (typeof v === "bigint" ? v.toString() : v));
}

describe.each(["audit_events", "audit_event_outcomes"] as const)("%s", (table) => {
  const t = sql.identifier(table);

  it("has rows to protect", async () => {
    expect(await count(svc, table)).toBeGreaterThan(0);
  });

  it("refuses UPDATE, and the rows are unchanged", async () => {
    const before = await snapshot();
    await refused(sql`update ${t} set detail = '{"tampered":true}'::jsonb`);
    await refused(
      table === "audit_events"
        ? sql`update ${t} set action = 'x' where id = ${eventId}`
        : sql`update ${t} set outcome = 'denied' where event_id = ${eventId}`,
    );
    expect(await snapshot()).toBe(before);
  });

  it("refuses DELETE, and the rows are still there", async () => {
    const before = await snapshot();
    const n = await count(svc, table);
    await refused(sql`delete from ${t}`);
    await refused(table === "audit_events" ? sql`delete from ${t} where id = ${eventId}` : sql`delete from ${t} where event_id = ${eventId}`);
    expect(await count(svc, table)).toBe(n);
    expect(await snapshot()).toBe(before);
  });

  it("refuses TRUNCATE, and the rows are still there", async () => {
    const before = await snapshot();
    const n = await count(svc, table);
    await refused(sql`truncate ${t}`);
    await refused(sql`truncate ${t} cascade`);
    expect(await count(svc, table)).toBe(n);
    expect(await snapshot()).toBe(before);
  });
});

describe("INSERT still works", () => {
  it("record() and recordOutcome() append, and the API shows the result", async () => {
    const events = await count(svc, "audit_events");
    const outcomes = await count(svc, "audit_event_outcomes");
    const id = await record(svc.deps.db, {
      action: "domain.enable",
      outcome: null,
      actor: { id: svc.admin.id, username: "root" },
      meta: { requestId: "append-only-2", ip: null, userAgent: null },
      handle: "appended",
      domain: "example.com",
    });
    await recordOutcome(svc.deps.db, id, "upstream_error", 503);
    expect(await count(svc, "audit_events")).toBe(events + 1);
    expect(await count(svc, "audit_event_outcomes")).toBe(outcomes + 1);
    const r = await svc.call("GET", "/v1/audit?handle=appended", { token: svc.admin.token });
    expect(r.json.events).toHaveLength(1);
    expect(r.json.events[0]).toMatchObject({ id, outcome: "upstream_error", upstream_status: 503 });
  });

  it("the grouped writer keeps an event's first outcome and skips a second one, without failing its group", async () => {
    const w = svc.deps.auditWriter;
    const meta = { requestId: "grouped-twice", ip: null, userAgent: null };
    const [first, second] = await Promise.all([1, 2].map((i) => w.record({ action: "handle.create", outcome: null, actor: null, meta, handle: `grouped-${i}` })));
    await w.recordOutcome(first!, "success", 200);
    // the same tick: one group, one statement
    const settled = await Promise.allSettled([w.recordOutcome(first!, "upstream_error", 503), w.recordOutcome(second!, "upstream_refused", 409)]);
    expect(settled.map((s) => s.status)).toEqual(["fulfilled", "fulfilled"]);
    const shown = async (h: string) => (await svc.call("GET", `/v1/audit?handle=${h}`, { token: svc.admin.token })).json.events[0];
    expect(await shown("grouped-1")).toMatchObject({ id: first, outcome: "success", upstream_status: 200 });
    expect(await shown("grouped-2")).toMatchObject({ id: second, outcome: "upstream_refused", upstream_status: 409 });
  });

  it("an event keeps its first outcome: a second outcome row is refused", async () => {
    let error: unknown;
    try {
      await recordOutcome(svc.deps.db, eventId, "denied", 403);
    } catch (err) {
      error = err;
    }
    expect(error).toBeDefined();
    const r = await svc.call("GET", "/v1/audit?handle=kept", { token: svc.admin.token });
    expect(r.json.events).toHaveLength(1);
    expect(r.json.events[0]).toMatchObject({ id: eventId, outcome: "success", upstream_status: 200 });
  });
});

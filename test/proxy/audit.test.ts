// The audit of proxied calls: fail closed (no record of the attempt, no upstream call), and a call
// whose outcome was never recorded (a crash) shows once, as "unknown".
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { record } from "../../src/services/audit.js";
import { expectErrorBody } from "../helpers/harness.js";
import { CREATE, ENABLE, auditEvents, eventOf, expectNoSecrets, post, receivedDuring, startPair, storeKey, type Ctx } from "./common.js";

let ctx: Ctx;
let user: { id: string; token: string };
let key: { id: string; plaintext: string };

beforeAll(async () => {
  ctx = await startPair();
  user = await ctx.svc.addUser(ctx.svc.admin.token, "audra");
  key = await storeKey(ctx, user.token, "audra-key");
  await ctx.svc.deps.db.execute(
    sql.raw(`create or replace function test_refuse_insert() returns trigger language plpgsql as $$
      begin raise exception 'audit store is read-only (test)' using errcode = 'insufficient_privilege'; end $$`),
  );
});
afterAll(() => ctx?.close());

async function makeUnwritable(table: "audit_events" | "audit_event_outcomes") {
  await ctx.svc.deps.db.execute(
    sql.raw(`create trigger test_refuse_insert before insert on ${table} for each row execute function test_refuse_insert()`),
  );
}
async function makeWritable(table: "audit_events" | "audit_event_outcomes") {
  await ctx.svc.deps.db.execute(sql.raw(`drop trigger if exists test_refuse_insert on ${table}`));
}

describe("fail closed", () => {
  it("the audit table unwritable: 503 unavailable and nothing upstream; writable again: calls work", async () => {
    const ok = await receivedDuring(ctx.sim, () => post(ctx, CREATE, user.token, { handle: "before-outage" }));
    expect(ok.result.status).toBe(200);
    expect(ok.received).toHaveLength(1);

    await makeUnwritable("audit_events");
    try {
      for (const [path, body, headers] of [
        [CREATE, { handle: "during-outage" }, {}],
        [CREATE, { handle: "during-outage-idem" }, { "idempotency-key": "outage-key" }],
        [ENABLE, { handle: "before-outage", domain: "example.com" }, {}],
      ] as const) {
        const { result, received } = await receivedDuring(ctx.sim, () => post(ctx, path, user.token, body, headers));
        expectErrorBody(result, 503, "unavailable");
        expect(received).toHaveLength(0);
      }
    } finally {
      await makeWritable("audit_events");
    }

    const after = await receivedDuring(ctx.sim, () => post(ctx, CREATE, user.token, { handle: "during-outage" }));
    expect(after.result.status).toBe(200);
    expect(after.received).toHaveLength(1);
    // The Idempotency-Key of the refused call was not left claimed.
    const idem = await receivedDuring(ctx.sim, () => post(ctx, CREATE, user.token, { handle: "during-outage-idem" }, { "idempotency-key": "outage-key" }));
    expect(idem.result.status).toBe(200);
    expect(idem.received).toHaveLength(1);
    // And none of the refused calls left an event.
    expect((await auditEvents(ctx, "handle.create")).filter((e) => e.handle === "during-outage")).toHaveLength(1);
  });

  it("the outcome table unwritable after the call went out: upstream's answer, and the event shows unknown", async () => {
    await makeUnwritable("audit_event_outcomes");
    let r;
    try {
      const got = await receivedDuring(ctx.sim, () => post(ctx, CREATE, user.token, { handle: "outcome-lost" }));
      expect(got.received).toHaveLength(1);
      r = got.result;
    } finally {
      await makeWritable("audit_event_outcomes");
    }
    expect(r.status).toBe(200);
    const e = await eventOf(ctx, r);
    expect([e.outcome, e.handle, e.key_id]).toEqual(["unknown", "outcome-lost", key.id]);
  });
});

describe("a crash between the attempt and its outcome", () => {
  it("an attempt with no outcome shows once, as unknown", async () => {
    const requestId = `crash-${randomUUID()}`;
    await record(ctx.svc.deps.db, {
      action: "handle.create",
      outcome: null,
      actor: { id: user.id, username: "audra" },
      meta: { requestId, ip: "127.0.0.1", userAgent: "crash-test" },
      keyId: key.id,
      keyOwnerId: user.id,
      handle: "crashed",
    });
    const events = (await auditEvents(ctx, "handle.create")).filter((e) => e.request_id === requestId);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ outcome: "unknown", handle: "crashed", key_id: key.id, upstream_status: null, actor: { id: user.id } });

    const byOutcome = await ctx.svc.call("GET", "/v1/audit?action=handle.create&outcome=unknown", { token: ctx.svc.admin.token });
    expect(byOutcome.json.events.filter((e: { request_id: string }) => e.request_id === requestId)).toHaveLength(1);
    // The owner sees it too.
    const own = await auditEvents(ctx, "handle.create", user.token);
    expect(own.filter((e) => e.request_id === requestId)).toHaveLength(1);
  });

  it("a completed call shows once too, with its outcome (attempt and outcome are one event)", async () => {
    const r = await post(ctx, CREATE, user.token, { handle: "completed-once" });
    expect(r.status).toBe(200);
    const e = await eventOf(ctx, r);
    expect([e.outcome, e.upstream_status]).toEqual(["success", 200]);
    const success = await ctx.svc.call("GET", "/v1/audit?action=handle.create&outcome=success&handle=completed-once", { token: ctx.svc.admin.token });
    expect(success.json.events).toHaveLength(1);
    const unknown = await ctx.svc.call("GET", "/v1/audit?action=handle.create&outcome=unknown&handle=completed-once", { token: ctx.svc.admin.token });
    expect(unknown.json.events).toHaveLength(0);
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

// The outcome filter reads two sources (an event's own outcome, and a proxied call's outcome
// row), merged newest first; it and the domain filter read index ranges, not the whole log.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { auditEventOutcomes } from "../../src/db/schema.js";
import { recordOutcome } from "../../src/services/audit.js";
import { startService, type Service } from "../helpers/harness.js";
import { insertEvents, type EventSpec } from "./common.js";

let svc: Service;
beforeAll(async () => {
  svc = await startService();
});
afterAll(() => svc.close());

type Page = { events: { id: string; outcome: string; at: string }[]; next_cursor: string | null };

async function everyPage(query: string, limit: number): Promise<string[]> {
  const seen: string[] = [];
  let cursor: string | null = null;
  do {
    const r = await svc.call("GET", `/v1/audit?limit=${limit}&${query}${cursor ? `&cursor=${cursor}` : ""}`, { token: svc.admin.token });
    expect(r.status, r.text).toBe(200);
    const page = r.json as Page;
    expect(page.events.length).toBeLessThanOrEqual(limit);
    seen.push(...page.events.map((e) => e.id));
    cursor = page.next_cursor;
  } while (cursor);
  return seen;
}

describe("outcome filter", () => {
  it("merges the events' own outcomes with the outcome rows of proxied calls, newest first, across pages", async () => {
    const base = Date.parse("2023-03-01T00:00:00.000Z");
    // 18 events, a second apart, and a tie (two events in one instant, one of each source).
    const specs: EventSpec[] = Array.from({ length: 18 }, (_, i) => ({
      handle: "merge-case",
      at: new Date(base + (i === 16 ? 15 : i) * 1000),
      outcome: i % 3 === 0 ? "rate_limited" : null,
    }));
    const ids = await insertEvents(svc, specs);
    for (let i = 0; i < ids.length; i++) {
      if (specs[i]!.outcome === null) await recordOutcome(svc.deps.db, ids[i]!, i % 3 === 1 || i === 17 ? "rate_limited" : "success", 429);
    }
    const all = await everyPage("handle=merge-case", 500);
    expect(all).toHaveLength(18);
    const effective = new Map((await svc.call("GET", "/v1/audit?limit=500&handle=merge-case", { token: svc.admin.token })).json.events.map((e: { id: string; outcome: string }) => [e.id, e.outcome]));
    const expected = all.filter((id) => effective.get(id) === "rate_limited");
    expect(expected.length).toBe(13);
    for (const limit of [1, 2, 5, 500]) {
      expect(await everyPage("handle=merge-case&outcome=rate_limited", limit), `limit ${limit}`).toEqual(expected);
    }
    expect(await everyPage("handle=merge-case&outcome=success", 2)).toEqual(all.filter((id) => effective.get(id) === "success"));
  });

  it("an event's outcome row, when it has one, is its outcome: the event's own no longer matches", async () => {
    const [id] = await insertEvents(svc, [{ handle: "two-outcomes", outcome: "denied" }]);
    await svc.deps.db.insert(auditEventOutcomes).values({ eventId: id!, outcome: "success" });
    expect(await everyPage("handle=two-outcomes&outcome=success", 10)).toEqual([id]);
    expect(await everyPage("handle=two-outcomes&outcome=denied", 10)).toEqual([]);
  });

  it("an outcome row takes its event's position, whoever writes it and whatever it says", async () => {
    const [id] = await insertEvents(svc, [{ handle: "position", outcome: null, at: new Date("2020-02-02T02:02:02.123Z") }]);
    await svc.deps.db.insert(auditEventOutcomes).values({ eventId: id!, outcome: "success", eventAt: new Date("1999-01-01T00:00:00Z"), eventSeq: 1 });
    const [r] = await rowsOf<{ same: boolean }>(
      svc.deps.db,
      sql`select (o.event_at = e.at and o.event_seq = e.seq) as same from audit_event_outcomes o join audit_events e on e.id = o.event_id where e.id = ${id}`,
    );
    expect(r!.same).toBe(true);
  });
});

// PGlite only: the service and this test share its one backend, so the table's statistics count
// every row the query read, at once. On a server each connection reports them on its own time.
describe.skipIf(!!process.env.TEST_DATABASE_URL)("filters without an index of their own would read the whole log (PGlite)", () => {
  const FILLER = 20_000;
  const rowsRead = async () => {
    await rowsOf(svc.deps.db, sql`select pg_stat_force_next_flush()`);
    const [r] = await rowsOf<{ n: number }>(
      svc.deps.db,
      sql`select pg_stat_clear_snapshot(), sum(coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0))::bigint as n
          from pg_stat_user_tables where relname in ('audit_events', 'audit_event_outcomes')`,
    );
    return Number(r!.n);
  };
  let rare: Record<"domain" | "own" | "later", string>;

  beforeAll(async () => {
    const t0 = Date.parse("2024-01-01T00:00:00.000Z");
    for (let i = 0; i < FILLER; i += 2_000) {
      const ids = await insertEvents(
        svc,
        Array.from({ length: 2_000 }, (_, j) => ({ domain: "filler.example", at: new Date(t0 + (i + j) * 1000), outcome: j % 2 === 0 ? "success" : null })),
      );
      await svc.deps.db.insert(auditEventOutcomes).values(ids.filter((_, j) => j % 2 === 1).map((eventId) => ({ eventId, outcome: "success" })));
    }
    const at = new Date(t0 + (FILLER / 2) * 1000 + 500); // in the middle of the log
    const [d, own, later] = await insertEvents(svc, [
      { domain: "rare.example", at },
      { outcome: "denied", at },
      { outcome: null, at },
    ]);
    await recordOutcome(svc.deps.db, later!, "upstream_refused", 409);
    rare = { domain: d!, own: own!, later: later! };
    await svc.deps.db.execute(sql`analyze audit_events`);
    await svc.deps.db.execute(sql`analyze audit_event_outcomes`);
  }, 120_000);

  it.each([
    ["domain=rare.example", "domain"],
    ["outcome=denied", "own"],
    ["outcome=upstream_refused", "later"],
  ] as const)("%s", async (query, which) => {
    const before = await rowsRead();
    expect(await everyPage(query, 50)).toEqual([rare[which]]);
    expect((await rowsRead()) - before).toBeLessThan(200);
  });
});

// GET /v1/audit: visibility, every filter, the outcome of a two-part (proxied) event, bad filter
// values and keyset pagination.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { recordOutcome, record } from "../../src/services/audit.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { sql } from "drizzle-orm";
import { auditEvents } from "../../src/db/schema.js";
import { insertEvents, row } from "./common.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Ev = any;

let svc: Service;
let alice: { id: string; token: string };
let bob: { id: string; token: string };
const K1 = randomUUID();
const K2 = randomUUID();
let e: Record<"e1" | "e2" | "e3" | "e4" | "e5", string>;
const AT = {
  e1: new Date("2021-01-10T10:00:00.000Z"),
  e2: new Date("2021-05-10T10:00:00.000Z"),
  e3: new Date("2021-09-10T10:00:00.000Z"),
  e4: new Date("2022-01-10T10:00:00.000Z"),
  e5: new Date("2022-06-01T10:00:00.000Z"),
};

beforeAll(async () => {
  svc = await startService();
  alice = await svc.addUser(svc.admin.token, "alice");
  bob = await svc.addUser(svc.admin.token, "bob");
  const A = { id: alice.id, username: "alice" };
  const B = { id: bob.id, username: "bob" };
  const [e1, e2, e3, e4, e5] = await insertEvents(svc, [
    { at: AT.e1, actor: A, action: "handle.create", handle: "flt-alpha", keyId: K1, outcome: "success", upstreamStatus: 200 },
    { at: AT.e2, actor: A, action: "domain.enable", handle: "flt-alpha", domain: "flt-example.com", keyId: K2, outcome: null },
    { at: AT.e3, actor: B, action: "handle.create", handle: "flt-beta", keyId: K1, outcome: null },
    { at: AT.e4, actor: B, action: "domain.enable", handle: "flt-beta", domain: "flt-example.org", keyId: K2, outcome: "rate_limited" },
    { at: AT.e5, actor: null, action: "auth.login_failed", outcome: "invalid" },
  ]);
  e = { e1: e1!, e2: e2!, e3: e3!, e4: e4!, e5: e5! };
  // e2 went upstream and its outcome followed; e3 went upstream and nothing came back (a crash)
  await recordOutcome(svc.deps.db, e.e2, "upstream_refused", 409, { upstream_error: "conflict" });
});
afterAll(() => svc.close());

async function list(query: string, token = svc.admin.token): Promise<Ev[]> {
  const r = await svc.call("GET", `/v1/audit?limit=500&${query}`, { token });
  expect(r.status, r.text).toBe(200);
  expect(r.json.next_cursor).toBeNull();
  return r.json.events;
}
const mine = (events: Ev[]) => events.map((x) => x.id).filter((id: string) => Object.values(e).includes(id)).sort();
const ids = (...names: (keyof typeof e)[]) => names.map((n) => e[n]).sort();

describe("events", () => {
  it("have the contract's fields", async () => {
    const [ev] = (await list("handle=flt-alpha&action=handle.create")).filter((x) => x.id === e.e1);
    expect(ev).toMatchObject({
      id: e.e1,
      at: AT.e1.toISOString(),
      request_id: expect.any(String),
      actor: { id: alice.id, username: "alice" },
      action: "handle.create",
      outcome: "success",
      key_id: K1,
      handle: "flt-alpha",
      domain: null,
      upstream_status: 200,
      ip: "192.0.2.1",
      user_agent: "test-agent",
    });
  });

  it("an event recorded before going upstream, whose outcome followed, is ONE event with that outcome", async () => {
    const events = await list("handle=flt-alpha");
    const e2s = events.filter((x) => x.id === e.e2);
    expect(e2s).toHaveLength(1);
    expect(e2s[0]).toMatchObject({ outcome: "upstream_refused", upstream_status: 409, domain: "flt-example.com" });
    expect(events).toHaveLength(2);
  });

  it("an event with no outcome and no outcome row reads as unknown", async () => {
    const events = (await list("handle=flt-beta")).filter((x) => x.id === e.e3);
    expect(events).toHaveLength(1);
    expect(events[0].outcome).toBe("unknown");
  });

  it("newest first", async () => {
    const events = await list("since=2021-01-01T00:00:00Z&until=2022-12-31T00:00:00Z");
    expect(events.map((x) => x.id)).toEqual([e.e5, e.e4, e.e3, e.e2, e.e1]);
  });
});

describe("visibility", () => {
  it("an admin sees everyone's events", async () => {
    const events = await list("");
    expect(mine(events)).toEqual(ids("e1", "e2", "e3", "e4", "e5"));
    const actors = new Set(events.map((x) => x.actor?.id ?? null));
    expect(actors).toContain(alice.id);
    expect(actors).toContain(bob.id);
    expect(actors).toContain(svc.admin.id);
  });

  it("a member sees only the events whose actor they are", async () => {
    const events = await list("", alice.token);
    expect(events.length).toBeGreaterThanOrEqual(3); // e1, e2 and alice's own login
    for (const x of events) expect(x.actor?.id).toBe(alice.id);
    expect(mine(events)).toEqual(ids("e1", "e2"));
    expect(events.some((x) => x.action === "auth.login")).toBe(true);
    // bob sees his, not alice's
    const bobs = await list("", bob.token);
    for (const x of bobs) expect(x.actor?.id).toBe(bob.id);
    expect(mine(bobs)).toEqual(ids("e3", "e4"));
  });

  it("a member filtering on someone else sees nothing (not an error)", async () => {
    expect(await list(`actor=${bob.id}`, alice.token)).toEqual([]);
    expect(await list(`actor=${svc.admin.id}`, alice.token)).toEqual([]);
    expect(mine(await list(`actor=${bob.id}`))).toEqual(ids("e3", "e4"));
  });

  it("no token is 401", async () => {
    expectErrorBody(await svc.call("GET", "/v1/audit"), 401, "unauthorized");
  });
});

describe("filters", () => {
  it("actor", async () => {
    const events = await list(`actor=${alice.id}`);
    for (const x of events) expect(x.actor?.id).toBe(alice.id);
    expect(mine(events)).toEqual(ids("e1", "e2"));
  });

  it("action", async () => {
    const events = await list("action=domain.enable");
    for (const x of events) expect(x.action).toBe("domain.enable");
    expect(mine(events)).toEqual(ids("e2", "e4"));
    expect(mine(await list("action=auth.login_failed"))).toEqual(ids("e5"));
    expect(await list("action=no.such.action")).toEqual([]);
  });

  it("handle (compared lower-cased)", async () => {
    expect(mine(await list("handle=flt-alpha"))).toEqual(ids("e1", "e2"));
    expect(mine(await list("handle=FLT-Alpha"))).toEqual(ids("e1", "e2"));
    expect(mine(await list("handle=flt-beta"))).toEqual(ids("e3", "e4"));
    expect(await list("handle=flt-gamma")).toEqual([]);
  });

  it("domain", async () => {
    expect(await list("domain=flt-example.com").then((x) => x.map((y) => y.id))).toEqual([e.e2]);
    expect(await list("domain=flt-example.org").then((x) => x.map((y) => y.id))).toEqual([e.e4]);
    expect(await list("domain=flt-example.net")).toEqual([]);
  });

  it("key_id", async () => {
    expect(mine(await list(`key_id=${K1}`))).toEqual(ids("e1", "e3"));
    expect((await list(`key_id=${K1}`)).length).toBe(2);
    expect(mine(await list(`key_id=${K2}`))).toEqual(ids("e2", "e4"));
    expect(await list(`key_id=${randomUUID()}`)).toEqual([]);
  });

  it.each([
    ["success", ["e1"]],
    ["upstream_refused", ["e2"]],
    ["unknown", ["e3"]],
    ["rate_limited", ["e4"]],
    ["invalid", ["e5"]],
    ["denied", []],
    ["upstream_error", []],
  ] as const)("outcome=%s", async (outcome, expected) => {
    const events = await list(`outcome=${outcome}`);
    for (const x of events) expect(x.outcome).toBe(outcome);
    expect(mine(events)).toEqual(ids(...expected));
  });

  it("since and until (both inclusive)", async () => {
    expect(mine(await list("since=2021-03-01T00:00:00Z&until=2021-12-31T23:59:59Z"))).toEqual(ids("e2", "e3"));
    expect(mine(await list(`since=${AT.e2.toISOString()}&until=${AT.e3.toISOString()}`))).toEqual(ids("e2", "e3"));
    expect(mine(await list("until=2021-03-01"))).toEqual(ids("e1"));
    const since = await list("since=2022-01-01");
    expect(mine(since)).toEqual(ids("e4", "e5"));
    for (const x of since) expect(Date.parse(x.at)).toBeGreaterThanOrEqual(Date.parse("2022-01-01"));
    // offsets are honoured: 12:00+02:00 is 10:00Z
    expect(mine(await list("since=2021-05-10T12:00:00%2B02:00&until=2021-05-10T12:00:00%2B02:00"))).toEqual(ids("e2"));
  });

  it("an event's own `at`, as shown (to the millisecond), finds it as since and as until, though it was stored to the microsecond", async () => {
    const r = row({ action: "auth.login", actor: { id: alice.id, username: "alice" }, handle: "flt-micro" });
    await svc.deps.db.insert(auditEvents).values({ ...r, at: sql`'2021-07-01T10:00:00.123456Z'::timestamptz` });
    const [shown] = await list("handle=flt-micro");
    expect(shown.at).toBe("2021-07-01T10:00:00.123Z");
    for (const q of [`since=${shown.at}&until=${shown.at}`, `until=${shown.at}`, `since=${shown.at}`]) {
      expect((await list(`handle=flt-micro&${q}`)).map((x) => x.id), q).toEqual([r.id]);
    }
    // and the millisecond before or after does not
    expect(await list("handle=flt-micro&until=2021-07-01T10:00:00.122Z")).toEqual([]);
    expect(await list("handle=flt-micro&since=2021-07-01T10:00:00.124Z")).toEqual([]);
  });

  it("filters combine (AND)", async () => {
    expect(await list("handle=flt-beta&outcome=unknown").then((x) => x.map((y) => y.id))).toEqual([e.e3]);
    expect(await list(`key_id=${K2}&actor=${bob.id}`).then((x) => x.map((y) => y.id))).toEqual([e.e4]);
    expect(await list(`action=handle.create&key_id=${K1}&since=2021-06-01`).then((x) => x.map((y) => y.id))).toEqual([e.e3]);
    expect(await list(`handle=flt-alpha&actor=${bob.id}`)).toEqual([]);
  });
});

describe("bad filter values", () => {
  it.each([
    ["actor", "actor=not-a-uuid"],
    ["actor", "actor=123"],
    ["key_id", "key_id=abc"],
    ["outcome", "outcome=great"],
    ["outcome", "outcome=SUCCESS"],
    ["since", "since=yesterday"],
    ["since", "since=2021-13-45"],
    ["since", "since=2021-02-30"], // no such day (a lenient parser would roll it over to 2 March)
    ["until", "until=2021-04-31T10:00:00Z"],
    ["until", "until=not-a-date"],
    ["until", "until=9999-12-31T23:00:00-02:00"], // year 10000 in UTC: a Date writes "+010000-…", PostgreSQL refuses it (was a 500)
    ["since", "since=9999-12-31T23:00:00-02:00"],
    ["limit", "limit=0"],
    ["limit", "limit=501"],
    ["limit", "limit=abc"],
    ["limit", "limit=-1"],
    ["limit", "limit=1.5"],
    ["cursor", "cursor=garbage"],
    ["cursor", "cursor=" + Buffer.from("v1:abc").toString("base64url")],
    ["cursor", "cursor=" + "A".repeat(200)],
    // well-formed, but no such instant: Date would roll it over, PostgreSQL refuses it (was a 500)
    ["cursor", "cursor=" + Buffer.from("v2|2026-02-30T10:00:00.000000Z|1").toString("base64url")],
    ["cursor", "cursor=" + Buffer.from("v2|2026-01-01T24:00:00.000000Z|1").toString("base64url")],
    ["cursor", "cursor=" + Buffer.from("v2|0000-01-01T00:00:00.000000Z|1").toString("base64url")], // Date takes year 0, PostgreSQL does not
    ["cursor", "cursor="], // not "unset": a client looping on cursor=${next_cursor ?? ""} must hear of it
    ["handle", "handle=%20%20"], // not "unset" either: that filter would match every event
    ["domain", "domain=%20"],
  ])("400 invalid_params field %s for %s", async (field, query) => {
    const r = await svc.call("GET", `/v1/audit?${query}`, { token: svc.admin.token });
    expectErrorBody(r, 400, "invalid_params");
    expect(r.json.field).toBe(field);
  });

  it("the good values of the same parameters are accepted", async () => {
    for (const q of [
      `actor=${alice.id}`,
      `key_id=${K1}`,
      "outcome=success",
      "since=2021-01-01",
      "until=2030-01-01T00:00:00Z",
      "until=9999-12-31T23:00:00%2B02:00", // still in year 9999 in UTC
      "since=0001-01-01", // the first century is not 1900's
      "until=0099-12-31T23:59:59Z",
      "limit=1",
      "limit=500",
    ]) {
      const r = await svc.call("GET", `/v1/audit?${q}`, { token: svc.admin.token });
      expect(r.status, q).toBe(200);
    }
  });

  it("a parameter sent empty is unset, every one alike (a form sends all its fields)", async () => {
    const all = await svc.call("GET", "/v1/audit?limit=500", { token: svc.admin.token });
    const empty = await svc.call("GET", "/v1/audit?actor=&action=&handle=&domain=&key_id=&outcome=&since=&until=&limit=", { token: svc.admin.token });
    expect(empty.status, empty.text).toBe(200);
    expect(empty.json.events.map((e: Ev) => e.id)).toEqual(all.json.events.slice(0, 50).map((e: Ev) => e.id)); // limit= is the default 50
    const one = await svc.call("GET", `/v1/audit?actor=&handle=flt-alpha&limit=`, { token: svc.admin.token });
    expect(one.json.events.map((e: Ev) => e.id)).toEqual((await svc.call("GET", "/v1/audit?handle=flt-alpha", { token: svc.admin.token })).json.events.map((e: Ev) => e.id));
    const exp = await svc.call("GET", "/v1/audit/export?format=&outcome=&since=", { token: svc.admin.token });
    expect(exp.status).toBe(200);
    expect(exp.headers.get("content-type")).toMatch(/^application\/x-ndjson/);
  });

  it("the export refuses them too, before streaming", async () => {
    for (const [q, field] of [
      ["actor=nope", "actor"],
      ["outcome=nope", "outcome"],
      ["since=nope", "since"],
      ["format=xml", "format"],
    ]) {
      const r = await svc.call("GET", `/v1/audit/export?${q}`, { token: svc.admin.token });
      expectErrorBody(r, 400, "invalid_params");
      expect(r.json.field).toBe(field);
    }
  });
});

describe("keyset pagination", () => {
  async function pages(query: string, limit: number) {
    const out: { ids: string[]; next: string | null }[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 20; i++) {
      const r = await svc.call("GET", `/v1/audit?${query}&limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`, {
        token: svc.admin.token,
      });
      expect(r.status, r.text).toBe(200);
      out.push({ ids: r.json.events.map((x: Ev) => x.id), next: r.json.next_cursor });
      cursor = r.json.next_cursor;
      if (!cursor) break;
    }
    return out;
  }

  it("25 events with limit=10: three pages, newest first, no duplicates, none missing", async () => {
    const inserted = await insertEvents(
      svc,
      Array.from({ length: 25 }, (_, i) => ({ action: "handle.create" as const, handle: "page-25", detail: { i } })),
    );
    const got = await pages("handle=page-25", 10);
    expect(got.map((p) => p.ids.length)).toEqual([10, 10, 5]);
    expect(got[0]!.next).toEqual(expect.any(String));
    expect(got[1]!.next).toEqual(expect.any(String));
    expect(got[2]!.next).toBeNull();
    const all = got.flatMap((p) => p.ids);
    expect(new Set(all).size).toBe(25);
    expect(all).toEqual([...inserted].reverse());
  });

  it("new events arriving between pages neither shift nor repeat the later pages", async () => {
    const inserted = await insertEvents(svc, Array.from({ length: 12 }, () => ({ handle: "page-live" })));
    const first = await svc.call("GET", "/v1/audit?handle=page-live&limit=5", { token: svc.admin.token });
    const newer = await insertEvents(svc, Array.from({ length: 3 }, () => ({ handle: "page-live" })));
    const second = await svc.call("GET", `/v1/audit?handle=page-live&limit=5&cursor=${first.json.next_cursor}`, { token: svc.admin.token });
    expect(first.json.events.map((x: Ev) => x.id)).toEqual(inserted.slice(7).reverse());
    expect(second.json.events.map((x: Ev) => x.id)).toEqual(inserted.slice(2, 7).reverse());
    expect(second.json.events.map((x: Ev) => x.id)).not.toContain(newer[0]);
  });

  it("exactly two full pages: the second has next_cursor null (no empty third page)", async () => {
    await insertEvents(svc, Array.from({ length: 20 }, () => ({ handle: "page-20" })));
    const got = await pages("handle=page-20", 10);
    expect(got.map((p) => p.ids.length)).toEqual([10, 10]);
    expect(got[1]!.next).toBeNull();
  });

  it("the default page is 50", async () => {
    await insertEvents(svc, Array.from({ length: 60 }, () => ({ handle: "page-60" })));
    const r = await svc.call("GET", "/v1/audit?handle=page-60", { token: svc.admin.token });
    expect(r.json.events).toHaveLength(50);
    expect(r.json.next_cursor).toEqual(expect.any(String));
  });

  it("record() writes events that the list shows at once", async () => {
    const id = await record(svc.deps.db, {
      action: "grant.create",
      outcome: "success",
      actor: { id: alice.id, username: "alice" },
      meta: { requestId: "rec-1", ip: null, userAgent: null },
      handle: "page-record",
    });
    const events = await list("handle=page-record", alice.token);
    expect(events.map((x) => x.id)).toEqual([id]);
    expect(events[0]).toMatchObject({ request_id: "rec-1", ip: null, user_agent: null, action: "grant.create" });
  });
});

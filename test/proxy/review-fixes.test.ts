// Behaviours fixed after a review: each test fails without its fix.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { expectErrorBody } from "../helpers/harness.js";
import { CREATE, post, receivedDuring, startPair, storeKey, type Ctx } from "./common.js";

describe("proxied calls: review fixes", () => {
  let ctx: Ctx;
  let key: { id: string; plaintext: string };
  beforeAll(async () => {
    ctx = await startPair();
    key = await storeKey(ctx, ctx.svc.admin.token);
  });
  afterAll(() => ctx.close());

  it("a NUL character in the handle is 400 invalid_params, audited (without the NUL), never a 500", async () => {
    const ok = await post(ctx, CREATE, ctx.svc.admin.token, { handle: "nul-control" });
    expect(ok.status).toBe(200);
    const r = await post(ctx, CREATE, ctx.svc.admin.token, { handle: "ab\u0000cd" });
    expectErrorBody(r, 400, "invalid_params");
    expect(r.json.field).toBe("handle");
    const events = await ctx.svc.call("GET", `/v1/audit?action=handle.create&outcome=invalid`, { token: ctx.svc.admin.token });
    const ev = events.json.events.find((e: { request_id: string }) => e.request_id === r.headers.get("x-request-id"));
    expect(ev?.handle).toBe("abcd");
  });

  it("upstream's Retry-After is capped at 300 s: a bogus date cannot pause everyone for days", async () => {
    ctx.sim.faults.push({ kind: "status", status: 429, body: "Too many requests, please try again later.", contentType: "text/plain", headers: { "retry-after": "Fri, 31 Dec 9999 23:59:59 GMT" } });
    const r = await post(ctx, CREATE, ctx.svc.admin.token, { handle: "cap-1" });
    expectErrorBody(r, 429, "rate_limited");
    expect(r.json.retry_after).toBe(300);
    const [pause] = await rowsOf<{ s: number }>(ctx.svc.database.db, sql`select extract(epoch from until - now())::int as s from upstream_pauses where scope = 'global'`);
    expect(Number(pause!.s)).toBeGreaterThan(250);
    expect(Number(pause!.s)).toBeLessThanOrEqual(300);
    await ctx.svc.database.db.execute(sql`delete from upstream_pauses`);
  });

  it("a key flagged rejected stays flagged through a 5xx; an accepted call clears it", async () => {
    const status = async () => (await ctx.svc.call("GET", "/v1/keys", { token: ctx.svc.admin.token })).json.keys.find((k: { id: string }) => k.id === key.id).status;
    ctx.sim.faults.push({ kind: "status", status: 401, body: JSON.stringify({ error: "invalid_or_expired_api_key" }) });
    expect((await post(ctx, CREATE, ctx.svc.admin.token, { handle: "flag-1" })).status).toBe(502);
    expect(await status()).toBe("rejected");
    ctx.sim.faults.push({ kind: "status", status: 503, body: JSON.stringify({ error: "temporarily_unavailable" }) });
    expect((await post(ctx, CREATE, ctx.svc.admin.token, { handle: "flag-2" })).status).toBe(502);
    expect(await status(), "a 5xx says nothing about the key").toBe("rejected");
    expect((await post(ctx, CREATE, ctx.svc.admin.token, { handle: "flag-3" })).status).toBe(200);
    expect(await status()).toBe("ok");
  });

  it("the web framework's own 404 (an unknown route) is passed on, but neither clears a rejected key nor is kept for repeats", async () => {
    const status = async () => (await ctx.svc.call("GET", "/v1/keys", { token: ctx.svc.admin.token })).json.keys.find((k: { id: string }) => k.id === key.id).status;
    ctx.sim.faults.push({ kind: "status", status: 401, body: JSON.stringify({ error: "invalid_or_expired_api_key" }) });
    expect((await post(ctx, CREATE, ctx.svc.admin.token, { handle: "route-1" })).status).toBe(502);
    expect(await status()).toBe("rejected");
    const routeMissing = JSON.stringify({ message: "Cannot POST /api/handle/create", error: "Not Found", statusCode: 404 });
    ctx.sim.faults.push({ kind: "status", status: 404, body: routeMissing });
    const r = await post(ctx, CREATE, ctx.svc.admin.token, { handle: "route-2" }, { "idempotency-key": "route-2" });
    expect(r.status).toBe(404);
    expect(r.text).toBe(routeMissing);
    expect(await status(), "upstream never checked the key").toBe("rejected");
    // The deployment fixed, the repeat reaches upstream (it is not answered the stored 404).
    const again = await receivedDuring(ctx.sim, () => post(ctx, CREATE, ctx.svc.admin.token, { handle: "route-2" }, { "idempotency-key": "route-2" }));
    expect(again.result.status).toBe(200);
    expect(again.received).toHaveLength(1);
    expect(await status()).toBe("ok");
  });

  it("an answer whose storing fails once (a serialization failure) is stored on a second try and replayed", async () => {
    const db = ctx.svc.database.db;
    // The first update to 'done' fails as a passing fault would; a sequence is not rolled back.
    await db.execute(sql`create sequence review_done_tries`);
    await db.execute(sql`create function review_fail_first_done() returns trigger language plpgsql as $$ begin
      if new.state = 'done' and nextval('review_done_tries') = 1 then raise exception 'passing fault' using errcode = '40001'; end if;
      return new; end $$`);
    await db.execute(sql`create trigger review_fail_first_done before update on idempotency_keys for each row execute function review_fail_first_done()`);
    try {
      const first = await receivedDuring(ctx.sim, () => post(ctx, CREATE, ctx.svc.admin.token, { handle: "stored-late" }, { "idempotency-key": "stored-late" }));
      expect(first.result.status).toBe(200);
      expect(first.received).toHaveLength(1);
      const [tries] = await rowsOf<{ n: number }>(db, sql`select last_value as n from review_done_tries`);
      expect(Number(tries!.n), "the failed write was tried again").toBe(2);
      const repeat = await receivedDuring(ctx.sim, () => post(ctx, CREATE, ctx.svc.admin.token, { handle: "stored-late" }, { "idempotency-key": "stored-late" }));
      expect(repeat.result.status, "the first answer is replayed, not a 409 in flight").toBe(200);
      expect(repeat.result.headers.get("idempotent-replayed")).toBe("true");
      expect(repeat.received).toHaveLength(0);
    } finally {
      await db.execute(sql`drop trigger review_fail_first_done on idempotency_keys`);
      await db.execute(sql`drop function review_fail_first_done()`);
      await db.execute(sql`drop sequence review_done_tries`);
    }
  });

  it("a write that failed slowly (a statement timeout) is not tried again: the caller would wait as long again", async () => {
    const db = ctx.svc.database.db;
    await db.execute(sql`create sequence review_slow_tries`);
    await db.execute(sql`create function review_slow_done() returns trigger language plpgsql as $$ begin
      if new.state = 'done' then perform nextval('review_slow_tries'); perform pg_sleep(1.1); raise exception 'canceling statement due to statement timeout' using errcode = '57014'; end if;
      return new; end $$`);
    await db.execute(sql`create trigger review_slow_done before update on idempotency_keys for each row execute function review_slow_done()`);
    try {
      const t0 = performance.now();
      const r = await post(ctx, CREATE, ctx.svc.admin.token, { handle: "slow-store" }, { "idempotency-key": "slow-store" });
      expect(r.status, "upstream's answer, all the same").toBe(200);
      const [tries] = await rowsOf<{ n: number }>(db, sql`select last_value as n from review_slow_tries`);
      expect(Number(tries!.n)).toBe(1);
      expect(performance.now() - t0).toBeLessThan(3_500); // three tries would take 3.3 s and more
    } finally {
      await db.execute(sql`drop trigger review_slow_done on idempotency_keys`);
      await db.execute(sql`drop function review_slow_done()`);
      await db.execute(sql`drop sequence review_slow_tries`);
    }
  });
});

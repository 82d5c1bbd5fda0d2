// Behaviours fixed after a review: each test fails without its fix.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { expectErrorBody } from "../helpers/harness.js";
import { CREATE, post, startPair, storeKey, type Ctx } from "./common.js";

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
});

// No answer in time (504, at the deadline, the socket released) and a refused connection (502
// after a bounded number of retries, well inside the deadline).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody } from "../helpers/harness.js";
import { CREATE, closedPort, eventOf, expectNoSecrets, expectRateLimitHeaders, post, receivedDuring, startPair, storeKey, waitFor, type Ctx } from "./common.js";

describe("no answer in time (UPSTREAM_TIMEOUT_MS=500)", () => {
  let ctx: Ctx;
  let user: { id: string; token: string };
  let key: { id: string; plaintext: string };
  beforeAll(async () => {
    ctx = await startPair({ env: { UPSTREAM_TIMEOUT_MS: "500" } });
    user = await ctx.svc.addUser(ctx.svc.admin.token, "tim");
    key = await storeKey(ctx, user.token, "tim-key");
  });
  afterAll(() => ctx?.close());

  it("a hang is 504 upstream_timeout at about the deadline, audited upstream_error", async () => {
    // The service's first upstream call: the only socket the simulator sees is this one.
    expect(ctx.sim.openSockets()).toBe(0);
    ctx.sim.faults.push({ kind: "hang" });
    let peak = 0;
    const watch = setInterval(() => (peak = Math.max(peak, ctx.sim.openSockets())), 10);
    const started = performance.now();
    const { result: r, received } = await receivedDuring(ctx.sim, () => post(ctx, CREATE, user.token, { handle: "hung" }));
    const elapsed = performance.now() - started;
    clearInterval(watch);
    expect(received).toHaveLength(1);
    expect(peak).toBe(1);
    expectErrorBody(r, 504, "upstream_timeout");
    expect(elapsed).toBeGreaterThanOrEqual(450);
    expect(elapsed).toBeLessThan(3000); // loose: the machine may be busy
    expectRateLimitHeaders(r);
    const e = await eventOf(ctx, r);
    expect([e.outcome, e.upstream_status, e.key_id]).toEqual(["upstream_error", null, key.id]);

    const ok = await post(ctx, CREATE, user.token, { handle: "after-hang" });
    expect(ok.status).toBe(200);
  });

  it("hung sockets are closed, not piled up: after three hangs in a row at most one connection remains", async () => {
    // undici may open a fresh idle connection after aborting one, so "released" is measured as:
    // sockets held by hung requests do not accumulate (kept open, there would be three or more).
    for (const n of [1, 2, 3]) {
      ctx.sim.faults.push({ kind: "hang" });
      const r = await post(ctx, CREATE, user.token, { handle: `hung-${n}` });
      expectErrorBody(r, 504, "upstream_timeout");
    }
    await waitFor(() => ctx.sim.openSockets() <= 1, 3000, "the hung sockets to be released");
    const ok = await post(ctx, CREATE, user.token, { handle: "after-three-hangs" });
    expect(ok.status).toBe(200);
    expect(ctx.sim.openSockets()).toBeLessThanOrEqual(1);
  });

  it("an answer later than the deadline is a 504 too, and the next call is fine", async () => {
    ctx.sim.faults.push({ kind: "delay", ms: 4000 });
    const started = performance.now();
    const r = await post(ctx, CREATE, user.token, { handle: "too-slow" });
    expect(performance.now() - started).toBeLessThan(3000); // not waiting for the late answer
    expectErrorBody(r, 504, "upstream_timeout");
    expect((await eventOf(ctx, r)).outcome).toBe("upstream_error");

    ctx.sim.faults.push({ kind: "delay", ms: 200 }); // within the deadline: fine
    const ok = await post(ctx, CREATE, user.token, { handle: "slow-but-in-time" });
    expect(ok.status).toBe(200);
    expect((await eventOf(ctx, ok)).outcome).toBe("success");
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

describe("connection refused", () => {
  let ctx: Ctx;
  let user: { id: string; token: string };
  beforeAll(async () => {
    const port = await closedPort();
    // The default deadline (10 s): the retries must be bounded by themselves, not by the deadline.
    ctx = await startPair({ baseUrl: `http://127.0.0.1:${port}` });
    user = await ctx.svc.addUser(ctx.svc.admin.token, "rita");
    await storeKey(ctx, user.token, "rita-key");
  });
  afterAll(() => ctx?.close());

  it("is 502 upstream_unavailable after a few quick retries, audited upstream_error", async () => {
    const started = performance.now();
    const r = await post(ctx, CREATE, user.token, { handle: "refused" });
    const elapsed = performance.now() - started;
    expectErrorBody(r, 502, "upstream_unavailable");
    expect(elapsed).toBeLessThan(5000); // the deadline is 10 s: the retries stop by themselves
    expectRateLimitHeaders(r);
    const e = await eventOf(ctx, r);
    expect([e.outcome, e.upstream_status]).toEqual(["upstream_error", null]);

    const again = await post(ctx, "/api/handle/domain/enable", user.token, { handle: "refused", domain: "example.com" });
    expectErrorBody(again, 502, "upstream_unavailable");
    expect((await eventOf(ctx, again, "domain.enable")).outcome).toBe("upstream_error");
  });

  it("never shows a stored key's plaintext", () => {
    expect(ctx.sim.received).toHaveLength(0); // the simulator of this pair is not where the service points
    expectNoSecrets(ctx);
  });
});

describe("a deadline above 10 s (UPSTREAM_TIMEOUT_MS=13000)", () => {
  let ctx: Ctx;
  let user: { id: string; token: string };
  beforeAll(async () => {
    ctx = await startPair({ env: { UPSTREAM_TIMEOUT_MS: "13000" } });
    user = await ctx.svc.addUser(ctx.svc.admin.token, "slow");
    await storeKey(ctx, user.token, "slow-key");
  });
  afterAll(() => ctx?.close());

  it("waits for an answer that takes longer than 10 s and comes within it", async () => {
    ctx.sim.faults.push({ kind: "delay", ms: 10_800 });
    const r = await post(ctx, CREATE, user.token, { handle: "patient" });
    expect(r.status, r.text).toBe(200);
  }, 30_000);
});

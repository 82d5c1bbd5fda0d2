// Upstream's 429s: JSON (its per-key limit) pauses that key; plain text (its per-address limit)
// pauses every proxied call. Both answer 429 rate_limited reason "upstream" with upstream's
// Retry-After, and a paused call never reaches upstream.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAX_UPSTREAM_PAUSE_S, mapResult } from "../../src/services/proxy.js";
import type { Fault } from "../../src/simulator/server.js";
import { expectErrorBody, type CallResult } from "../helpers/harness.js";
import {
  CREATE,
  ENABLE,
  eventOf,
  expectNoSecrets,
  expectRateLimitHeaders,
  grantKey,
  post,
  receivedDuring,
  sleep,
  startPair,
  storeKey,
  type Ctx,
} from "./common.js";

const jsonLimit = (retryAfter: string): Fault => ({
  kind: "status",
  status: 429,
  body: '{"error":"rate_limited","where":"handle_create","reason":"too_many_requests_key"}',
  headers: { "retry-after": retryAfter },
});
const textLimit = (retryAfter: string): Fault => ({
  kind: "status",
  status: 429,
  body: "Too many requests, please try again later.",
  contentType: "text/plain; charset=utf-8",
  headers: { "retry-after": retryAfter },
});

type User = { id: string; token: string };

/** A service and its simulator, with anna and bert each holding a key of their own. */
async function twoUsersTwoKeys(): Promise<{ ctx: Ctx; a: User; b: User }> {
  const ctx = await startPair();
  const a = await ctx.svc.addUser(ctx.svc.admin.token, "anna");
  const b = await ctx.svc.addUser(ctx.svc.admin.token, "bert");
  await storeKey(ctx, a.token, "anna-key");
  await storeKey(ctx, b.token, "bert-key");
  return { ctx, a, b };
}

function expectUpstreamLimit(r: CallResult, maxRetry: number, minRetry = 1) {
  expectErrorBody(r, 429, "rate_limited");
  expect(r.json.reason).toBe("upstream");
  const header = r.headers.get("retry-after");
  expect(header).toMatch(/^\d+$/);
  expect(Number(header)).toBeGreaterThanOrEqual(minRetry);
  expect(Number(header)).toBeLessThanOrEqual(maxRetry);
  expect(r.json.retry_after).toBe(Number(header));
  expectRateLimitHeaders(r);
}

describe("JSON 429: upstream's per-key limit", () => {
  let ctx: Ctx;
  let owner: { id: string; token: string };
  let mate: { id: string; token: string };
  let k1: { id: string; plaintext: string };
  let k2: { id: string; plaintext: string };
  let k3: { id: string; plaintext: string };
  beforeAll(async () => {
    ctx = await startPair();
    owner = await ctx.svc.addUser(ctx.svc.admin.token, "olga");
    mate = await ctx.svc.addUser(ctx.svc.admin.token, "mate");
    k1 = await storeKey(ctx, owner.token, "k1");
    k2 = await storeKey(ctx, owner.token, "k2");
    k3 = await storeKey(ctx, owner.token, "k3");
    await grantKey(ctx, owner.token, k1.id, "mate");
  });
  afterAll(() => ctx?.close());

  const create = (token: string, keyId: string, handle: string) => post(ctx, CREATE, token, { handle }, { "x-key-id": keyId });

  it("answers 429 upstream with Retry-After 7; that key is paused (for all its users), another key is not", async () => {
    ctx.sim.faults.push(jsonLimit("7"));
    const first = await receivedDuring(ctx.sim, () => create(owner.token, k1.id, "limited-1"));
    expect(first.received).toHaveLength(1);
    expectUpstreamLimit(first.result, 7, 7);
    expect(first.result.headers.get("retry-after")).toBe("7");
    const e = await eventOf(ctx, first.result);
    expect([e.outcome, e.upstream_status, e.key_id]).toEqual(["rate_limited", 429, k1.id]);

    // The same key: refused here, upstream never hears of it.
    const same = await receivedDuring(ctx.sim, () => create(owner.token, k1.id, "limited-2"));
    expect(same.received).toHaveLength(0);
    expectUpstreamLimit(same.result, 7);
    const e2 = await eventOf(ctx, same.result);
    expect([e2.outcome, e2.upstream_status, e2.key_id]).toEqual(["rate_limited", null, k1.id]);
    expect(e2.detail, "a refusal by upstream's pause is recorded with that reason").toEqual({ error: "rate_limited", reason: "upstream" });

    // The same key used by a grantee: the pause is the key's, not the user's.
    const mates = await receivedDuring(ctx.sim, () => post(ctx, CREATE, mate.token, { handle: "limited-3" }));
    expect(mates.received).toHaveLength(0);
    expectUpstreamLimit(mates.result, 7);

    // Another key of the same user goes through.
    const other = await receivedDuring(ctx.sim, () => create(owner.token, k2.id, "not-limited"));
    expect(other.received).toHaveLength(1);
    expect(other.result.status).toBe(200);
    expect(other.received[0]!.headers["x-api-key"]).toBe(k2.plaintext);
  });

  it("the pause ends when upstream's Retry-After says", async () => {
    ctx.sim.faults.push(jsonLimit("1"));
    const first = await create(owner.token, k3.id, "short-pause");
    expectUpstreamLimit(first, 1, 1);
    const during = await receivedDuring(ctx.sim, () => create(owner.token, k3.id, "short-pause"));
    expect(during.received).toHaveLength(0);
    expectUpstreamLimit(during.result, 1);
    await sleep(1200);
    const after = await receivedDuring(ctx.sim, () => create(owner.token, k3.id, "short-pause"));
    expect(after.received).toHaveLength(1);
    expect(after.result.status).toBe(200);
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

describe("plain-text 429: upstream's per-address limit pauses every call", () => {
  let ctx: Ctx;
  let a: User;
  let b: User;
  beforeAll(async () => ({ ctx, a, b } = await twoUsersTwoKeys()));
  afterAll(() => ctx?.close());

  // Order matters in this block: the first pause is short and must be over before the second.
  it("a short pause holds every key back, then ends", async () => {
    ctx.sim.faults.push(textLimit("1"));
    const first = await post(ctx, CREATE, a.token, { handle: "global-short" });
    expectUpstreamLimit(first, 1, 1);
    const other = await receivedDuring(ctx.sim, () => post(ctx, CREATE, b.token, { handle: "global-short-b" }));
    expect(other.received).toHaveLength(0);
    expectUpstreamLimit(other.result, 1);
    await sleep(1200);
    const after = await receivedDuring(ctx.sim, () => post(ctx, CREATE, b.token, { handle: "global-short-b" }));
    expect(after.received).toHaveLength(1);
    expect(after.result.status).toBe(200);
  });

  it("answers 429 upstream with Retry-After 7, and then every call, whatever the key or route, is paused", async () => {
    ctx.sim.faults.push(textLimit("7"));
    const first = await receivedDuring(ctx.sim, () => post(ctx, CREATE, a.token, { handle: "global-1" }));
    expect(first.received).toHaveLength(1);
    expectUpstreamLimit(first.result, 7, 7);
    expect(first.result.headers.get("retry-after")).toBe("7");
    const e = await eventOf(ctx, first.result);
    expect([e.outcome, e.upstream_status]).toEqual(["rate_limited", 429]);

    const calls = [
      () => post(ctx, CREATE, a.token, { handle: "global-2" }),
      () => post(ctx, CREATE, b.token, { handle: "global-3" }),
      () => post(ctx, ENABLE, b.token, { handle: "global-3", domain: "example.com" }),
    ];
    for (const call of calls) {
      const { result, received } = await receivedDuring(ctx.sim, call);
      expect(received).toHaveLength(0);
      expectUpstreamLimit(result, 7);
    }
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

describe("a 429 whose body is odd: still upstream's per-address limit", () => {
  let ctx: Ctx;
  let a: User;
  let b: User;
  beforeAll(async () => ({ ctx, a, b } = await twoUsersTwoKeys()));
  afterAll(() => ctx?.close());

  // A 429 must pause whatever its body does; one that cannot be read whole in time is taken as the
  // per-address answer (every call pauses), even typed as JSON.
  it.each([
    ["whose JSON body never ends", { kind: "stalled_body", status: 429, headers: { "retry-after": "1" } } as Fault],
    ["with a 2 MiB body", { kind: "oversized", status: 429, bytes: 2 * 1024 * 1024, headers: { "retry-after": "1" } } as Fault],
  ])("a 429 %s: still a pause of every call, taken within a second or so", async (_, fault) => {
    ctx.sim.faults.push(fault);
    const started = performance.now();
    const first = await receivedDuring(ctx.sim, () => post(ctx, CREATE, a.token, { handle: "odd-429" }));
    expect(performance.now() - started).toBeLessThan(3000);
    expect(first.received).toHaveLength(1);
    expectUpstreamLimit(first.result, 1, 1);
    const e = await eventOf(ctx, first.result);
    expect([e.outcome, e.upstream_status]).toEqual(["rate_limited", 429]);
    const other = await receivedDuring(ctx.sim, () => post(ctx, CREATE, b.token, { handle: "odd-429-b" }));
    expect(other.received).toHaveLength(0);
    expectUpstreamLimit(other.result, 1);
    await sleep(1200);
    expect((await post(ctx, CREATE, b.token, { handle: `odd-429-after-${fault.kind}` })).status).toBe(200);
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

describe("the simulator's own per-address limit (plain text, no Retry-After)", () => {
  let ctx: Ctx;
  let a: { id: string; token: string };
  let b: { id: string; token: string };
  beforeAll(async () => {
    ctx = await startPair({ sim: { perAddressLimit: 1 } });
    a = await ctx.svc.addUser(ctx.svc.admin.token, "anna");
    b = await ctx.svc.addUser(ctx.svc.admin.token, "bert");
    await storeKey(ctx, a.token, "anna-key");
    await storeKey(ctx, b.token, "bert-key");
  });
  afterAll(() => ctx?.close());

  it("the first call passes, the second is upstream's 429, the third is held back here", async () => {
    const ok = await post(ctx, CREATE, a.token, { handle: "first" });
    expect(ok.status).toBe(200);
    const limited = await receivedDuring(ctx.sim, () => post(ctx, CREATE, a.token, { handle: "second" }));
    expect(limited.received).toHaveLength(1);
    expectUpstreamLimit(limited.result, 60);
    const held = await receivedDuring(ctx.sim, () => post(ctx, CREATE, b.token, { handle: "third" }));
    expect(held.received).toHaveLength(0);
    expectUpstreamLimit(held.result, 60);
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

describe("upstream's Retry-After, as taken (mapResult)", () => {
  const limited = (retryAfter: string | undefined) =>
    mapResult(
      { kind: "answer", status: 429, headers: retryAfter === undefined ? {} : { "retry-after": retryAfter }, body: Buffer.from("busy"), json: undefined, isJson: false, ms: 1 },
      "handle_create",
      "k",
    );
  const pauseOf = (retryAfter: string | undefined) => limited(retryAfter).pause?.seconds;
  it.each([
    ["7", 7],
    ["0", 1],
    ["300", MAX_UPSTREAM_PAUSE_S],
    ["99999", MAX_UPSTREAM_PAUSE_S],
    [undefined, 60],
    ["soon", 60],
  ])("Retry-After %s: a pause of %i s", (header, seconds) => {
    expect(pauseOf(header)).toBe(seconds);
    expect((limited(header).answer as { extras: { retry_after?: number } }).extras.retry_after).toBe(seconds);
  });
  it("an HTTP date: the seconds until then, capped alike", () => {
    expect(pauseOf(new Date(Date.now() + 30_500).toUTCString())).toBeGreaterThanOrEqual(29);
    expect(pauseOf(new Date(Date.now() + 30_500).toUTCString())).toBeLessThanOrEqual(31);
    expect(pauseOf(new Date(Date.now() + 86_400_000).toUTCString())).toBe(MAX_UPSTREAM_PAUSE_S);
  });
});

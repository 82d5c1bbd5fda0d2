// Idempotency-Key on create: replay of the first answer, 422 for another body, 409 while in
// flight (one upstream call for concurrent duplicates), release after a 5xx, per-user scope, size.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, type CallResult } from "../helpers/harness.js";
import { CREATE, eventOf, expectNoSecrets, expectRateLimitHeaders, post, receivedDuring, startPair, storeKey, type Ctx } from "./common.js";

let ctx: Ctx;
let ann: { id: string; token: string };
let ben: { id: string; token: string };

beforeAll(async () => {
  ctx = await startPair();
  ann = await ctx.svc.addUser(ctx.svc.admin.token, "ann");
  ben = await ctx.svc.addUser(ctx.svc.admin.token, "ben");
  await storeKey(ctx, ann.token, "ann-key");
  await storeKey(ctx, ben.token, "ben-key");
});
afterAll(() => ctx?.close());

const create = (token: string, handle: unknown, idem?: string) =>
  receivedDuring(ctx.sim, () => post(ctx, CREATE, token, { handle }, idem === undefined ? {} : { "idempotency-key": idem }));

describe("Idempotency-Key on create", () => {
  it("same key, same body: the first answer replayed, Idempotent-Replayed: true, upstream called once", async () => {
    const first = await create(ann.token, "idem-one", "key-1");
    expect(first.result.status).toBe(200);
    expect(first.received).toHaveLength(1);
    expect(first.result.headers.get("idempotent-replayed")).toBeNull();

    const again = await create(ann.token, "idem-one", "key-1");
    expect(again.received).toHaveLength(0);
    expect(again.result.status).toBe(200);
    expect(again.result.text).toBe(first.result.text);
    expect(again.result.headers.get("content-type")).toBe(first.result.headers.get("content-type"));
    expect(again.result.headers.get("idempotent-replayed")).toBe("true");
    expectRateLimitHeaders(again.result);

    // Without the header, the same body does go upstream (and is refused there: the name is taken).
    const plain = await create(ann.token, "idem-one");
    expect(plain.received).toHaveLength(1);
    expect(plain.result.status).toBe(409);
  });

  it("an upstream refusal (below 500) is kept and replayed too", async () => {
    ctx.sim.handles.set("idem-taken", { owner: "e".repeat(64), active: true, disabledDomains: new Set() });
    const first = await create(ann.token, "idem-taken", "key-409");
    expect(first.result.status).toBe(409);
    expect(first.received).toHaveLength(1);
    const again = await create(ann.token, "idem-taken", "key-409");
    expect(again.received).toHaveLength(0);
    expect(again.result.status).toBe(409);
    expect(again.result.text).toBe(first.result.text);
    expect(again.result.headers.get("idempotent-replayed")).toBe("true");
  });

  it("same key, another body: 422 idempotency_key_reused, nothing upstream", async () => {
    const first = await create(ann.token, "idem-two", "key-2");
    expect(first.result.status).toBe(200);
    const other = await create(ann.token, "idem-three", "key-2");
    expectErrorBody(other.result, 422, "idempotency_key_reused");
    expect(other.received).toHaveLength(0);
    expectRateLimitHeaders(other.result);
    // The first body still replays.
    const again = await create(ann.token, "idem-two", "key-2");
    expect(again.result.headers.get("idempotent-replayed")).toBe("true");
  });

  it("same key and body through another stored key (X-Key-Id): 422, and the message says so", async () => {
    const cat = await ctx.svc.addUser(ctx.svc.admin.token, "cat");
    const k1 = await storeKey(ctx, cat.token, "cat-1");
    const k2 = await storeKey(ctx, cat.token, "cat-2");
    const via = (keyId: string) =>
      receivedDuring(ctx.sim, () => post(ctx, CREATE, cat.token, { handle: "idem-cat" }, { "idempotency-key": "key-cat", "x-key-id": keyId }));
    expect((await via(k1.id)).result.status).toBe(200);
    const other = await via(k2.id);
    expectErrorBody(other.result, 422, "idempotency_key_reused");
    expect(other.result.json.message).toMatch(/X-Key-Id/);
    expect(other.received).toHaveLength(0);
    expect((await via(k1.id)).result.headers.get("idempotent-replayed")).toBe("true");
  });

  it("10 concurrent duplicates: exactly one upstream call; the others 409 conflict or a replayed 200", async () => {
    ctx.sim.always = { kind: "delay", ms: 300 };
    try {
      const before = ctx.sim.received.length;
      const answers: CallResult[] = await Promise.all(
        Array.from({ length: 10 }, () =>
          ctx.fetch(CREATE, {
            method: "POST",
            headers: { authorization: `Bearer ${ann.token}`, "content-type": "application/json", "idempotency-key": "key-burst" },
            body: JSON.stringify({ handle: "idem-burst" }),
          }),
        ),
      );
      expect(ctx.sim.received.length - before).toBe(1);
      const fresh = answers.filter((r) => r.status === 200 && r.headers.get("idempotent-replayed") === null);
      const replayed = answers.filter((r) => r.status === 200 && r.headers.get("idempotent-replayed") === "true");
      const conflicts = answers.filter((r) => r.status === 409);
      expect(fresh).toHaveLength(1);
      expect(replayed.length + conflicts.length).toBe(9);
      for (const r of conflicts) expectErrorBody(r, 409, "conflict");
      for (const r of replayed) expect(r.text).toBe(fresh[0]!.text);
      expect(conflicts.length).toBeGreaterThan(0); // they did overlap with the 300 ms upstream call
    } finally {
      ctx.sim.always = undefined;
    }
    const after = await create(ann.token, "idem-burst", "key-burst");
    expect(after.received).toHaveLength(0);
    expect(after.result.headers.get("idempotent-replayed")).toBe("true");
  });

  it("after an upstream 5xx the key is released: a retry with it goes upstream again", async () => {
    ctx.sim.faults.push({ kind: "status", status: 503, body: '{"error":"temporarily_unavailable"}' });
    const failed = await create(ann.token, "idem-retry", "key-5xx");
    expectErrorBody(failed.result, 502, "upstream_error");
    expect(failed.received).toHaveLength(1);
    const retry = await create(ann.token, "idem-retry", "key-5xx");
    expect(retry.received).toHaveLength(1);
    expect(retry.result.status).toBe(200);
    expect(retry.result.headers.get("idempotent-replayed")).toBeNull();
    const replay = await create(ann.token, "idem-retry", "key-5xx");
    expect(replay.received).toHaveLength(0);
    expect(replay.result.headers.get("idempotent-replayed")).toBe("true");
  });

  it("after a reset connection (502 upstream_unavailable) the key is released too", async () => {
    ctx.sim.faults.push({ kind: "reset" });
    const failed = await create(ann.token, "idem-reset", "key-reset");
    expectErrorBody(failed.result, 502, "upstream_unavailable");
    const retry = await create(ann.token, "idem-reset", "key-reset");
    expect(retry.received).toHaveLength(1);
    expect(retry.result.status).toBe(200);
  });

  it("keys are per user: two users with the same Idempotency-Key do not collide", async () => {
    const a = await create(ann.token, "idem-ann", "shared-key");
    const b = await create(ben.token, "idem-ben", "shared-key");
    expect([a.result.status, b.result.status]).toEqual([200, 200]);
    expect(a.received).toHaveLength(1);
    expect(b.received).toHaveLength(1);
    expect(b.result.headers.get("idempotent-replayed")).toBeNull();
    expect(b.result.json.handle).toBe("idem-ben");
    // Same body too: still each their own call.
    const c = await create(ben.token, "idem-ann", "shared-key-2");
    const d = await create(ann.token, "idem-ann", "shared-key-2");
    expect(c.received).toHaveLength(1);
    expect(d.received).toHaveLength(1);
    expect(d.result.headers.get("idempotent-replayed")).toBeNull();
  });

  it("a key of 255 characters is accepted; 256 is 400, nothing upstream, audited invalid", async () => {
    const ok = await create(ann.token, "idem-255", "k".repeat(255));
    expect(ok.result.status).toBe(200);
    expect(ok.received).toHaveLength(1);
    const replay = await create(ann.token, "idem-255", "k".repeat(255));
    expect(replay.result.headers.get("idempotent-replayed")).toBe("true");

    const long = await create(ann.token, "idem-256", "k".repeat(256));
    expectErrorBody(long.result, 400, "invalid_params");
    expect(long.received).toHaveLength(0);
    // judged with the body, before a key is chosen: no key to report on yet
    expectRateLimitHeaders(long.result, ["user", "global"]);
    expect((await eventOf(ctx, long.result)).outcome).toBe("invalid");
  });

  it("a bad body with an Idempotency-Key is refused as a bad body, and does not take the key", async () => {
    const bad = await create(ann.token, "a..b", "key-bad-body");
    expectErrorBody(bad.result, 400, "invalid_params");
    const good = await create(ann.token, "idem-after-bad", "key-bad-body");
    expect(good.result.status).toBe(200);
    expect(good.received).toHaveLength(1);
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

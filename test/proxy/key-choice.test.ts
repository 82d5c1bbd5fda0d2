// Which stored key a proxied call uses: X-Key-Id, the caller's only usable key, key_required,
// forbidden, not_found; grants (use, revoke, expiry); and the order of checks.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, type CallResult } from "../helpers/harness.js";
import {
  CREATE,
  ENABLE,
  auditEvents,
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

let ctx: Ctx;
type U = { id: string; token: string };
let multi: U; // owns two keys
let bob: U; // owns one key
let carol: U; // owns none
let dave: U; // owns none, gets an expiring grant
let m1: { id: string; plaintext: string };
let m2: { id: string; plaintext: string };
let kb: { id: string; plaintext: string };

beforeAll(async () => {
  ctx = await startPair();
  const admin = ctx.svc.admin.token;
  multi = await ctx.svc.addUser(admin, "multi");
  bob = await ctx.svc.addUser(admin, "bob");
  carol = await ctx.svc.addUser(admin, "carol");
  dave = await ctx.svc.addUser(admin, "dave");
  m1 = await storeKey(ctx, multi.token, "m1");
  m2 = await storeKey(ctx, multi.token, "m2");
  kb = await storeKey(ctx, bob.token, "kb");
});
afterAll(() => ctx?.close());

let n = 0;
const fresh = () => `kc-${++n}`;

/** A create; returns the answer and the X-API-Key upstream saw (undefined: nothing reached it). */
async function create(token: string, keyId?: string, body: unknown = { handle: fresh() }) {
  const { result, received } = await receivedDuring(ctx.sim, () => post(ctx, CREATE, token, body, keyId === undefined ? {} : { "x-key-id": keyId }));
  expect(received.length).toBeLessThanOrEqual(1);
  return { r: result, apiKey: received[0]?.headers["x-api-key"] as string | undefined, reached: received.length === 1 };
}

async function expectDenied(got: { r: CallResult; reached: boolean }, status: number, code: string) {
  expectErrorBody(got.r, status, code);
  expect(got.reached).toBe(false);
  expectRateLimitHeaders(got.r, "key optional");
  expect((await eventOf(ctx, got.r)).outcome).toBe(code === "key_required" ? "invalid" : "denied");
}

describe("X-Key-Id", () => {
  it("names the key that is sent upstream, exactly its plaintext", async () => {
    for (const k of [m1, m2, m1]) {
      const got = await create(multi.token, k.id);
      expect(got.r.status, got.r.text).toBe(200);
      expect(got.apiKey).toBe(k.plaintext);
      const e = await eventOf(ctx, got.r);
      expect([e.key_id, e.outcome]).toEqual([k.id, "success"]);
    }
    const en = await receivedDuring(ctx.sim, () => post(ctx, ENABLE, multi.token, { handle: `kc-${n}`, domain: "example.com" }, { "x-key-id": m1.id }));
    expect(en.result.status).toBe(200);
    expect(en.received[0]!.headers["x-api-key"]).toBe(m1.plaintext);
  });

  it("several usable keys and no X-Key-Id: 400 key_required (and an empty X-Key-Id counts as none)", async () => {
    await expectDenied(await create(multi.token), 400, "key_required");
    await expectDenied(await create(multi.token, ""), 400, "key_required");
  });

  it("one usable key and no X-Key-Id: that key", async () => {
    const got = await create(bob.token);
    expect(got.r.status).toBe(200);
    expect(got.apiKey).toBe(kb.plaintext);
  });

  it("no usable key at all: 403 forbidden", async () => {
    await expectDenied(await create(carol.token), 403, "forbidden");
  });

  it("someone else's key (not granted), a random UUID, garbage: 404 not_found", async () => {
    await expectDenied(await create(multi.token, kb.id), 404, "not_found");
    await expectDenied(await create(bob.token, m1.id), 404, "not_found");
    await expectDenied(await create(carol.token, kb.id), 404, "not_found");
    await expectDenied(await create(multi.token, randomUUID()), 404, "not_found");
    for (const garbage of ["not-a-uuid", "1 OR 1=1", `${m1.id}x`, "%00", "../../etc/passwd"]) {
      await expectDenied(await create(multi.token, garbage), 404, "not_found");
    }
    // The owner's own id still works (the refusals above are about the caller, not the key).
    expect((await create(bob.token, kb.id)).r.status).toBe(200);
  });

  it("an admin's role manages keys, it does not use them: another's key is 404, none of their own is 403", async () => {
    const admin = ctx.svc.admin.token;
    await expectDenied(await create(admin, kb.id), 404, "not_found");
    await expectDenied(await create(admin), 403, "forbidden");
  });

  it("a deleted key is not_found at once", async () => {
    const extra = await storeKey(ctx, bob.token, "short-lived");
    expect((await create(bob.token, extra.id)).r.status).toBe(200);
    expect((await ctx.svc.call("DELETE", `/v1/keys/${extra.id}`, { token: bob.token })).status).toBe(204);
    await expectDenied(await create(bob.token, extra.id), 404, "not_found");
  });
});

describe("grants", () => {
  it("a grantee can use the key; after the grant is deleted they cannot, at once", async () => {
    await expectDenied(await create(carol.token), 403, "forbidden");
    const grantId = await grantKey(ctx, bob.token, kb.id, "carol");

    const viaOnly = await create(carol.token);
    expect(viaOnly.r.status, viaOnly.r.text).toBe(200);
    expect(viaOnly.apiKey).toBe(kb.plaintext);
    const viaId = await create(carol.token, kb.id);
    expect(viaId.r.status).toBe(200);
    expect(viaId.apiKey).toBe(kb.plaintext);
    // The call is the grantee's, on the owner's key: the owner sees it in their audit view.
    const e = await eventOf(ctx, viaId.r);
    expect([e.actor?.id, e.key_id]).toEqual([carol.id, kb.id]);
    expect((await auditEvents(ctx, "handle.create", bob.token)).some((x) => x.id === e.id)).toBe(true);

    expect((await ctx.svc.call("DELETE", `/v1/keys/${kb.id}/grants/${grantId}`, { token: bob.token })).status).toBe(204);
    await expectDenied(await create(carol.token), 403, "forbidden");
    await expectDenied(await create(carol.token, kb.id), 404, "not_found");
  });

  it("an expired grant stops working", async () => {
    const expires = new Date(Date.now() + 2500);
    await grantKey(ctx, bob.token, kb.id, "dave", expires);
    const before = await create(dave.token);
    expect(before.r.status, before.r.text).toBe(200);
    expect(before.apiKey).toBe(kb.plaintext);
    await sleep(Math.max(0, expires.getTime() - Date.now()) + 500);
    await expectDenied(await create(dave.token), 403, "forbidden");
    await expectDenied(await create(dave.token, kb.id), 404, "not_found");
  });

  it("a grant on one of several keys makes key_required for the grantee only when they may use several", async () => {
    await grantKey(ctx, multi.token, m1.id, "bob");
    await expectDenied(await create(bob.token), 400, "key_required");
    const viaId = await create(bob.token, m1.id);
    expect(viaId.r.status).toBe(200);
    expect(viaId.apiKey).toBe(m1.plaintext);
  });
});

describe("order of checks: body before key choice", () => {
  it("a bad body from a caller with several keys and no X-Key-Id is invalid_params, not key_required", async () => {
    const bad = await create(multi.token, undefined, { handle: "a..b" });
    expectErrorBody(bad.r, 400, "invalid_params");
    expect(bad.r.json.field).toBe("handle");
    expect(bad.reached).toBe(false);
    const unparsable = await receivedDuring(ctx.sim, () =>
      ctx.svc.call("POST", CREATE, { token: multi.token, body: "{nope", headers: { "content-type": "application/json" } }),
    );
    expectErrorBody(unparsable.result, 400, "invalid_json");
    // The same caller with a good body: key_required.
    await expectDenied(await create(multi.token, undefined, { handle: "good-body" }), 400, "key_required");
  });

  it("a bad body from a caller with no key is invalid_params, not forbidden; with a foreign X-Key-Id, not not_found", async () => {
    const noKey = await create(carol.token, undefined, { handle: 7 });
    expectErrorBody(noKey.r, 400, "invalid_params");
    expect(noKey.r.json.field).toBe("handle");
    const foreign = await create(multi.token, kb.id, { handle: "", domain: "x" });
    expectErrorBody(foreign.r, 400, "invalid_params");
    const garbage = await create(multi.token, "garbage", { handle: "ok.handle", pad: 1, handle2: null });
    expectErrorBody(garbage.r, 404, "not_found"); // the body was fine: now the key is judged
  });
});

describe("secrets", () => {
  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

// The instance's own refusals (services/refusals.ts) after a change that ends them: a limit raised
// while the database's refusal of a call is on its way back (it must not be taken up), and a
// grant revoked, a key deleted, a key granted or stored after a refusal (the next call is decided
// by the database, which checks the key first: 403 or 400 key_required, not the instance's 429).
// Found in review.
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Admitter } from "../../src/services/admission.js";
import { expectErrorBody } from "../helpers/harness.js";
import { CREATE, grantKey, post, startPair, storeKey, type Ctx } from "../proxy/common.js";

let ctx: Ctx;
beforeAll(async () => {
  ctx = await startPair({ env: { RATE_LIMIT_HANDLE_CREATE: "1/min" } });
});
afterAll(() => ctx.close());

let n = 0;
const handle = () => `lr-${process.pid}-${++n}`;

it("a limit raised while a refusal is on its way: the next call is not refused by the instance", async () => {
  const u = await ctx.svc.addUser(ctx.svc.admin.token, "raise-race");
  await storeKey(ctx, u.token, "rr");
  expect((await post(ctx, CREATE, u.token, { handle: handle() })).status).toBe(200); // the 1/min spent

  // The next admission is decided (a refusal, under 1/min) but its answer is held back a moment,
  // as a busy event loop or a slow network would, while the admin raises the limit.
  const deps = ctx.svc.deps;
  const admit: Admitter = deps.admit;
  let decided!: () => void;
  const wasDecided = new Promise<void>((r) => (decided = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  deps.admit = async (req) => {
    const a = await admit(req);
    decided();
    await released;
    return a;
  };
  const inFlight = post(ctx, CREATE, u.token, { handle: handle() });
  await wasDecided;
  deps.admit = admit;
  const p = await ctx.svc.call("PATCH", `/v1/admin/users/${u.id}`, { token: ctx.svc.admin.token, json: { rate_limits: { handle_create: "100/min" } } });
  expect(p.status, p.text).toBe(200);
  release();
  const refused = await inFlight;
  expect(refused.status).toBe(429); // decided under 1/min: fair

  // Under 100/min with one call made, the database admits this call.
  const next = await post(ctx, CREATE, u.token, { handle: handle() });
  expect(next.status, `refused after the raise: ${next.text}`).toBe(200);
});

it("a grantee refused for their limit, then revoked: the next call is 403 forbidden, not 429", async () => {
  const owner = await ctx.svc.addUser(ctx.svc.admin.token, "rv-owner");
  const g = await ctx.svc.addUser(ctx.svc.admin.token, "rv-grantee");
  const key = await storeKey(ctx, owner.token, "rv");
  const grant = await grantKey(ctx, owner.token, key.id, "rv-grantee");
  expect((await post(ctx, CREATE, g.token, { handle: handle() })).status).toBe(200);
  expect((await post(ctx, CREATE, g.token, { handle: handle() })).status).toBe(429); // the database's refusal
  const d = await ctx.svc.call("DELETE", `/v1/keys/${key.id}/grants/${grant}`, { token: owner.token });
  expect(d.status, d.text).toBe(204);
  const next = await post(ctx, CREATE, g.token, { handle: handle() });
  expectErrorBody(next, 403, "forbidden");
});

it("a key deleted after its owner was refused: the owner's next call is 403 forbidden (no key left), not 429", async () => {
  const owner = await ctx.svc.addUser(ctx.svc.admin.token, "del-owner");
  const key = await storeKey(ctx, owner.token, "del");
  expect((await post(ctx, CREATE, owner.token, { handle: handle() })).status).toBe(200);
  expect((await post(ctx, CREATE, owner.token, { handle: handle() })).status).toBe(429);
  expect((await ctx.svc.call("DELETE", `/v1/keys/${key.id}`, { token: owner.token })).status).toBe(204);
  expectErrorBody(await post(ctx, CREATE, owner.token, { handle: handle() }), 403, "forbidden");
});

it("refused for their limit, then granted a second key: the next call (no X-Key-Id) is 400 key_required, not 429", async () => {
  const owner = await ctx.svc.addUser(ctx.svc.admin.token, "nk-owner");
  const u = await ctx.svc.addUser(ctx.svc.admin.token, "nk-user");
  await storeKey(ctx, u.token, "own");
  expect((await post(ctx, CREATE, u.token, { handle: handle() })).status).toBe(200);
  expect((await post(ctx, CREATE, u.token, { handle: handle() })).status).toBe(429); // the database's refusal
  const key = await storeKey(ctx, owner.token, "other");
  await grantKey(ctx, owner.token, key.id, "nk-user");
  expectErrorBody(await post(ctx, CREATE, u.token, { handle: handle() }), 400, "key_required");
});

it("refused for their limit, then storing a second key of their own: the next call (no X-Key-Id) is 400 key_required, not 429", async () => {
  const u = await ctx.svc.addUser(ctx.svc.admin.token, "nk-storer");
  await storeKey(ctx, u.token, "first");
  expect((await post(ctx, CREATE, u.token, { handle: handle() })).status).toBe(200);
  expect((await post(ctx, CREATE, u.token, { handle: handle() })).status).toBe(429);
  await storeKey(ctx, u.token, "second");
  expectErrorBody(await post(ctx, CREATE, u.token, { handle: handle() }), 400, "key_required");
});

// What goes upstream besides the body (only the stored key, our request id, bot headers when set;
// none of the caller's headers), and what comes back (X-Request-Id joined with upstream and the
// audit; RateLimit-Policy and RateLimit on every answer, as RFC 8941 lists; no upstream headers).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, type CallResult } from "../helpers/harness.js";
import {
  CREATE,
  ENABLE,
  eventOf,
  expectNoSecrets,
  expectRateLimitHeaders,
  newApiKey,
  parseSfList,
  post,
  receivedDuring,
  startPair,
  storeKey,
  type Ctx,
} from "./common.js";

const ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
/** Every header name the service may send upstream (the rest would be something forwarded). */
const UPSTREAM_HEADERS = new Set([
  "host", "connection", "content-type", "content-length", "transfer-encoding", "accept", "accept-encoding",
  "user-agent", "x-api-key", "x-request-id", "x-bot-auth-token", "x-bot-source",
]);

describe("without bot credentials", () => {
  let ctx: Ctx;
  let user: { id: string; token: string };
  let key: { id: string; plaintext: string };
  beforeAll(async () => {
    ctx = await startPair();
    user = await ctx.svc.addUser(ctx.svc.admin.token, "hedda");
    key = await storeKey(ctx, user.token, "hedda-key");
  });
  afterAll(() => ctx?.close());

  async function createWith(headers: Record<string, string>, handle: string) {
    const { result, received } = await receivedDuring(ctx.sim, () => post(ctx, CREATE, user.token, { handle }, headers));
    expect(received).toHaveLength(1);
    return { r: result, up: received[0]!.headers };
  }

  it("a client-sent X-API-Key never reaches upstream: only the stored key does", async () => {
    const clientKey = newApiKey();
    ctx.sim.addKey(clientKey, "intruder@example.com"); // upstream would accept it: it must not be sent
    for (const [i, name] of ["X-API-Key", "x-api-key"].entries()) {
      const { r, up } = await createWith({ [name]: clientKey }, `own-key-${i}`);
      expect(r.status, r.text).toBe(200);
      expect(up["x-api-key"]).toBe(key.plaintext);
      expect(JSON.stringify(up)).not.toContain(clientKey);
      expect(r.json.goto).toBe("hedda-key@owner.example");
    }
  });

  it("the caller's other headers are not forwarded", async () => {
    const sent = {
      cookie: "session=secret-cookie-value",
      "x-forwarded-for": "203.0.113.9",
      "x-real-ip": "203.0.113.10",
      "x-foo": "bar-custom-value",
      forwarded: "for=203.0.113.11",
      origin: "https://frontend.example",
      referer: "https://frontend.example/page",
      "user-agent": "caller-agent/9.9",
      "x-key-id": key.id,
      "idempotency-key": "hdr-test-1",
    };
    const { r, up } = await createWith(sent, "no-forwarding");
    expect(r.status, r.text).toBe(200);
    const names = Object.keys(up);
    expect(names.filter((n) => !UPSTREAM_HEADERS.has(n))).toEqual([]);
    expect(up.authorization).toBeUndefined();
    expect(up.cookie).toBeUndefined();
    expect(up["x-forwarded-for"]).toBeUndefined();
    expect(up["x-foo"]).toBeUndefined();
    const values = JSON.stringify(up);
    for (const v of [user.token, "secret-cookie-value", "203.0.113", "bar-custom-value", "caller-agent", "frontend.example"]) {
      expect(values).not.toContain(v);
    }
    expect(up["x-bot-auth-token"]).toBeUndefined();
    expect(up["x-bot-source"]).toBeUndefined();
  });

  it("X-Request-Id: the one upstream saw is the answer's and the audit event's", async () => {
    const { r, up } = await createWith({}, "rid-ours");
    const id = r.headers.get("x-request-id")!;
    expect(id).toMatch(ID_RE);
    expect(up["x-request-id"]).toBe(id);
    expect((await eventOf(ctx, r)).request_id).toBe(id);
  });

  it("X-Request-Id: a well-formed one from the client is kept all the way", async () => {
    const mine = `client.req:42_${Date.now()}-AZ`;
    const { r, up } = await createWith({ "x-request-id": mine }, "rid-client");
    expect(r.headers.get("x-request-id")).toBe(mine);
    expect(up["x-request-id"]).toBe(mine);
    expect((await eventOf(ctx, r)).request_id).toBe(mine);
  });

  it.each([
    ["a space", "has space"],
    ["129 characters", "r".repeat(129)],
    ["a slash", "a/b"],
  ])("X-Request-Id with %s is replaced, and the replacement is what upstream and the audit get", async (_l, bad) => {
    const { r, up } = await createWith({ "x-request-id": bad }, `rid-bad-${_l.replace(/\W/g, "")}`);
    const id = r.headers.get("x-request-id")!;
    expect(id).not.toBe(bad);
    expect(id).toMatch(ID_RE);
    expect(up["x-request-id"]).toBe(id);
    expect((await eventOf(ctx, r)).request_id).toBe(id);
  });

  it("X-Request-Id on an upstream failure: the same id in the header, the body, upstream and the audit", async () => {
    ctx.sim.faults.push({ kind: "status", status: 500 });
    const { r, up } = await createWith({ "x-request-id": "fail-trace-1" }, "rid-fail");
    expectErrorBody(r, 502, "upstream_error");
    expect(r.json.request_id).toBe("fail-trace-1");
    expect(up["x-request-id"]).toBe("fail-trace-1");
    expect((await eventOf(ctx, r)).request_id).toBe("fail-trace-1");
  });

  it("upstream's own response headers are not relayed to the caller", async () => {
    ctx.sim.faults.push({
      kind: "status",
      status: 200,
      body: '{"ok":true,"created":true,"handle":"hdr-relay","goto":"x@example.com"}',
      headers: { "set-cookie": "upstream_session=abc", "x-upstream-internal": "node-7", "x-request-id": "upstream-own-id" },
    });
    const { r } = await createWith({}, "hdr-relay");
    expect(r.status).toBe(200);
    expect(r.headers.get("set-cookie")).toBeNull();
    expect(r.headers.get("x-upstream-internal")).toBeNull();
    expect(r.headers.get("x-request-id")).not.toBe("upstream-own-id");
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

describe("with HALTMAN_BOT_TOKEN and HALTMAN_BOT_SOURCE", () => {
  let ctx: Ctx;
  let user: { id: string; token: string };
  const BOT_TOKEN = "bot-token-9f8e7d6c5b4a";
  beforeAll(async () => {
    ctx = await startPair({
      env: { HALTMAN_BOT_TOKEN: BOT_TOKEN, HALTMAN_BOT_SOURCE: "team-bff" },
      sim: { botTokens: { [BOT_TOKEN]: "team-bff" } },
    });
    user = await ctx.svc.addUser(ctx.svc.admin.token, "botty");
    await storeKey(ctx, user.token, "botty-key");
  });
  afterAll(() => ctx?.close());

  it("sends X-Bot-Auth-Token and X-Bot-Source upstream, on create and enable", async () => {
    const { result, received } = await receivedDuring(ctx.sim, async () => {
      const c = await post(ctx, CREATE, user.token, { handle: "bot-made" });
      const e = await post(ctx, ENABLE, user.token, { handle: "bot-made", domain: "example.com" });
      return [c, e];
    });
    expect(result.map((r) => r.status)).toEqual([200, 200]);
    expect(received).toHaveLength(2);
    for (const up of received) {
      expect(up.headers["x-bot-auth-token"]).toBe(BOT_TOKEN);
      expect(up.headers["x-bot-source"]).toBe("team-bff");
    }
  });

  it("the bot token is not shown in answers or logs", () => {
    for (const s of ctx.seen) expect(`${JSON.stringify(s.headers)}${s.text}`).not.toContain(BOT_TOKEN);
    for (const line of ctx.svc.rawLogs) expect(line).not.toContain(BOT_TOKEN);
    expectNoSecrets(ctx);
  });
});

describe("RateLimit-Policy and RateLimit on every answer of a proxied route", () => {
  let ctx: Ctx;
  let one: { id: string; token: string }; // one key
  let two: { id: string; token: string }; // two keys
  let none: { id: string; token: string }; // no key
  let capped: { id: string; token: string }; // one key, 1 create a minute
  let k1: { id: string; plaintext: string };
  let k2: { id: string; plaintext: string };
  beforeAll(async () => {
    ctx = await startPair();
    const admin = ctx.svc.admin.token;
    one = await ctx.svc.addUser(admin, "one");
    two = await ctx.svc.addUser(admin, "two");
    none = await ctx.svc.addUser(admin, "none");
    capped = await ctx.svc.addUser(admin, "capped");
    await storeKey(ctx, one.token, "one-key");
    k1 = await storeKey(ctx, two.token, "two-a");
    k2 = await storeKey(ctx, two.token, "two-b");
    await storeKey(ctx, capped.token, "capped-key");
    const p = await ctx.svc.call("PATCH", `/v1/admin/users/${capped.id}`, { token: admin, json: { rate_limits: { handle_create: "1/min" } } });
    expect(p.status, p.text).toBe(200);
  });
  afterAll(() => ctx?.close());

  function expectConfigured(r: CallResult, userQ = 1000) {
    const { policy } = expectRateLimitHeaders(r);
    expect(Object.fromEntries(policy.map((p) => [p.name, p.params]))).toEqual({
      user: { q: userQ, w: 60 },
      key: { q: 1000, w: 60 },
      global: { q: 5000, w: 60 },
    });
  }

  it("the parser is strict (it can fail)", () => {
    expect(parseSfList('"user";q=10;w=60, "global";q=5;w=1')).toEqual([
      { name: "user", params: { q: 10, w: 60 } },
      { name: "global", params: { q: 5, w: 1 } },
    ]);
    for (const bad of ["user;q=10", '"user";q=1.5', '"user";q=10,"key";q=1', '"user";Q=1', '"user";q', '"user";q=1;q=2', "", '"user";q=10, ', '"us"er"']) {
      expect(() => parseSfList(bad), bad).toThrow();
    }
  });

  it("on a success and on upstream's refusals (409, 404)", async () => {
    const ok = await post(ctx, CREATE, one.token, { handle: "rl-ok" });
    expect(ok.status).toBe(200);
    expectConfigured(ok);
    const taken = await post(ctx, CREATE, one.token, { handle: "rl-ok" });
    expect(taken.status).toBe(409);
    expectConfigured(taken);
    const missing = await post(ctx, ENABLE, one.token, { handle: "rl-nobody", domain: "example.com" });
    expect(missing.status).toBe(404);
    expectConfigured(missing);
  });

  it("on our 400s (invalid_params, invalid_json, key_required), 403 and 404", async () => {
    const answers = [
      [await post(ctx, CREATE, one.token, { handle: "a..b" }), 400, "invalid_params"],
      [await post(ctx, ENABLE, one.token, { handle: "ok", domain: "localhost" }), 400, "invalid_params"],
      [await ctx.svc.call("POST", CREATE, { token: one.token, body: "{", headers: { "content-type": "application/json" } }), 400, "invalid_json"],
      [await post(ctx, CREATE, two.token, { handle: "rl-two" }), 400, "key_required"],
      [await post(ctx, CREATE, none.token, { handle: "rl-none" }), 403, "forbidden"],
      [await post(ctx, CREATE, one.token, { handle: "rl-foreign" }, { "x-key-id": k1.id }), 404, "not_found"],
    ] as const;
    for (const [r, status, code] of answers) {
      expectErrorBody(r, status, code);
      const { policy } = expectRateLimitHeaders(r, "key optional");
      expect(policy.find((p) => p.name === "user")!.params).toEqual({ q: 1000, w: 60 });
      expect(policy.find((p) => p.name === "global")!.params).toEqual({ q: 5000, w: 60 });
    }
  });

  it("on upstream failures: 502 upstream_error, 502 upstream_key_rejected, 502 upstream_unavailable", async () => {
    const faults = [
      [{ kind: "status", status: 503, body: '{"error":"temporarily_unavailable"}' }, "upstream_error"],
      [{ kind: "status", status: 401, body: '{"error":"invalid_or_expired_api_key"}' }, "upstream_key_rejected"],
      [{ kind: "non_json" }, "upstream_unavailable"],
    ] as const;
    for (const [fault, code] of faults) {
      ctx.sim.faults.push(fault);
      const r = await post(ctx, CREATE, two.token, { handle: `rl-${code}` }, { "x-key-id": k2.id });
      expectErrorBody(r, 502, code);
      expectConfigured(r);
    }
  });

  it("on 429s: upstream's (JSON) and our own limit", async () => {
    ctx.sim.faults.push({ kind: "status", status: 429, body: '{"error":"rate_limited"}', headers: { "retry-after": "1" } });
    const up = await post(ctx, CREATE, two.token, { handle: "rl-429" }, { "x-key-id": k1.id });
    expectErrorBody(up, 429, "rate_limited");
    expectConfigured(up);
    const paused = await post(ctx, CREATE, two.token, { handle: "rl-429" }, { "x-key-id": k1.id });
    expectErrorBody(paused, 429, "rate_limited");
    expectConfigured(paused);

    const first = await post(ctx, CREATE, capped.token, { handle: "rl-capped-1" });
    expect(first.status).toBe(200);
    expectConfigured(first, 1);
    const second = await post(ctx, CREATE, capped.token, { handle: "rl-capped-2" });
    expectErrorBody(second, 429, "rate_limited");
    expect(second.json.reason).toBe("user");
    const { state } = expectRateLimitHeaders(second);
    expect(state.find((s) => s.name === "user")!.params.r).toBe(0);
    expectConfigured(second, 1);
  });

  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

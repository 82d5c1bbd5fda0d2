// Issue 5, the RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10):
// on every answer of a proxied route to an authenticated caller, parsed as RFC 8941 lists by a
// strict parser of our own. Names are sf-strings, q/w/r/t sf-integers; q and w as configured; r
// counts admitted calls down by one and never below 0; t within [0, w].
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { startService, type CallResult, type Service } from "../helpers/harness.js";
import {
  checkRateHeaders,
  expectRateLimited,
  freshHandle,
  parseSfList,
  randomApiKey,
  readRateHeaders,
  SfParseError,
  uniqueName,
  type RateHeaders,
} from "./common.js";

describe("the RFC 8941 list parser of these tests", () => {
  it("reads the service's syntax", () => {
    const list = parseSfList(`"user";q=10;w=60, "key";q=100;w=60,"global";q=250;w=60`);
    expect(list).toHaveLength(3);
    const m = list[0]!;
    expect(m.kind === "item" && m.item).toEqual({ type: "string", value: "user" });
    expect(m.kind === "item" && Object.fromEntries(m.params)).toEqual({ q: { type: "integer", value: 10 }, w: { type: "integer", value: 60 } });
    expect(parseSfList("  ")).toEqual([]);
    expect(parseSfList(`tok;a;b=?0, ("x" 1);p=:AQ==:, -1.5`).map((x) => x.kind)).toEqual(["item", "inner", "item"]);
  });

  it.each([
    [`"user";q=10,`, "trailing comma"],
    [`"user";q=10,, "key";q=1`, "empty member"],
    [`"user" ;q=10`, "space before a parameter"],
    [`"user";Q=10`, "upper-case key"],
    [`"user";q=1234567890123456`, "16-digit integer"],
    [`"user`, "unterminated string"],
    [`"us\\er"`, "bad escape"],
    [`"user";q=10 "key"`, "missing comma"],
    [`"user";q=1.`, "decimal ending in a dot"],
    [`"user";q=--1`, "double minus"],
  ])("refuses %s (%s)", (text) => {
    expect(() => parseSfList(text)).toThrow(SfParseError);
  });

  it("the RateLimit reader wants sf-strings and sf-integers, the same names in both fields", () => {
    const h = (policy: string, state: string) => new Headers({ "ratelimit-policy": policy, ratelimit: state });
    expect(readRateHeaders(h(`"user";q=10;w=60`, `"user";r=3;t=20`)).states.get("user")).toEqual({ r: 3, t: 20 });
    expect(() => readRateHeaders(h(`user;q=10;w=60`, `user;r=3;t=20`))).toThrow(/sf-strings/);
    expect(() => readRateHeaders(h(`"user";q=10.0;w=60`, `"user";r=3;t=20`))).toThrow(/sf-integer q/);
    expect(() => readRateHeaders(h(`"user";q="10";w=60`, `"user";r=3;t=20`))).toThrow(/sf-integer q/);
    expect(() => readRateHeaders(h(`"user";q=10;w=60`, `"key";r=3;t=20`))).toThrow(/names/);
    expect(() => readRateHeaders(h(`"user";q=10;w=60, "user";q=1;w=1`, `"user";r=3;t=20`))).toThrow(/twice/);
    expect(() => readRateHeaders(new Headers({ ratelimit: `"user";r=3;t=20` }))).toThrow(/RateLimit-Policy/);
  });
});

describe("RateLimit fields on every proxied answer", () => {
  let svc: Service;
  let sim: Simulator;
  // user 4/min (create), 6/min (enable); key 10/min; global 40/min. T >= 1.5 s: a test's few calls
  // see no refill of the user and key buckets (T >= 6 s), and at most a little of the global one.
  const EXPECTED = { user: { q: 4, w: 60 }, key: { q: 10, w: 60 }, global: { q: 40, w: 60 } };
  beforeAll(async () => {
    sim = await startSimulator({ perKeyLimit: 1_000_000, perAddressLimit: 1_000_000 });
    svc = await startService({
      env: {
        HALTMAN_BASE_URL: sim.url,
        LOG_LEVEL: "warn",
        RATE_LIMIT_HANDLE_CREATE: "4/min",
        RATE_LIMIT_DOMAIN_ENABLE: "6/min",
        RATE_LIMIT_KEY: "10/min",
        RATE_LIMIT_GLOBAL: "40/min",
      },
      loginLimits: { perAccount: parseRatePolicy("10000/min")!, perAddress: parseRatePolicy("10000/min")! },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await sim?.close();
  });

  async function storeKey(token: string) {
    const apiKey = randomApiKey();
    sim.addKey(apiKey, "owner@example.com");
    const r = await svc.call("POST", "/v1/keys", { token, json: { name: uniqueName("k"), api_key: apiKey } });
    if (r.status !== 201) throw new Error(`store key: ${r.status} ${r.text}`);
    return r.json.id as string;
  }
  const create = (token: string, handle: unknown, headers: Record<string, string> = {}) =>
    svc.call("POST", "/api/handle/create", { token, json: { handle }, headers });

  type Step = { r: CallResult; h: RateHeaders; at: number };

  /**
   * Across consecutive answers: a bucket's r goes down by exactly one per admitted call and stays
   * put otherwise (the user and key buckets refill nothing within a test); the global one may
   * refill one call per 1.5 s meanwhile.
   */
  function expectCountdown(steps: Step[], admitted: boolean[]) {
    for (let i = 1; i < steps.length; i++) {
      const [a, b] = [steps[i - 1]!, steps[i]!];
      const spent = admitted[i] ? 1 : 0;
      for (const name of ["user", "key"]) {
        const ra = a.h.states.get(name)?.r;
        const rb = b.h.states.get(name)?.r;
        if (ra === undefined || rb === undefined) continue;
        expect(rb, `${name} r from answer ${i - 1} (${a.r.status}) to ${i} (${b.r.status})`).toBe(Math.max(0, ra - spent));
      }
      const ga = a.h.states.get("global")!.r;
      const gb = b.h.states.get("global")!.r;
      expect(gb, "global r").toBeGreaterThanOrEqual(ga - spent);
      expect(gb, "global r").toBeLessThanOrEqual(Math.min(40, ga - spent + Math.ceil((b.at - a.at) / 1_500)));
    }
  }

  it("200, upstream 409, our 400, our 429: all carry both fields, consistent with each other", async () => {
    const u = await svc.addUser(svc.admin.token, uniqueName("h"));
    await storeKey(u.token);
    const taken = freshHandle();
    const plan: { send: () => Promise<CallResult>; status: number; admitted: boolean }[] = [
      { send: () => create(u.token, taken), status: 200, admitted: true },
      { send: () => create(u.token, taken), status: 409, admitted: true }, // upstream's alias_taken
      { send: () => create(u.token, "not a handle!"), status: 400, admitted: false }, // our validation
      { send: () => create(u.token, freshHandle()), status: 200, admitted: true },
      { send: () => create(u.token, freshHandle()), status: 200, admitted: true },
      { send: () => create(u.token, freshHandle()), status: 429, admitted: false },
      { send: () => create(u.token, freshHandle()), status: 429, admitted: false },
    ];
    const steps: Step[] = [];
    for (const p of plan) {
      const r = await p.send();
      expect(r.status, r.text).toBe(p.status);
      const h = checkRateHeaders(r, EXPECTED, p.status === 400 ? ["user", "global"] : ["user", "key", "global"]);
      steps.push({ r, h, at: performance.now() });
    }
    expect(steps[1]!.r.json).toEqual({ ok: false, error: "alias_taken" });
    expect(steps[2]!.r.json.error).toBe("invalid_params");
    expectRateLimited(steps[5]!.r, "user", 15);
    expect(steps.map((s) => s.h.states.get("user")!.r)).toEqual([3, 2, 2, 1, 0, 0, 0]);
    expectCountdown(steps, plan.map((p) => p.admitted));
    // the key's bucket: 10 - 4 admitted
    expect(steps[6]!.h.states.get("key")!.r).toBe(6);
    // t: seconds until the bucket is full again; after 4 of 4 a whole period (within rounding)
    expect(steps[4]!.h.states.get("user")!.t).toBeGreaterThanOrEqual(58);
    expect(steps[0]!.h.states.get("user")!.t).toBeLessThanOrEqual(15);
  });

  it("domain enable: its own user policy and key bucket, the same global one", async () => {
    const u = await svc.addUser(svc.admin.token, uniqueName("h"));
    await storeKey(u.token);
    const handle = freshHandle();
    const made = await create(u.token, handle);
    expect(made.status, made.text).toBe(200);
    const steps: Step[] = [];
    for (let i = 0; i < 7; i++) {
      const r = await svc.call("POST", "/api/handle/domain/enable", { token: u.token, json: { handle, domain: `d${i}.example.com` } });
      expect(r.status, r.text).toBe(i < 6 ? 200 : 429);
      steps.push({ r, h: checkRateHeaders(r, { ...EXPECTED, user: { q: 6, w: 60 } }, ["user", "key", "global"]), at: performance.now() });
    }
    expect(steps.map((s) => s.h.states.get("user")!.r)).toEqual([5, 4, 3, 2, 1, 0, 0]);
    expect(steps.map((s) => s.h.states.get("key")!.r)).toEqual([9, 8, 7, 6, 5, 4, 4]);
    expectRateLimited(steps[6]!.r, "user", 10);
  });

  it("the other answers of a proxied route to an authenticated caller carry them too (403, 400 key_required, 404, 502)", async () => {
    // no key at all: 403 forbidden
    const none = await svc.addUser(svc.admin.token, uniqueName("h"));
    const f = await create(none.token, freshHandle());
    expect(f.status, f.text).toBe(403);
    checkRateHeaders(f, EXPECTED, ["user", "global"]);
    // two keys and no X-Key-Id: 400 key_required; an X-Key-Id of someone else's: 404
    const two = await svc.addUser(svc.admin.token, uniqueName("h"));
    const k1 = await storeKey(two.token);
    await storeKey(two.token);
    const kr = await create(two.token, freshHandle());
    expect(kr.status, kr.text).toBe(400);
    expect(kr.json.error).toBe("key_required");
    checkRateHeaders(kr, EXPECTED, ["user", "global"]);
    const nf = await create(none.token, freshHandle(), { "x-key-id": k1 });
    expect(nf.status, nf.text).toBe(404);
    checkRateHeaders(nf, EXPECTED, ["user", "global"]);
    // upstream fails: 502, after the call was admitted (it spent one)
    const before = await create(two.token, freshHandle(), { "x-key-id": k1 });
    expect(before.status, before.text).toBe(200);
    sim.faults.push({ kind: "status", status: 500 });
    const bad = await create(two.token, freshHandle(), { "x-key-id": k1 });
    expect(bad.status, bad.text).toBe(502);
    const h = checkRateHeaders(bad, EXPECTED, ["user", "key", "global"]);
    expect(h.states.get("user")!.r).toBe(readRateHeaders(before.headers).states.get("user")!.r - 1);
  });
});

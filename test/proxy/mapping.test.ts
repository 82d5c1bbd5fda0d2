// The contract's mapping table, row by row, against the real simulator: what upstream answers,
// what the caller gets, what the audit log says (one event per call), and what it does to the key.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Fault, type Simulator } from "../../src/simulator/server.js";
import { expectErrorBody, type CallResult } from "../helpers/harness.js";
import {
  CREATE,
  ENABLE,
  auditEvents,
  eventOf,
  expectNoSecrets,
  expectRateLimitHeaders,
  post,
  receivedDuring,
  startPair,
  storeKey,
  uncaughtDuring,
  type Ctx,
} from "./common.js";

let ctx: Ctx;
let target: Simulator; // where redirects point: it must never be called
let alice: { id: string; token: string };
let key: { id: string; plaintext: string };
let creates = 0;

beforeAll(async () => {
  ctx = await startPair({ sim: { bannedNames: ["banned-name"] }, env: { UPSTREAM_TIMEOUT_MS: "5000" } });
  target = await startSimulator();
  alice = await ctx.svc.addUser(ctx.svc.admin.token, "alice");
  key = await storeKey(ctx, alice.token, "alice-key");
});
afterAll(async () => {
  await ctx?.close();
  await target?.close();
});

/** One create as alice; returns the answer and what reached the simulator. */
async function create(handle: string, fault?: Fault) {
  if (fault) ctx.sim.faults.push(fault);
  creates++;
  const { result, received } = await receivedDuring(ctx.sim, () => post(ctx, CREATE, alice.token, { handle }));
  ctx.sim.faults.length = 0;
  return { r: result, received };
}

async function expectAudited(r: CallResult, outcome: string, upstreamStatus: number | null, action = "handle.create") {
  const e = await eventOf(ctx, r, action);
  expect({ outcome: e.outcome, upstream_status: e.upstream_status, key_id: e.key_id, actor: e.actor?.id }).toEqual({
    outcome,
    upstream_status: upstreamStatus,
    key_id: key.id,
    actor: alice.id,
  });
}

describe("200, 400, 403, 404, 409 with a JSON body: same status, byte-identical body", () => {
  const rows: [number, string][] = [
    [200, '{ "ok" : true,\n  "created":true, "handle":"pass-200", "goto":"o@example.com", "note":"ünïcødé ✓ \\u00e9" }'],
    [400, '{"message":["handle must be a string"],"error":"Bad Request","statusCode":400}'],
    [403, '{"error":"banned","ban":{"ban_type":"name","ban_value":"x","reason":"spam","banned_at":"2020-01-01T00:00:00.000Z"}}   '],
    [404, '{"error":"handle_not_found"}\n'],
    [409, '{"ok":false,"error":"alias_taken","extra":[1,2.50,null]}'],
  ];
  it.each(rows)("upstream %i", async (status, body) => {
    const { r, received } = await create(`pass-${status}`, { kind: "status", status, body, contentType: "application/json; charset=utf-8" });
    expect(received).toHaveLength(1);
    expect(r.status).toBe(status);
    expect(r.text).toBe(body);
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
    expectRateLimitHeaders(r);
    await expectAudited(r, status === 200 ? "success" : "upstream_refused", status);
  });

  it("a JSON body sent as text/plain, after a leading newline, is JSON all the same", async () => {
    const body = '\n {"ok":true,"created":true,"handle":"text-typed"}';
    const { r } = await create("text-typed", { kind: "status", status: 200, body, contentType: "text/plain" });
    expect(r.status).toBe(200);
    expect(r.text).toBe(body);
    await expectAudited(r, "success", 200);
  });

  it("the simulator's own answers pass through as it sends them (create, taken, banned)", async () => {
    const ok = await create("natural-one");
    expect(ok.r.status).toBe(200);
    expect(ok.r.text).toBe(JSON.stringify({ ok: true, created: true, handle: "natural-one", goto: "alice-key@owner.example" }));
    await expectAudited(ok.r, "success", 200);

    const taken = await create("natural-one");
    expect(taken.received).toHaveLength(1);
    expect(taken.r.status).toBe(409);
    expect(taken.r.text).toBe('{"ok":false,"error":"alias_taken"}');
    await expectAudited(taken.r, "upstream_refused", 409);

    const banned = await create("banned-name");
    expect(banned.r.status).toBe(403);
    expect(banned.r.json).toEqual({ error: "banned", ban: { ban_type: "name", ban_value: "banned-name", reason: "test", banned_at: new Date(0).toISOString() } });
    expect(banned.r.text).toBe(JSON.stringify(banned.r.json)); // as the simulator serialises it
    await expectAudited(banned.r, "upstream_refused", 403);
  });

  it("domain/enable: 200, upstream's 404 handle_not_found and 403 forbidden pass through, audited as domain.enable", async () => {
    ctx.sim.handles.set("mine", { owner: key.plaintext, active: true, disabledDomains: new Set(["example.com"]) });
    ctx.sim.handles.set("theirs", { owner: "f".repeat(64), active: true, disabledDomains: new Set() });
    const ok = await post(ctx, ENABLE, alice.token, { handle: "mine", domain: "example.com" });
    expect(ok.status).toBe(200);
    expect(ok.text).toBe('{"ok":true,"updated":true,"handle":"mine","domain":"example.com","disabled":false}');
    await expectAudited(ok, "success", 200, "domain.enable");

    const missing = await post(ctx, ENABLE, alice.token, { handle: "nobody-has-this", domain: "example.com" });
    expect(missing.status).toBe(404);
    expect(missing.text).toBe('{"error":"handle_not_found"}');
    await expectAudited(missing, "upstream_refused", 404, "domain.enable");

    const forbidden = await post(ctx, ENABLE, alice.token, { handle: "theirs", domain: "example.com" });
    expect(forbidden.status).toBe(403);
    expect(forbidden.text).toBe('{"error":"forbidden"}');
    await expectAudited(forbidden, "upstream_refused", 403, "domain.enable");
  });
});

describe("401: the stored key is refused upstream", () => {
  async function keyStatus(): Promise<string> {
    const r = await ctx.svc.call("GET", "/v1/keys", { token: alice.token });
    expect(r.status).toBe(200);
    return r.json.keys.find((k: { id: string }) => k.id === key.id).status;
  }

  it("is 502 upstream_key_rejected with upstream's code as reason; the key is flagged, and cleared by the next accepted call", async () => {
    expect(await keyStatus()).toBe("ok");
    ctx.sim.revokeKey(key.plaintext);
    try {
      const { r, received } = await create("after-revoke");
      expect(received).toHaveLength(1);
      expectErrorBody(r, 502, "upstream_key_rejected");
      expect(r.json.reason).toBe("invalid_or_expired_api_key");
      expectRateLimitHeaders(r);
      await expectAudited(r, "upstream_error", 401);
      expect(await keyStatus()).toBe("rejected");

      // Still rejected while upstream keeps refusing it; a flagged key is still tried.
      const again = await create("after-revoke-2");
      expect(again.received).toHaveLength(1);
      expectErrorBody(again.r, 502, "upstream_key_rejected");
      expect(await keyStatus()).toBe("rejected");
    } finally {
      ctx.sim.addKey(key.plaintext, "alice-key@owner.example");
    }
    const ok = await create("after-revoke");
    expect(ok.r.status).toBe(200);
    expect(await keyStatus()).toBe("ok");
  });

  it.each(["missing_api_key", "invalid_api_key_format", "invalid_or_expired_api_key"])("reason is upstream's code: %s", async (code) => {
    const { r } = await create(`rej-${code}`, { kind: "status", status: 401, body: JSON.stringify({ error: code }) });
    expectErrorBody(r, 502, "upstream_key_rejected");
    expect(r.json.reason).toBe(code);
    await expectAudited(r, "upstream_error", 401);
    const ok = await create(`rej-${code}`);
    expect(ok.r.status).toBe(200);
    expect(await keyStatus()).toBe("ok");
  });
});

describe("5xx: 502 upstream_error with upstream_status", () => {
  const rows: [number, string, string][] = [
    [500, '{"error":"internal_error"}', "application/json"],
    [502, "<html><body>Bad gateway</body></html>", "text/html"],
    [503, '{"error":"temporarily_unavailable"}', "application/json"],
    [504, "gateway timeout", "text/plain"],
  ];
  it.each(rows)("upstream %i", async (status, body, contentType) => {
    const { r, received } = await create(`five-${status}`, { kind: "status", status, body, contentType });
    expect(received).toHaveLength(1);
    expectErrorBody(r, 502, "upstream_error");
    expect(r.json.upstream_status).toBe(status);
    expect(r.text).not.toContain(body);
    expectRateLimitHeaders(r);
    await expectAudited(r, "upstream_error", status);
  });

  // A gateway in front of upstream answers 5xx with pages of its own, large or slow: the status
  // alone decides, the body is not waited for (UPSTREAM_TIMEOUT_MS is 5 s in this file).
  it.each([
    ["a 503 whose body never ends", { kind: "stalled_body", status: 503 } as Fault, 503],
    ["a 502 with a 2 MiB HTML page", { kind: "oversized", bytes: 2 * 1024 * 1024, status: 502, contentType: "text/html" } as Fault, 502],
  ])("%s: still 502 upstream_error with upstream_status, at once", async (_, fault, status) => {
    const started = performance.now();
    const { result, uncaught } = await uncaughtDuring(() => create(`five-body-${status}`, fault));
    expect(performance.now() - started).toBeLessThan(3000);
    expect(result.received).toHaveLength(1);
    expectErrorBody(result.r, 502, "upstream_error");
    expect(result.r.json.upstream_status).toBe(status);
    await expectAudited(result.r, "upstream_error", status);
    expect(uncaught).toEqual([]);
    expect((await create(`after-five-body-${status}`)).r.status).toBe(200);
  });
});

describe("refused, reset, redirect, not JSON, too large: 502 upstream_unavailable", () => {
  it("reset: one request reached upstream (no retry of a non-idempotent POST)", async () => {
    const { r, received } = await create("reset-me", { kind: "reset" });
    expectErrorBody(r, 502, "upstream_unavailable");
    expect(received).toHaveLength(1);
    await new Promise((res) => setTimeout(res, 150)); // a late retry would show up here
    expect(ctx.sim.received.filter((x) => x.body.includes("reset-me"))).toHaveLength(1);
    expectRateLimitHeaders(r);
    await expectAudited(r, "upstream_error", null);
    const ok = await create("after-reset");
    expect(ok.r.status).toBe(200);
  });

  it.each([
    ["an HTML 200", { kind: "non_json" } as Fault, 200],
    ["a JSON-typed 200 that does not parse", { kind: "status", status: 200, body: '{"ok":true,', contentType: "application/json" } as Fault, 200],
    ["an HTML 409", { kind: "status", status: 409, body: "<html>conflict</html>", contentType: "text/html" } as Fault, 409],
  ])("not JSON: %s", async (_label, fault, status) => {
    const { r, received } = await create("not-json", fault);
    expect(received).toHaveLength(1);
    expectErrorBody(r, 502, "upstream_unavailable");
    expect(r.text).not.toContain("html");
    await expectAudited(r, "upstream_error", status);
  });

  it.each([301, 302, 303, 307, 308])("redirect %i is not followed: the target never hears of it", async (status) => {
    const location = target.url + CREATE;
    const fault: Fault = status === 302 ? { kind: "redirect", location } : { kind: "status", status, body: "", headers: { location } };
    const { result, uncaught } = await uncaughtDuring(() => create(`redirect-${status}`, fault));
    const { r, received } = result;
    expect(received).toHaveLength(1);
    expectErrorBody(r, 502, "upstream_unavailable");
    expect(r.headers.get("location")).toBeNull();
    expect(target.received).toHaveLength(0);
    await expectAudited(r, "upstream_error", status);
    // Dropping the redirect's body must not raise an error nobody listens to (that ends the process).
    expect(uncaught).toEqual([]);
  });

  it("the redirect target is a working simulator (the check above can fail)", async () => {
    const res = await fetch(target.url + CREATE, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    expect(res.status).toBe(401);
    expect(target.received).toHaveLength(1);
    target.received.length = 0;
  });

  it("an answer that declares 2 MB: refused before reading it, and nothing left unhandled", async () => {
    const body = `{"ok":true,"pad":"${"x".repeat(2 * 1024 * 1024)}"}`;
    const fault: Fault = { kind: "status", status: 200, body, headers: { "content-length": String(Buffer.byteLength(body)) } };
    const { result, uncaught } = await uncaughtDuring(() => create("declared-huge", fault));
    expect(result.received).toHaveLength(1);
    expectErrorBody(result.r, 502, "upstream_unavailable");
    await expectAudited(result.r, "upstream_error", 200);
    expect(uncaught).toEqual([]);
    const ok = await create("after-declared-huge");
    expect(ok.r.status).toBe(200);
  });

  it("a 5 MB body: refused, and the process is still fine", async () => {
    const before = process.memoryUsage().rss;
    const started = performance.now();
    const { result, uncaught } = await uncaughtDuring(() => create("huge", { kind: "oversized", bytes: 5 * 1024 * 1024 }));
    const { r, received } = result;
    expect(uncaught).toEqual([]);
    expect(received).toHaveLength(1);
    expectErrorBody(r, 502, "upstream_unavailable");
    expect(performance.now() - started).toBeLessThan(4000);
    await expectAudited(r, "upstream_error", 200);
    expect(process.memoryUsage().rss - before).toBeLessThan(200 * 1024 * 1024);
    const ok = await create("after-huge");
    expect(ok.r.status).toBe(200);
    expect((await ctx.svc.call("GET", "/healthz")).status).toBe(200);
  });
});

describe("the audit log", () => {
  it("holds exactly one handle.create event per call made in this file", async () => {
    const events = await auditEvents(ctx, "handle.create");
    expect(events).toHaveLength(creates);
    expect(new Set(events.map((e) => e.request_id)).size).toBe(creates);
    expect(events.every((e) => e.outcome !== "unknown")).toBe(true);
  });

  it("never shows a stored key's plaintext (answers, headers, logs)", () => {
    expectNoSecrets(ctx);
  });
});

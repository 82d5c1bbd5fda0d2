// Validation exactly as upstream's: both edges of every rule, on create and on domain/enable.
// A refused input never reaches the simulator and is audited "invalid"; an accepted one reaches it
// normalised (trimmed, lower-cased) with the unknown fields left out.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, type CallResult } from "../helpers/harness.js";
import { CREATE, ENABLE, eventOf, expectNoSecrets, expectRateLimitHeaders, receivedDuring, startPair, storeKey, type Ctx } from "./common.js";

let ctx: Ctx;
let user: { id: string; token: string };
let key: { id: string; plaintext: string };

beforeAll(async () => {
  ctx = await startPair();
  user = await ctx.svc.addUser(ctx.svc.admin.token, "val");
  key = await storeKey(ctx, user.token, "val-key");
});
afterAll(() => ctx?.close());

type Opts = { json?: unknown; body?: string; contentType?: string; omit?: boolean };
const OMIT = Symbol("omit");

async function send(path: string, o: Opts) {
  const headers: Record<string, string> = {};
  if (o.contentType) headers["content-type"] = o.contentType;
  return receivedDuring(ctx.sim, () =>
    ctx.svc.call("POST", path, o.body !== undefined ? { token: user.token, body: o.body, headers } : { token: user.token, json: o.json, headers }),
  );
}

/** A refusal of ours: status, code, field, nothing upstream, audited "invalid", RateLimit headers. */
async function expectRefused(path: string, got: { result: CallResult; received: unknown[] }, status: number, code: string, field?: string) {
  const r = got.result;
  expectErrorBody(r, status, code);
  if (field !== undefined) expect(r.json.field).toBe(field);
  expect(got.received).toHaveLength(0);
  expectRateLimitHeaders(r, "key optional");
  const e = await eventOf(ctx, r, path === CREATE ? "handle.create" : "domain.enable");
  expect([e.outcome, e.upstream_status, e.actor?.id]).toEqual(["invalid", null, user.id]);
}

function bodyOf(handle: unknown, domain?: unknown): Record<string, unknown> {
  const b: Record<string, unknown> = {};
  if (handle !== OMIT) b.handle = handle;
  if (domain !== undefined && domain !== OMIT) b.domain = domain;
  return b;
}

const HANDLES_OK: [string, string, string][] = [
  ["64 characters", "h".repeat(64), "h".repeat(64)],
  ["64 characters after trimming", `  ${"t".repeat(64)}  `, "t".repeat(64)],
  ["one character", "q", "q"],
  ["upper case, lower-cased", "MiXeD.CaSe", "mixed.case"],
  ["single dots between atoms", "a.b.c", "a.b.c"],
  ["every special character of the dot-atom", "!#$%&'*+/=?^_`{|}~-", "!#$%&'*+/=?^_`{|}~-"],
];
const HANDLES_BAD: [string, unknown][] = [
  ["half of a surrogate pair (JSON's \\ud800)", "ab\ud800cd"],
  ["65 characters", "h".repeat(65)],
  ["65 characters after trimming", ` ${"u".repeat(65)} `],
  ["empty", ""],
  ["only spaces", "   "],
  ["a leading dot", ".abc"],
  ["a trailing dot", "abc."],
  ["a double dot", "a..b"],
  ["a lone dot", "."],
  ["a space inside", "a b"],
  ["an @", "a@b"],
  ["a non-ASCII letter", "bücher"],
  ["a number", 42],
  ["null", null],
  ["an object", { name: "alice" }],
  ["an array", ["alice"]],
  ["a boolean", true],
  ["no handle at all", OMIT],
];

describe("handle on create", () => {
  it.each(HANDLES_OK)("accepts %s", async (_label, input, sent) => {
    const { result: r, received } = await send(CREATE, { json: { handle: input, unknown_field: "ignored" } });
    expect(r.status, r.text).toBe(200);
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0]!.body)).toEqual({ handle: sent });
    expect(r.json.handle).toBe(sent);
    expect((await eventOf(ctx, r)).handle).toBe(sent);
  });

  it.each(HANDLES_BAD)("refuses %s: 400 invalid_params field handle", async (_label, input) => {
    await expectRefused(CREATE, await send(CREATE, { json: bodyOf(input) }), 400, "invalid_params", "handle");
  });
});

describe("handle on domain/enable", () => {
  it.each(HANDLES_OK)("accepts %s", async (_label, input, sent) => {
    ctx.sim.handles.set(sent, { owner: key.plaintext, active: true, disabledDomains: new Set() });
    const { result: r, received } = await send(ENABLE, { json: { handle: input, domain: "example.com" } });
    expect(r.status, r.text).toBe(200);
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0]!.body)).toEqual({ handle: sent, domain: "example.com" });
  });

  it.each(HANDLES_BAD)("refuses %s: 400 invalid_params field handle", async (_label, input) => {
    await expectRefused(ENABLE, await send(ENABLE, { json: bodyOf(input, "example.com") }), 400, "invalid_params", "handle");
  });

  it("a bad handle and a bad domain: the handle is named (upstream checks it first)", async () => {
    await expectRefused(ENABLE, await send(ENABLE, { json: { handle: "a..b", domain: "localhost" } }), 400, "invalid_params", "handle");
  });
});

// 253 characters in all: three labels of 63, one of 57, and "com".
const LONGEST = `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(57)}.com`;
const DOMAINS_OK: [string, string, string][] = [
  ["example.com", "example.com", "example.com"],
  ["upper case, lower-cased", "Example.COM", "example.com"],
  ["surrounding spaces trimmed", "  example.org ", "example.org"],
  ["several labels", "mail.sub.example.co", "mail.sub.example.co"],
  ["a hyphen inside a label", "my-site.io", "my-site.io"],
  ["a label of 63 characters", `${"l".repeat(63)}.com`, `${"l".repeat(63)}.com`],
  ["punycode", "xn--bcher-kva.de", "xn--bcher-kva.de"],
  ["253 characters", LONGEST, LONGEST],
  ["a TLD of 63 letters", `example.${"t".repeat(63)}`, `example.${"t".repeat(63)}`],
];
const DOMAINS_BAD: [string, unknown][] = [
  ["half of a surrogate pair (JSON's \\udc00)", "ex\udc00ample.com"],
  ["a single label", "localhost"],
  ["a trailing dot", "example.com."],
  ["a leading dot", ".example.com"],
  ["an empty label", "example..com"],
  ["an IPv4 literal", "192.168.0.1"],
  ["an IPv6 literal", "[::1]"],
  ["a label of 64 characters", `${"l".repeat(64)}.com`],
  ["a label starting with -", "-abc.com"],
  ["a label ending with -", "abc-.com"],
  ["Unicode", "bücher.de"],
  ["a TLD of 1 letter", "example.c"],
  ["a TLD of 64 letters", `example.${"t".repeat(64)}`],
  ["a numeric TLD", "example.123"],
  ["254 characters", `e${LONGEST}`],
  ["a space inside", "exa mple.com"],
  ["an e-mail address", "a@example.com"],
  ["empty", ""],
  ["a number", 42],
  ["null", null],
  ["an object", { host: "example.com" }],
  ["no domain at all", OMIT],
];

describe("domain on domain/enable", () => {
  beforeAll(() => {
    ctx.sim.handles.set("dom", { owner: key.plaintext, active: true, disabledDomains: new Set() });
  });

  it.each(DOMAINS_OK)("accepts %s", async (_label, input, sent) => {
    const { result: r, received } = await send(ENABLE, { json: { handle: "dom", domain: input } });
    expect(r.status, r.text).toBe(200);
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0]!.body)).toEqual({ handle: "dom", domain: sent });
    expect(r.json.domain).toBe(sent);
    const e = await eventOf(ctx, r, "domain.enable");
    expect([e.outcome, e.handle, e.domain]).toEqual(["success", "dom", sent]);
  });

  it.each(DOMAINS_BAD)("refuses %s: 400 invalid_params field domain", async (_label, input) => {
    await expectRefused(ENABLE, await send(ENABLE, { json: bodyOf("dom", input) }), 400, "invalid_params", "domain");
  });
});

describe("the body itself", () => {
  it.each([CREATE, ENABLE])("%s: text that does not parse is 400 invalid_json", async (path) => {
    await expectRefused(path, await send(path, { body: '{"handle":', contentType: "application/json" }), 400, "invalid_json");
  });

  it.each([
    [CREATE, "null"],
    [CREATE, "[]"],
    [CREATE, '["alice"]'],
    [CREATE, "42"],
    [CREATE, '"alice"'],
    [ENABLE, "null"],
    [ENABLE, '[{"handle":"dom","domain":"example.com"}]'],
  ])("%s: valid JSON of the wrong shape (%s) is 400 invalid_params", async (path, body) => {
    await expectRefused(path, await send(path, { body, contentType: "application/json" }), 400, "invalid_params");
  });

  it.each([CREATE, ENABLE])("%s: a text/plain body is not parsed (as upstream): 400 invalid_params field handle", async (path) => {
    const body = JSON.stringify({ handle: "plain-text", domain: "example.com" });
    await expectRefused(path, await send(path, { body, contentType: "text/plain" }), 400, "invalid_params", "handle");
    // The same body sent as JSON is fine.
    ctx.sim.handles.set("plain-text", { owner: key.plaintext, active: true, disabledDomains: new Set() });
    const ok = await send(path, { body, contentType: "application/json; charset=utf-8" });
    expect(ok.result.status, ok.result.text).toBe(path === CREATE ? 409 : 200); // reached upstream
    expect(ok.received).toHaveLength(1);
  });

  it.each([CREATE, ENABLE])("%s: a form body is parsed (as upstream's express.urlencoded), and goes upstream as JSON", async (path) => {
    ctx.sim.handles.set("form-made", { owner: key.plaintext, active: true, disabledDomains: new Set() });
    const got = await send(path, { body: "handle=+Form-Made&domain=Example.com&extra=1", contentType: "application/x-www-form-urlencoded; charset=UTF-8" });
    expect(got.result.status, got.result.text).toBe(path === CREATE ? 409 : 200); // upstream judged it
    expect(got.received).toHaveLength(1);
    expect(JSON.parse(got.received[0]!.body)).toEqual(path === CREATE ? { handle: "form-made" } : { handle: "form-made", domain: "example.com" });
  });

  it("the simulator, like upstream, takes a form body too", async () => {
    const res = await fetch(ctx.sim.url + CREATE, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "x-api-key": key.plaintext },
      body: "handle=sim-form",
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, created: true, handle: "sim-form" });
  });

  it("a form naming the handle twice is refused as upstream would (an array is not a string): 400 invalid_params field handle", async () => {
    await expectRefused(CREATE, await send(CREATE, { body: "handle=one&handle=two", contentType: "application/x-www-form-urlencoded" }), 400, "invalid_params", "handle");
  });

  it("a vendor +json type is not parsed upstream (express.json() takes application/json only): 400 invalid_params field handle", async () => {
    const body = JSON.stringify({ handle: "vendor-typed" });
    await expectRefused(CREATE, await send(CREATE, { body, contentType: "application/vnd.api+json" }), 400, "invalid_params", "handle");
  });

  it("no body at all: 400 invalid_params field handle", async () => {
    await expectRefused(CREATE, await send(CREATE, { body: "", contentType: "application/json" }), 400, "invalid_params", "handle");
  });

  /** A JSON body of exactly `size` bytes with a valid handle. */
  const padded = (handle: string, size: number) => {
    const base = JSON.stringify({ handle, pad: "" });
    const body = JSON.stringify({ handle, pad: "x".repeat(size - Buffer.byteLength(base)) });
    expect(Buffer.byteLength(body)).toBe(size);
    return body;
  };

  it("a body of exactly 32 KiB is accepted; one byte more is 413, and nothing goes upstream", async () => {
    const ok = await send(CREATE, { body: padded("exactly-32k", 32 * 1024), contentType: "application/json" });
    expect(ok.result.status, ok.result.text).toBe(200);
    expect(JSON.parse(ok.received[0]!.body)).toEqual({ handle: "exactly-32k" });

    const big = await send(CREATE, { body: padded("over-32k", 32 * 1024 + 1), contentType: "application/json" });
    expectErrorBody(big.result, 413, "payload_too_large");
    expect(big.received).toHaveLength(0);
  });

  it("a body over 32 KiB streamed without Content-Length is 413 too", async () => {
    const chunk = new TextEncoder().encode(`{"handle":"streamed","pad":"${"y".repeat(20_000)}`);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(chunk);
        c.enqueue(new TextEncoder().encode(`${"z".repeat(20_000)}"}`));
        c.close();
      },
    });
    const before = ctx.sim.received.length;
    const r = await ctx.fetch(CREATE, {
      method: "POST",
      headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
      body: stream,
      duplex: "half",
    } as RequestInit);
    expectErrorBody(r, 413, "payload_too_large");
    expect(ctx.sim.received.length).toBe(before);
  });

  it("without a token: 401, nothing upstream", async () => {
    const { result, received } = await receivedDuring(ctx.sim, () => ctx.svc.call("POST", CREATE, { json: { handle: "anon" } }));
    expectErrorBody(result, 401, "unauthorized");
    expect(received).toHaveLength(0);
  });
});

describe("secrets", () => {
  it("never shows a stored key's plaintext", () => expectNoSecrets(ctx));
});

// Shared bits of the rate-limit suites (not a test file itself): a strict RFC 8941 list parser for
// the RateLimit headers, checks of a 429, and service processes of our own (for the multi-process
// suite: `node --import tsx src/index.ts`, exactly as an operator starts it).
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { expect } from "vitest";
import { sleep, type CallResult } from "../helpers/harness.js";

export { randomApiKey, request, sleep, uniqueName } from "../helpers/harness.js";

let handleCounter = 0;
const handlePrefix = `l${randomBytes(3).toString("hex")}`;
/** A handle the simulator has never seen (it answers 409 alias_taken for a reused one). */
export const freshHandle = () => `${handlePrefix}.${++handleCounter}`;

// ---- RFC 8941 structured fields: lists ------------------------------------------------------------

export type BareItem =
  | { type: "integer"; value: number }
  | { type: "decimal"; value: number }
  | { type: "string"; value: string }
  | { type: "token"; value: string }
  | { type: "bytes"; value: string }
  | { type: "boolean"; value: boolean };
export type Params = Map<string, BareItem>;
export type SfItem = { kind: "item"; item: BareItem; params: Params };
export type SfInnerList = { kind: "inner"; items: { item: BareItem; params: Params }[]; params: Params };
export type SfList = (SfItem | SfInnerList)[];

export class SfParseError extends Error {}

/**
 * RFC 8941 §4.2.1 (parsing a List), strictly: any deviation fails, as the RFC requires
 * ("fail parsing" discards the whole field). An empty field is an empty list.
 */
export function parseSfList(input: string): SfList {
  let s = input;
  let i = 0;
  const fail = (why: string): never => {
    throw new SfParseError(`${why} at ${i} in ${JSON.stringify(input)}`);
  };
  const peek = () => s[i];
  const isDigit = (c: string | undefined) => c !== undefined && c >= "0" && c <= "9";
  const isLcalpha = (c: string | undefined) => c !== undefined && c >= "a" && c <= "z";
  const isAlpha = (c: string | undefined) => c !== undefined && /^[A-Za-z]$/.test(c);
  const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]$/;

  const discardSp = () => {
    while (s[i] === " ") i++;
  };
  const discardOws = () => {
    while (s[i] === " " || s[i] === "\t") i++;
  };

  function parseBareItem(): BareItem {
    const c = peek();
    if (c === "-" || isDigit(c)) return parseNumber();
    if (c === '"') return parseString();
    if (c === "*" || isAlpha(c)) return parseToken();
    if (c === ":") return parseBytes();
    if (c === "?") return parseBoolean();
    return fail("unrecognised bare item");
  }

  function parseNumber(): BareItem {
    let type: "integer" | "decimal" = "integer";
    let sign = 1;
    let num = "";
    if (s[i] === "-") {
      i++;
      sign = -1;
    }
    if (!isDigit(peek())) fail("number without digits");
    while (i < s.length) {
      const c = s[i]!;
      if (isDigit(c)) {
        num += c;
        i++;
      } else if (type === "integer" && c === ".") {
        if (num.length > 12) fail("decimal with more than 12 integer digits");
        num += c;
        type = "decimal";
        i++;
      } else break;
      if (type === "integer" && num.length > 15) fail("integer with more than 15 digits");
      if (type === "decimal" && num.length > 16) fail("decimal with more than 16 characters");
    }
    if (type === "integer") return { type, value: sign * Number(num) };
    if (num.endsWith(".")) fail("decimal ending in a dot");
    if (num.length - num.indexOf(".") - 1 > 3) fail("decimal with more than 3 fractional digits");
    return { type, value: sign * Number(num) };
  }

  function parseString(): BareItem {
    i++; // the opening quote
    let out = "";
    while (i < s.length) {
      const c = s[i++]!;
      if (c === "\\") {
        if (i >= s.length) fail("string ends after a backslash");
        const n = s[i++]!;
        if (n !== '"' && n !== "\\") fail("backslash before something else than \" or \\");
        out += n;
      } else if (c === '"') {
        return { type: "string", value: out };
      } else {
        const code = c.charCodeAt(0);
        if (code <= 0x1f || code >= 0x7f) fail("character outside %x20-7E in a string");
        out += c;
      }
    }
    return fail("unterminated string");
  }

  function parseToken(): BareItem {
    let out = "";
    while (i < s.length && (TCHAR.test(s[i]!) || s[i] === ":" || s[i] === "/")) out += s[i++];
    return { type: "token", value: out };
  }

  function parseBytes(): BareItem {
    i++;
    const start = i;
    while (i < s.length && s[i] !== ":") {
      if (!/^[A-Za-z0-9+/=]$/.test(s[i]!)) fail("character outside base64 in a byte sequence");
      i++;
    }
    if (i >= s.length) fail("unterminated byte sequence");
    const b64 = s.slice(start, i);
    i++;
    return { type: "bytes", value: b64 };
  }

  function parseBoolean(): BareItem {
    i++;
    const c = s[i++];
    if (c === "1") return { type: "boolean", value: true };
    if (c === "0") return { type: "boolean", value: false };
    return fail("boolean other than ?0 or ?1");
  }

  function parseKey(): string {
    const c = peek();
    if (!isLcalpha(c) && c !== "*") fail("parameter key must start with a lower-case letter or *");
    let out = "";
    while (i < s.length && /^[a-z0-9_\-.*]$/.test(s[i]!)) out += s[i++];
    return out;
  }

  function parseParameters(): Params {
    const params: Params = new Map();
    while (i < s.length) {
      if (s[i] !== ";") break;
      i++;
      discardSp();
      const key = parseKey();
      let value: BareItem = { type: "boolean", value: true };
      if (s[i] === "=") {
        i++;
        value = parseBareItem();
      }
      params.set(key, value); // a later duplicate overwrites (RFC 8941 §4.2.3.2)
    }
    return params;
  }

  function parseInnerList(): SfInnerList {
    i++; // "("
    const items: SfInnerList["items"] = [];
    while (i < s.length) {
      discardSp();
      if (s[i] === ")") {
        i++;
        return { kind: "inner", items, params: parseParameters() };
      }
      const item = parseBareItem();
      items.push({ item, params: parseParameters() });
      if (s[i] !== " " && s[i] !== ")") fail("inner list members must be separated by a space");
    }
    return fail("unterminated inner list");
  }

  // §4.2: leading SP discarded; the list; trailing SP discarded; nothing may remain.
  discardSp();
  const members: SfList = [];
  while (i < s.length) {
    if (s[i] === "(") members.push(parseInnerList());
    else {
      const item = parseBareItem();
      members.push({ kind: "item", item, params: parseParameters() });
    }
    discardOws();
    if (i >= s.length) break;
    if (s[i] !== ",") fail("expected a comma between list members");
    i++;
    discardOws();
    if (i >= s.length) fail("trailing comma");
  }
  s = "";
  return members;
}

// ---- RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-10) ---------------------

export type Policy = { q: number; w: number };
export type State = { r: number; t: number };
export type RateHeaders = { policies: Map<string, Policy>; states: Map<string, State>; names: string[] };

/**
 * Reads both fields of an answer, strictly: each must be present and an sf-list whose members are
 * sf-strings (the policy names) with the given sf-integer parameters; no name twice; the two
 * fields name the same policies in the same order. Throws with the reason otherwise.
 */
export function readRateHeaders(headers: Headers): RateHeaders {
  const policyField = headers.get("ratelimit-policy");
  const stateField = headers.get("ratelimit");
  if (policyField === null) throw new Error("no RateLimit-Policy header");
  if (stateField === null) throw new Error("no RateLimit header");
  const policies = new Map<string, Policy>();
  const states = new Map<string, State>();
  const collect = <T>(field: string, what: string, keys: string[], into: Map<string, T>): string[] => {
    const names: string[] = [];
    for (const m of parseSfList(field)) {
      if (m.kind !== "item") throw new Error(`${what}: an inner list is not a policy: ${field}`);
      if (m.item.type !== "string") throw new Error(`${what}: policy names are sf-strings, got a ${m.item.type}: ${field}`);
      const name = m.item.value;
      if (into.has(name)) throw new Error(`${what}: "${name}" twice: ${field}`);
      const values: Record<string, number> = {};
      for (const k of keys) {
        const p = m.params.get(k);
        if (!p || p.type !== "integer") throw new Error(`${what}: "${name}" lacks the sf-integer ${k}: ${field}`);
        values[k] = p.value;
      }
      into.set(name, values as T);
      names.push(name);
    }
    return names;
  };
  const names = collect(policyField, "RateLimit-Policy", ["q", "w"], policies);
  const stateNames = collect(stateField, "RateLimit", ["r", "t"], states);
  if (names.join(",") !== stateNames.join(",")) {
    throw new Error(`RateLimit-Policy names ${names.join(",")} but RateLimit names ${stateNames.join(",")}`);
  }
  return { policies, states, names };
}

/** The configured policy of each name, as q (count) and w (seconds). */
export type Expected = Partial<Record<"user" | "key" | "global", Policy>>;

/**
 * Checks the RateLimit fields of an answer against the configuration: names among user, key and
 * global (`require` must be present), q and w as configured, 0 <= r <= q, 0 <= t <= w.
 */
export function checkRateHeaders(r: CallResult, expected: Expected, require: (keyof Expected)[]): RateHeaders {
  const h = readRateHeaders(r.headers);
  for (const name of h.names) expect(["user", "key", "global"], `policy name ${name}`).toContain(name);
  for (const name of require) expect(h.names, `policies of a ${r.status}`).toContain(name);
  for (const name of h.names) {
    const p = h.policies.get(name)!;
    const s = h.states.get(name)!;
    const want = expected[name as keyof Expected];
    if (want) expect(p, `policy ${name}`).toEqual(want);
    expect(s.r, `r of ${name}`).toBeGreaterThanOrEqual(0);
    expect(s.r, `r of ${name}`).toBeLessThanOrEqual(p.q);
    expect(s.t, `t of ${name}`).toBeGreaterThanOrEqual(0);
    expect(s.t, `t of ${name}`).toBeLessThanOrEqual(p.w);
  }
  return h;
}

export const remaining = (r: CallResult, name: string): number => {
  const s = readRateHeaders(r.headers).states.get(name);
  if (!s) throw new Error(`no "${name}" in RateLimit: ${r.headers.get("ratelimit")}`);
  return s.r;
};

/** A 429 of our own limits: the contract's body, reason, Retry-After equal to retry_after, in [1, max]. */
export function expectRateLimited(r: CallResult, reason: string, maxRetry = 60) {
  expect(r.status, r.text).toBe(429);
  expect(r.json?.error).toBe("rate_limited");
  expect(r.json?.reason).toBe(reason);
  expect(typeof r.json?.message).toBe("string");
  expect(r.json?.request_id).toBe(r.headers.get("x-request-id"));
  const header = r.headers.get("retry-after");
  expect(header, "Retry-After header").toMatch(/^\d+$/);
  expect(Number(header)).toBeGreaterThanOrEqual(1);
  expect(Number(header)).toBeLessThanOrEqual(maxRetry);
  expect(r.json?.retry_after).toBe(Number(header));
}

/** How many of the answers have each status, e.g. {200: 10, 429: 40}. */
export function statusCounts(rs: CallResult[]): Record<number, number> {
  const out: Record<number, number> = {};
  for (const r of rs) out[r.status] = (out[r.status] ?? 0) + 1;
  return out;
}

// ---- service processes ------------------------------------------------------------------------------

/** A port nobody listens on right now (bound to port 0, then closed). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export type ServiceProcess = { url: string; port: number; child: ChildProcess; output: () => string };

const REPO = new URL("../..", import.meta.url).pathname;

/**
 * Starts `node --import tsx src/index.ts` with exactly `env` (plus PATH and HOME), waits until
 * /readyz answers 200, and fails with the process's output if it exits or is not ready in time.
 */
export async function spawnService(env: Record<string, string>, timeoutMs = 40_000): Promise<ServiceProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", "src/index.ts"], {
    cwd: REPO,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", ...env, HOST: "127.0.0.1", PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d) => (out = (out + d).slice(-20_000)));
  child.stderr!.on("data", (d) => (out = (out + d).slice(-20_000)));
  let exited: number | null | undefined;
  child.once("exit", (code) => (exited = code));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== undefined) throw new Error(`service process exited (${exited}) before it was ready:\n${out}`);
    try {
      const r = await fetch(`${url}/readyz`);
      await r.arrayBuffer();
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`service process not ready after ${timeoutMs} ms:\n${out}`);
    }
    await sleep(100);
  }
  return { url, port, child, output: () => out };
}

/** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
export async function stopProcess(p: ServiceProcess, graceMs = 6_000): Promise<void> {
  const { child } = p;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }, graceMs);
  await exited;
  clearTimeout(timer);
}

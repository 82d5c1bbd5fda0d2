// Helpers shared by the proxied-call suites (not a test file itself). Every suite runs the real
// service (harness: real database, real HTTP server) against the real Haltman simulator over
// loopback sockets; nothing is mocked.
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, expect } from "vitest";
import { startSimulator, type ReceivedRequest, type Simulator, type SimulatorOptions } from "../../src/simulator/server.js";
import { randomApiKey, readAnswer, sleep, startService, type AuditEvent, type CallOptions, type CallResult, type Service } from "../helpers/harness.js";

/** Limits far above anything these suites do (rate limiting has a suite of its own). */
export const HIGH_LIMITS: Record<string, string> = {
  RATE_LIMIT_HANDLE_CREATE: "1000/min",
  RATE_LIMIT_DOMAIN_ENABLE: "1000/min",
  RATE_LIMIT_KEY: "1000/min",
  RATE_LIMIT_GLOBAL: "5000/min",
};

export const CREATE = "/api/handle/create";
export const ENABLE = "/api/handle/domain/enable";

export type { AuditEvent } from "../helpers/harness.js";

/** A response as the suites keep it for the secrets check: status, every header, the body. */
type Seen = { status: number; headers: [string, string][]; text: string };

export type Ctx = {
  sim: Simulator;
  svc: Service;
  /** plaintexts of every Haltman key stored through this service */
  secrets: string[];
  /** every answer the service gave through ctx.svc.call or ctx.fetch */
  seen: Seen[];
  /** a raw fetch to the service (for concurrency and streamed bodies), recorded like svc.call */
  fetch(path: string, init: RequestInit): Promise<CallResult>;
  close(): Promise<void>;
};

export const newApiKey = randomApiKey;

/** A simulator and a service pointed at it; `svc.call` records every answer for the secrets check. */
export async function startPair(opts: { env?: Record<string, string>; sim?: SimulatorOptions; baseUrl?: string } = {}): Promise<Ctx> {
  const sim = await startSimulator(opts.sim ?? {});
  const svc = await startService({ env: { HALTMAN_BASE_URL: opts.baseUrl ?? sim.url, ...HIGH_LIMITS, ...(opts.env ?? {}) } });
  const seen: Seen[] = [];
  const keep = (r: CallResult) => {
    seen.push({ status: r.status, headers: [...r.headers.entries()], text: r.text });
    return r;
  };
  const original = svc.call;
  svc.call = async (method: string, path: string, o?: CallOptions) => keep(await original(method, path, o));
  return {
    sim,
    svc,
    secrets: [],
    seen,
    async fetch(path, init) {
      return keep(await readAnswer(await fetch(svc.url + path, { redirect: "manual", ...init })));
    },
    async close() {
      await svc.close();
      await sim.close();
    },
  };
}

/** Stores a fresh Haltman key (known to the simulator) as the token's user. */
export async function storeKey(ctx: Ctx, token: string, name = "key"): Promise<{ id: string; plaintext: string }> {
  const plaintext = newApiKey();
  ctx.secrets.push(plaintext);
  ctx.sim.addKey(plaintext, `${name}@owner.example`);
  const r = await ctx.svc.call("POST", "/v1/keys", { token, json: { name, api_key: plaintext } });
  expect(r.status, r.text).toBe(201);
  return { id: r.json.id as string, plaintext };
}

export async function grantKey(ctx: Ctx, ownerToken: string, keyId: string, username: string, expiresAt?: Date): Promise<string> {
  const r = await ctx.svc.call("POST", `/v1/keys/${keyId}/grants`, {
    token: ownerToken,
    json: { username, ...(expiresAt ? { expires_at: expiresAt.toISOString() } : {}) },
  });
  expect(r.status, r.text).toBe(201);
  return r.json.id as string;
}

export function post(ctx: Ctx, path: string, token: string, json: unknown, headers: Record<string, string> = {}): Promise<CallResult> {
  return ctx.svc.call("POST", path, { token, json, headers });
}

export const requestIdOf = (r: CallResult) => {
  const id = r.headers.get("x-request-id");
  expect(id, "X-Request-Id on the answer").toBeTruthy();
  return id!;
};

/** The events of one action (newest first), as the admin sees them. */
export async function auditEvents(ctx: Ctx, action: string, token = ctx.svc.admin.token, limit = 500): Promise<AuditEvent[]> {
  const r = await ctx.svc.call("GET", `/v1/audit?action=${encodeURIComponent(action)}&limit=${limit}`, { token });
  expect(r.status, r.text).toBe(200);
  return r.json.events as AuditEvent[];
}

/**
 * The single audit event of the call that answered `r`. Calls within a file are sequential and
 * this is asked right after, so the newest few events hold it (and any duplicate of it).
 */
export async function eventOf(ctx: Ctx, r: CallResult, action = "handle.create"): Promise<AuditEvent> {
  const id = requestIdOf(r);
  const events = (await auditEvents(ctx, action, ctx.svc.admin.token, 30)).filter((e) => e.request_id === id);
  expect(events, `audit events of request ${id}`).toHaveLength(1);
  return events[0]!;
}

/** Runs `fn`, and returns what the simulator received meanwhile. */
export async function receivedDuring<T>(sim: Simulator, fn: () => Promise<T>): Promise<{ result: T; received: ReceivedRequest[] }> {
  const before = sim.received.length;
  const result = await fn();
  return { result, received: sim.received.slice(before) };
}

export async function waitFor(pred: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export { sleep };

/** A loopback port with nothing listening on it (bound, then closed). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// ---- RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10) --------------------------------

export type SfItem = { name: string; params: Record<string, number> };

/**
 * A strict parser of the RFC 8941 subset these headers use: a list of sf-string items, each with
 * integer parameters, members separated by ", ". Anything else throws.
 */
export function parseSfList(text: string): SfItem[] {
  const items: SfItem[] = [];
  let i = 0;
  const fail = (why: string): never => {
    throw new Error(`not a structured-field list (${why}) at ${i}: ${JSON.stringify(text)}`);
  };
  if (text.length === 0) fail("empty");
  for (;;) {
    // sf-string
    if (text[i] !== '"') fail("expected a string");
    i++;
    let name = "";
    for (;;) {
      if (i >= text.length) fail("unterminated string");
      const ch = text[i]!;
      const code = ch.charCodeAt(0);
      if (ch === "\\") {
        const next = text[i + 1];
        if (next !== '"' && next !== "\\") fail("bad escape");
        name += next;
        i += 2;
        continue;
      }
      if (ch === '"') {
        i++;
        break;
      }
      if (code < 0x20 || code > 0x7e) fail("bad character in string");
      name += ch;
      i++;
    }
    // parameters: ;key=integer
    const params: Record<string, number> = {};
    while (text[i] === ";") {
      i++;
      const key = /^[a-z*][a-z0-9_.*-]*/.exec(text.slice(i))?.[0];
      if (!key) fail("bad parameter key");
      i += key!.length;
      if (key! in params) fail(`duplicate parameter ${key}`);
      if (text[i] !== "=") fail("parameter without an integer value");
      i++;
      const int = /^-?[0-9]{1,15}/.exec(text.slice(i))?.[0];
      if (!int) fail("parameter value is not an integer");
      i += int!.length;
      if (text[i] === ".") fail("decimal, not integer");
      params[key!] = Number(int);
    }
    items.push({ name, params });
    if (i === text.length) return items;
    if (text.slice(i, i + 2) !== ", ") fail('expected ", " between members');
    i += 2;
  }
}

/**
 * Both headers present and well-formed; the policies named `names`, in that order; policy params
 * exactly q and w, state params exactly r and t, with the values that make sense.
 */
export function expectRateLimitHeaders(
  r: CallResult,
  names: string[] | "key optional" = ["user", "key", "global"],
): { policy: SfItem[]; state: SfItem[] } {
  const policyText = r.headers.get("ratelimit-policy");
  const stateText = r.headers.get("ratelimit");
  expect(policyText, `RateLimit-Policy on a ${r.status}`).toBeTruthy();
  expect(stateText, `RateLimit on a ${r.status}`).toBeTruthy();
  const policy = parseSfList(policyText!);
  const state = parseSfList(stateText!);
  if (names === "key optional") {
    // Refused before a key was chosen: the key's policy may be left out.
    expect([["user", "key", "global"], ["user", "global"]]).toContainEqual(policy.map((p) => p.name));
    names = policy.map((p) => p.name);
  }
  expect(policy.map((p) => p.name)).toEqual(names);
  expect(state.map((s) => s.name)).toEqual(names);
  for (const p of policy) {
    expect(Object.keys(p.params).sort(), `policy ${p.name}`).toEqual(["q", "w"]);
    expect(p.params.q).toBeGreaterThan(0);
    expect(p.params.w).toBeGreaterThan(0);
  }
  for (const s of state) {
    const p = policy.find((x) => x.name === s.name)!;
    expect(Object.keys(s.params).sort(), `state ${s.name}`).toEqual(["r", "t"]);
    expect(s.params.r).toBeGreaterThanOrEqual(0);
    expect(s.params.r).toBeLessThanOrEqual(p.params.q!);
    expect(s.params.t).toBeGreaterThanOrEqual(0);
    expect(s.params.t).toBeLessThanOrEqual(p.params.w!);
  }
  return { policy, state };
}

// ---- secrets ------------------------------------------------------------------------------------

/** The forms of a key that must never be shown: whole (either case) and either half. */
function secretForms(plaintext: string): string[] {
  return [plaintext, plaintext.toUpperCase(), plaintext.slice(0, 32), plaintext.slice(32)];
}

export function findSecret(haystack: string, secrets: string[]): string | undefined {
  for (const s of secrets) for (const f of secretForms(s)) if (haystack.includes(f)) return f.slice(0, 6) + "…";
  return undefined;
}

/** No stored key's plaintext in any answer (body or header) or log line of this service. */
export function expectNoSecrets(ctx: Ctx): void {
  expect(ctx.secrets.length).toBeGreaterThan(0);
  expect(ctx.seen.length).toBeGreaterThan(0);
  // The check itself works: the simulator did receive the plaintext of a key.
  const upstream = JSON.stringify(ctx.sim.received.map((r) => r.headers));
  if (ctx.sim.received.length > 0) expect(findSecret(upstream, ctx.secrets)).toBeDefined();
  for (const [i, r] of ctx.seen.entries()) {
    const text = `${r.status}\n${r.headers.map(([k, v]) => `${k}: ${v}`).join("\n")}\n\n${r.text}`;
    expect(findSecret(text, ctx.secrets), `answer #${i} (${r.status})`).toBeUndefined();
  }
  expect(ctx.svc.rawLogs.length).toBeGreaterThan(0);
  for (const line of ctx.svc.rawLogs) expect(findSecret(line, ctx.secrets), `log line ${line.slice(0, 120)}`).toBeUndefined();
}

/**
 * Collects exceptions nobody handled while `fn` runs and a little after (in the service, one of
 * these kills the process: there is no handler in production either).
 */
export async function uncaughtDuring<T>(fn: () => Promise<T>, settleMs = 100): Promise<{ result: T; uncaught: string[] }> {
  const uncaught: string[] = [];
  const onError = (err: unknown) => void uncaught.push(err instanceof Error ? `${err.name}: ${err.message}` : String(err));
  process.on("uncaughtException", onError);
  process.on("unhandledRejection", onError);
  try {
    const result = await fn();
    await sleep(settleMs);
    return { result, uncaught };
  } finally {
    process.off("uncaughtException", onError);
    process.off("unhandledRejection", onError);
  }
}

export type TwoInstances = { sim: Simulator; a: Service; b: Service };

/**
 * A simulator and two service instances sharing one database (instance b knows nothing of a's
 * memory), for a test file: started before its tests and handed to `use`, closed after them.
 */
export function twoInstancesForFile(use: (t: TwoInstances) => void): void {
  let started: (TwoInstances & { close(): Promise<void> }) | undefined;
  beforeAll(async () => {
    started = await startTwoInstances();
    use(started);
  });
  afterAll(() => started?.close());
}

async function startTwoInstances(): Promise<TwoInstances & { close(): Promise<void> }> {
  const sim = await startSimulator({});
  const a = await startService({ env: { HALTMAN_BASE_URL: sim.url, ...HIGH_LIMITS } });
  const b = await startService({ env: { HALTMAN_BASE_URL: sim.url, ...HIGH_LIMITS }, database: a.database });
  return {
    sim,
    a,
    b,
    async close() {
      await b.close();
      await a.close();
      await sim.close();
    },
  };
}

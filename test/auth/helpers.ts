// Shared bits of the auth suites (not a test file itself).
import { randomBytes } from "node:crypto";
import { expect } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import type { LoginLimits } from "../../src/deps.js";
import { createPasswordHasher, type PasswordHasher } from "../../src/services/passwords.js";
import { FAST_HASH, sleep, uniqueName, type AuditEvent, type CallResult, type Service } from "../helpers/harness.js";

export { sleep, uniqueName };

/** Login throttles out of the way, for suites that log in many times from 127.0.0.1. */
export const GENEROUS_LOGIN_LIMITS: LoginLimits = {
  perAccount: parseRatePolicy("10000/min")!,
  perAddress: parseRatePolicy("10000/min")!,
};


export type Counts = { hash: number; verify: number; verifyDummy: number };

/**
 * The real hasher (FAST_HASH), counting its calls. Setting `delayMs` holds each verification back
 * that long, to show that a response waits for it.
 */
export type CountingHasher = PasswordHasher & {
  counts: Counts;
  delayMs: number;
  /** the next verification, once done, calls `entered` and waits for `until` (then it is cleared) */
  hold?: { entered: () => void; until: Promise<void> };
};

export function countingHasher(): CountingHasher {
  const inner = createPasswordHasher({ params: FAST_HASH });
  const counts: Counts = { hash: 0, verify: 0, verifyDummy: 0 };
  const self: CountingHasher = {
    counts,
    delayMs: 0,
    get params() {
      return inner.params;
    },
    hash(p) {
      counts.hash++;
      return inner.hash(p);
    },
    async verify(h, p) {
      counts.verify++;
      const r = await inner.verify(h, p);
      const hold = self.hold;
      if (hold) {
        self.hold = undefined;
        hold.entered();
        await hold.until;
      }
      if (self.delayMs) await sleep(self.delayMs);
      return r;
    },
    async verifyDummy(p) {
      counts.verifyDummy++;
      await inner.verifyDummy(p);
      if (self.delayMs) await sleep(self.delayMs);
    },
    stats: () => inner.stats(),
  };
  return self;
}

/** Creates a user through the admin API, without logging in (so no throttle is spent). */
export async function createUser(
  svc: Service,
  opts: { username?: string; password?: string; role?: "admin" | "member" } = {},
): Promise<{ id: string; username: string; password: string }> {
  const username = opts.username ?? uniqueName();
  const password = opts.password ?? `pw ${randomBytes(6).toString("hex")} long`;
  const r = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username, password, role: opts.role ?? "member" } });
  if (r.status !== 201) throw new Error(`creating ${username}: ${r.status} ${r.text}`);
  return { id: r.json.id, username: r.json.username, password };
}

export type { AuditEvent } from "../helpers/harness.js";

/** Every audit event matching `query`, as the bootstrap admin sees them (all pages of GET /v1/audit). */
export async function auditEvents(svc: Service, query: Record<string, string> = {}): Promise<AuditEvent[]> {
  const out: AuditEvent[] = [];
  let cursor: string | undefined;
  for (let i = 0; i < 100; i++) {
    const q = new URLSearchParams({ ...query, limit: "500", ...(cursor ? { cursor } : {}) });
    const r = await svc.call("GET", `/v1/audit?${q}`, { token: svc.admin.token });
    expect(r.status, r.text).toBe(200);
    out.push(...r.json.events);
    if (!r.json.next_cursor) return out;
    cursor = r.json.next_cursor;
  }
  throw new Error("too many audit pages");
}

/** Decodes a JWT's header and payload (no verification). */
export function decodeJwt(token: string): { header: Record<string, unknown>; payload: Record<string, unknown> } {
  const [h, p] = token.split(".");
  return { header: JSON.parse(Buffer.from(h!, "base64url").toString()), payload: JSON.parse(Buffer.from(p!, "base64url").toString()) };
}

/** The headers every answer that carries a token (or user data) must have. */
export function expectNoStore(r: CallResult) {
  expect(r.headers.get("cache-control") ?? "").toMatch(/(^|,\s*)no-store(\s*,|$)/);
  expect(r.headers.get("x-content-type-options")).toBe("nosniff");
}


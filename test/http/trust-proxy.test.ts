// TRUST_PROXY: the client address recorded in the audit log (here: of logins and failed logins).
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { freshDatabase, startService, type Service, type TestDatabase } from "../helpers/harness.js";

// every login here is root's: lift the per-account login throttle out of the way
const loginLimits = { perAccount: parseRatePolicy("1000/min")!, perAddress: parseRatePolicy("1000/min")! };

// One database for the three configurations (events are told apart by their request id).
let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

const XFF = "203.0.113.9, 198.51.100.7";

/** Logs in (or fails to) with these headers; returns the ip of the audit event it wrote. */
async function ipOf(svc: Service, xff: string | undefined, password = "root-password-1"): Promise<string | null> {
  const requestId = `tp-${randomUUID()}`;
  const headers: Record<string, string> = { "x-request-id": requestId };
  if (xff !== undefined) headers["x-forwarded-for"] = xff;
  const r = await svc.call("POST", "/v1/auth/login", { json: { username: "root", password }, headers });
  expect([200, 401]).toContain(r.status);
  const action = r.status === 200 ? "auth.login" : "auth.login_failed";
  const list = await svc.call("GET", `/v1/audit?action=${action}&limit=500`, { token: svc.admin.token });
  const events = list.json.events.filter((e: { request_id: string }) => e.request_id === requestId);
  expect(events).toHaveLength(1);
  return events[0].ip;
}

describe("TRUST_PROXY unset", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ database, loginLimits });
  });
  afterAll(() => svc.close());

  it("the ip is the socket's, whatever X-Forwarded-For says", async () => {
    expect(await ipOf(svc, undefined)).toBe("127.0.0.1");
    expect(await ipOf(svc, XFF)).toBe("127.0.0.1");
    expect(await ipOf(svc, "203.0.113.9")).toBe("127.0.0.1");
    expect(await ipOf(svc, XFF, "wrong-password")).toBe("127.0.0.1");
  });
});

describe("TRUST_PROXY=1", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ env: { TRUST_PROXY: "1" }, database, loginLimits });
  });
  afterAll(() => svc.close());

  it("the ip is the rightmost X-Forwarded-For entry", async () => {
    expect(await ipOf(svc, XFF)).toBe("198.51.100.7");
    expect(await ipOf(svc, XFF, "wrong-password")).toBe("198.51.100.7");
    expect(await ipOf(svc, "198.51.100.8")).toBe("198.51.100.8");
    expect(await ipOf(svc, "203.0.113.9,198.51.100.9")).toBe("198.51.100.9");
  });

  it("IPv6 and IPv4-mapped entries are understood", async () => {
    expect(await ipOf(svc, "2001:db8::1")).toBe("2001:db8::1");
    expect(await ipOf(svc, "::ffff:198.51.100.10")).toBe("198.51.100.10");
  });

  it("without X-Forwarded-For, the socket's address", async () => {
    expect(await ipOf(svc, undefined)).toBe("127.0.0.1");
  });

  it("a garbage entry falls back to the socket's address", async () => {
    expect(await ipOf(svc, "203.0.113.9, not-an-ip")).toBe("127.0.0.1");
    expect(await ipOf(svc, "garbage")).toBe("127.0.0.1");
    expect(await ipOf(svc, "203.0.113.9, 999.1.1.1")).toBe("127.0.0.1");
    expect(await ipOf(svc, "<script>", "wrong-password")).toBe("127.0.0.1");
  });
});

describe("TRUST_PROXY=2", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService({ env: { TRUST_PROXY: "2" }, database, loginLimits });
  });
  afterAll(() => svc.close());

  it("the ip is the X-Forwarded-For entry two places from the right", async () => {
    expect(await ipOf(svc, XFF)).toBe("203.0.113.9");
    expect(await ipOf(svc, `192.0.2.66, ${XFF}`)).toBe("203.0.113.9");
    expect(await ipOf(svc, XFF, "wrong-password")).toBe("203.0.113.9");
  });

  it("a garbage entry at that place falls back to the socket's address", async () => {
    expect(await ipOf(svc, "nonsense, 198.51.100.7")).toBe("127.0.0.1");
  });
});

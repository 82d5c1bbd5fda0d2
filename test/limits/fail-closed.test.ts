// Issue 5, failing closed: when the limiter's storage cannot decide, nothing goes upstream and the
// caller gets 503 `unavailable` (the contract: "database or audit store down: nothing was sent
// upstream"), never a 500 and never an unlimited call. Once the storage is back, calls pass again.
// Login throttling uses the same limiter: no decision, no password check.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRatePolicy } from "../../src/config.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { freshHandle, randomApiKey, uniqueName } from "./common.js";

let svc: Service;
let sim: Simulator;
let user: { id: string; token: string; password: string; username: string };

beforeAll(async () => {
  sim = await startSimulator({ perKeyLimit: 1_000_000, perAddressLimit: 1_000_000 });
  svc = await startService({
    env: { HALTMAN_BASE_URL: sim.url, RATE_LIMIT_HANDLE_CREATE: "1000/min", RATE_LIMIT_KEY: "1000/min", RATE_LIMIT_GLOBAL: "1000/min" },
    loginLimits: { perAccount: parseRatePolicy("1000/min")!, perAddress: parseRatePolicy("1000/min")! },
  });
  const username = uniqueName("f");
  const u = await svc.addUser(svc.admin.token, username);
  user = { ...u, username };
  const apiKey = randomApiKey();
  sim.addKey(apiKey, "owner@example.com");
  const k = await svc.call("POST", "/v1/keys", { token: user.token, json: { name: "k", api_key: apiKey } });
  expect(k.status, k.text).toBe(201);
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

const creates = () => sim.received.filter((r) => r.path === "/api/handle/create").length;
const create = () => svc.call("POST", "/api/handle/create", { token: user.token, json: { handle: freshHandle() } });
const exec = (q: string) => svc.deps.db.execute(sql.raw(q));

/** A good call, a failing stretch under `breakIt`, then `repair` and a good call again. */
async function outage(breakIt: string, repair: string) {
  const ok = await create();
  expect(ok.status, ok.text).toBe(200);
  const before = creates();
  await exec(breakIt);
  let answers;
  try {
    answers = await Promise.all(
      ["/api/handle/create", "/api/handle/domain/enable", "/api/handle/create"].map((path) =>
        svc.call("POST", path, { token: user.token, json: { handle: freshHandle(), domain: "example.com" } }),
      ),
    );
  } finally {
    await exec(repair);
  }
  // closed: nothing left for upstream ...
  expect(creates() - before, "calls sent upstream while the limiter could not decide").toBe(0);
  expect(sim.received.filter((r) => r.path === "/api/handle/domain/enable")).toHaveLength(0);
  // ... and said so as the contract says
  for (const r of answers) {
    expect(r.status, `with the limiter's storage down the answer was ${r.status}: ${r.text}`).not.toBe(500);
    expectErrorBody(r, 503, "unavailable");
    expect(r.text).not.toMatch(/rate_limit_buckets|relation|stack|\.ts:/);
  }
  const again = await create();
  expect(again.status, again.text).toBe(200);
  expect(creates() - before).toBe(1);
}

describe("the limiter's storage unavailable", () => {
  // A trigger on the buckets makes every decision fail with the error a server would raise.
  for (const [what, errcode, message] of [
    ["disk full", "disk_full", "could not extend file: No space left on device"],
    ["a statement timeout", "query_canceled", "canceling statement due to statement timeout"],
    ["a lock timeout", "lock_not_available", "canceling statement due to lock timeout"],
    ["an I/O error", "io_error", "could not read block 0 in file: Input/output error"],
  ] as const) {
    it(`every decision failing with ${what} (${errcode}): 503, nothing upstream; repaired: 200`, async () => {
      await exec(`create or replace function limits_test_fail() returns trigger language plpgsql as $$
        begin raise exception '${message}' using errcode = '${errcode}'; end $$`);
      await outage(
        `create trigger limits_test_fail before insert or update on rate_limit_buckets for each row execute function limits_test_fail()`,
        `drop trigger limits_test_fail on rate_limit_buckets`,
      );
    });
  }

  it("the buckets table gone (renamed away): 503, nothing upstream; renamed back: 200", async () => {
    await outage(`alter table rate_limit_buckets rename to rate_limit_buckets_off`, `alter table rate_limit_buckets_off rename to rate_limit_buckets`);
  });

  it("login does not check a password it could not throttle: 503, then 200 once repaired", async () => {
    await exec(`create or replace function limits_test_disk_full() returns trigger language plpgsql as $$
      begin raise exception 'could not extend file: No space left on device' using errcode = 'disk_full'; end $$`);
    const good = await svc.call("POST", "/v1/auth/login", { json: { username: user.username, password: user.password } });
    expect(good.status, good.text).toBe(200);
    await exec(`create trigger limits_test_disk_full before insert or update on rate_limit_buckets for each row execute function limits_test_disk_full()`);
    try {
      const r = await svc.call("POST", "/v1/auth/login", { json: { username: user.username, password: user.password } });
      expect(r.status, r.text).not.toBe(500);
      expectErrorBody(r, 503, "unavailable");
      expect(r.json.access_token).toBeUndefined();
    } finally {
      await exec(`drop trigger limits_test_disk_full on rate_limit_buckets`);
    }
    const again = await svc.call("POST", "/v1/auth/login", { json: { username: user.username, password: user.password } });
    expect(again.status, again.text).toBe(200);
  });
});

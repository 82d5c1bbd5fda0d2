// Issue 5, the core: limits hold in total across several service processes sharing one
// PostgreSQL database. Each process is `node --import tsx src/index.ts`, started as an operator
// would (environment only), on its own port; the Haltman simulator runs in this test process and
// counts what reaches it. Bursts are concurrent and spread round-robin over the processes.
//
// Exactness needs the whole burst to be decided before the bucket refills one call: the policies
// here refill one call every 5 s (12/min) or more, and a burst takes well under a second.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { freshDatabase, TEST_KEYRING, type CallResult, type TestDatabase } from "../helpers/harness.js";
import {
  checkRateHeaders,
  expectRateLimited,
  freshHandle,
  randomApiKey,
  remaining,
  request,
  spawnService,
  statusCounts,
  stopProcess,
  uniqueName,
  type ServiceProcess,
} from "./common.js";

const ADMIN = { username: "root", password: "root-password-1" };

type Cluster = { db: TestDatabase; procs: ServiceProcess[]; adminToken: string };

/** One database, `n` processes: the first alone (it bootstraps the admin), then the others together. */
async function startCluster(sim: Simulator, n: number, limits: Record<string, string>): Promise<Cluster> {
  const db = await freshDatabase();
  const env = {
    DATABASE_URL: db.url!,
    VAULT_KEYRING: TEST_KEYRING,
    HALTMAN_BASE_URL: sim.url,
    BOOTSTRAP_ADMIN_USERNAME: ADMIN.username,
    BOOTSTRAP_ADMIN_PASSWORD: ADMIN.password,
    LOG_LEVEL: "warn",
    ...limits,
  };
  const procs: ServiceProcess[] = [];
  const cluster: Cluster = { db, procs, adminToken: "" };
  try {
    procs.push(await spawnService(env));
    const rest = await Promise.allSettled(Array.from({ length: n - 1 }, () => spawnService(env)));
    for (const r of rest) if (r.status === "fulfilled") procs.push(r.value);
    for (const r of rest) if (r.status === "rejected") throw r.reason;
    cluster.adminToken = (await login(procs[0]!.url, ADMIN.username, ADMIN.password)).token;
    return cluster;
  } catch (err) {
    await stopCluster(cluster);
    throw err;
  }
}

async function stopCluster(c: Cluster | undefined) {
  if (!c) return;
  await Promise.all(c.procs.map((p) => stopProcess(p)));
  await c.db.drop();
}

async function login(base: string, username: string, password: string) {
  const r = await request(base, "POST", "/v1/auth/login", { json: { username, password } });
  if (r.status !== 200) throw new Error(`login ${username}: ${r.status} ${r.text}`);
  return { token: r.json.access_token as string, id: r.json.user.id as string };
}

/** A member created through one process and logged in through another (tokens hold everywhere). */
async function member(c: Cluster, i = 0) {
  const username = uniqueName("m");
  const password = `pw-${username}-long`;
  const made = await request(c.procs[i % c.procs.length]!.url, "POST", "/v1/admin/users", {
    token: c.adminToken,
    json: { username, password, role: "member" },
  });
  if (made.status !== 201) throw new Error(`add user: ${made.status} ${made.text}`);
  const { token, id } = await login(c.procs[(i + 1) % c.procs.length]!.url, username, password);
  return { id, token, username };
}

async function storeKey(c: Cluster, token: string, sim: Simulator): Promise<string> {
  const apiKey = randomApiKey();
  sim.addKey(apiKey, "owner@example.com");
  const r = await request(c.procs[0]!.url, "POST", "/v1/keys", { token, json: { name: uniqueName("k"), api_key: apiKey } });
  if (r.status !== 201) throw new Error(`store key: ${r.status} ${r.text}`);
  return r.json.id as string;
}

const creates = (sim: Simulator) => sim.received.filter((r) => r.path === "/api/handle/create").length;

/** `total` concurrent creates; call i goes to process i mod n, as `caller(i)`. */
async function burst(c: Cluster, n: number, total: number, caller: (i: number) => { token: string; keyId?: string }) {
  return Promise.all(
    Array.from({ length: total }, (_, i) => {
      const { token, keyId } = caller(i);
      return request(c.procs[i % n]!.url, "POST", "/api/handle/create", {
        token,
        json: { handle: freshHandle() },
        ...(keyId ? { headers: { "x-key-id": keyId } } : {}),
      });
    }),
  );
}

function expectRefusals(rs: CallResult[], reason: string) {
  for (const r of rs.filter((x) => x.status === 429)) {
    expectRateLimited(r, reason);
    expect(remaining(r, reason)).toBe(0);
  }
}

describe.skipIf(!process.env.TEST_DATABASE_URL)("several service processes, one database (needs TEST_DATABASE_URL: PGlite is one process)", () => {
  let sim: Simulator;
  // user and key limits (global out of the way), and a second cluster for the global limit
  let a: Cluster | undefined;
  let g: Cluster | undefined;

  beforeAll(async () => {
    sim = await startSimulator({ perKeyLimit: 1_000_000, perAddressLimit: 1_000_000 });
    const [ra, rg] = await Promise.allSettled([
      startCluster(sim, 3, { RATE_LIMIT_HANDLE_CREATE: "10/min", RATE_LIMIT_KEY: "12/min", RATE_LIMIT_GLOBAL: "100000/min" }),
      startCluster(sim, 3, { RATE_LIMIT_HANDLE_CREATE: "100000/min", RATE_LIMIT_KEY: "100000/min", RATE_LIMIT_GLOBAL: "15/min" }),
    ]);
    if (ra.status === "fulfilled") a = ra.value;
    if (rg.status === "fulfilled") g = rg.value;
    if (ra.status === "rejected") throw ra.reason;
    if (rg.status === "rejected") throw rg.reason;
  }, 90_000);

  afterAll(async () => {
    await Promise.all([stopCluster(a), stopCluster(g)]);
    await sim?.close();
  }, 30_000);

  for (const n of [2, 3]) {
    it(`per user: 50 concurrent creates of one user over ${n} processes admit exactly 10 (10/min)`, async () => {
      const c = a!;
      const u = await member(c, n);
      await storeKey(c, u.token, sim);
      // another user with a key of their own: their quota is theirs
      const other = await member(c, n + 1);
      await storeKey(c, other.token, sim);

      const before = creates(sim);
      const rs = await burst(c, n, 50, () => ({ token: u.token }));
      expect(statusCounts(rs)).toEqual({ 200: 10, 429: 40 });
      expect(creates(sim) - before).toBe(10);
      expectRefusals(rs, "user");
      for (const r of rs.filter((x) => x.status === 200)) checkRateHeaders(r, { user: { q: 10, w: 60 }, key: { q: 12, w: 60 } }, ["user", "key", "global"]);
      // every process refuses this user now, and still serves the other one
      for (const p of c.procs.slice(0, n)) {
        expectRateLimited(await request(p.url, "POST", "/api/handle/create", { token: u.token, json: { handle: freshHandle() } }), "user");
      }
      const ok = await request(c.procs[n - 1]!.url, "POST", "/api/handle/create", { token: other.token, json: { handle: freshHandle() } });
      expect(ok.status, ok.text).toBe(200);
      expect(creates(sim) - before).toBe(11);
    });

    it(`per key: 45 concurrent creates by 3 grantees of one key over ${n} processes admit exactly 12 (12/min)`, async () => {
      const c = a!;
      const owner = await member(c, n);
      const keyId = await storeKey(c, owner.token, sim);
      const users = [await member(c, 0), await member(c, 1), await member(c, 2)];
      for (const [i, u] of users.entries()) {
        const gr = await request(c.procs[i % n]!.url, "POST", `/v1/keys/${keyId}/grants`, { token: owner.token, json: { username: u.username } });
        expect(gr.status, gr.text).toBe(201);
        // user limits out of the way for these three (an admin override, made on any process)
        const p = await request(c.procs[(i + 1) % n]!.url, "PATCH", `/v1/admin/users/${u.id}`, {
          token: c.adminToken,
          json: { rate_limits: { handle_create: "1000/min" } },
        });
        expect(p.status, p.text).toBe(200);
      }

      const before = creates(sim);
      // user floor(i/n) mod 3 on process i mod n: every user reaches every process
      const rs = await burst(c, n, 45, (i) => ({ token: users[Math.floor(i / n) % 3]!.token }));
      expect(statusCounts(rs)).toEqual({ 200: 12, 429: 33 });
      expect(creates(sim) - before).toBe(12);
      expectRefusals(rs, "key");
      for (const r of rs.filter((x) => x.status === 200)) checkRateHeaders(r, { user: { q: 1000, w: 60 }, key: { q: 12, w: 60 } }, ["user", "key", "global"]);

      // the key is spent for all its users, on every process; its owner's other key is not
      for (const [i, u] of users.entries()) {
        expectRateLimited(await request(c.procs[i % n]!.url, "POST", "/api/handle/create", { token: u.token, json: { handle: freshHandle() } }), "key");
      }
      const otherKey = await storeKey(c, owner.token, sim);
      const ok = await request(c.procs[n - 1]!.url, "POST", "/api/handle/create", {
        token: owner.token,
        json: { handle: freshHandle() },
        headers: { "x-key-id": otherKey },
      });
      expect(ok.status, ok.text).toBe(200);
      expect(creates(sim) - before).toBe(13);
    });
  }

  it("global: 45 concurrent creates by 3 users with 2 keys over 3 processes admit exactly 15 (15/min)", async () => {
    const c = g!;
    const users = [await member(c, 0), await member(c, 1), await member(c, 2)];
    await storeKey(c, users[0]!.token, sim);
    await storeKey(c, users[1]!.token, sim);
    // the third user uses the first user's key
    const keys = await request(c.procs[0]!.url, "GET", "/v1/keys", { token: users[0]!.token });
    const gr = await request(c.procs[1]!.url, "POST", `/v1/keys/${keys.json.keys[0].id}/grants`, { token: users[0]!.token, json: { username: users[2]!.username } });
    expect(gr.status, gr.text).toBe(201);

    // one admitted call first, to see the good case and the starting point
    const first = await request(c.procs[2]!.url, "POST", "/api/handle/create", { token: users[2]!.token, json: { handle: freshHandle() } });
    expect(first.status, first.text).toBe(200);
    expect(remaining(first, "global")).toBe(14);

    const before = creates(sim);
    const rs = await burst(c, 3, 45, (i) => ({ token: users[Math.floor(i / 3) % 3]!.token }));
    expect(statusCounts(rs)).toEqual({ 200: 14, 429: 31 });
    expect(creates(sim) - before).toBe(14);
    expectRefusals(rs, "global");
    for (const r of rs.filter((x) => x.status === 200)) checkRateHeaders(r, { user: { q: 100000, w: 60 }, global: { q: 15, w: 60 } }, ["user", "key", "global"]);
    // the admitted calls count down 13 … 0 without a gap or a repeat, across the processes
    expect(rs.filter((x) => x.status === 200).map((r) => remaining(r, "global")).sort((x, y) => x - y)).toEqual(
      Array.from({ length: 14 }, (_, i) => i),
    );
  });

  it("login throttling holds across processes: 30 concurrent failed logins of one account, exactly 10 checked (10/min)", async () => {
    const c = g!;
    // made without logging in: a successful login would spend one of the account's 10
    const username = uniqueName("m");
    const made = await request(c.procs[1]!.url, "POST", "/v1/admin/users", { token: c.adminToken, json: { username, password: `pw-${username}-long`, role: "member" } });
    expect(made.status, made.text).toBe(201);
    const rs = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        request(c.procs[i % 3]!.url, "POST", "/v1/auth/login", { json: { username, password: `wrong password ${i}` } }),
      ),
    );
    expect(statusCounts(rs)).toEqual({ 401: 10, 429: 20 });
    for (const r of rs.filter((x) => x.status === 429)) expectRateLimited(r, "login");
    for (const r of rs.filter((x) => x.status === 401)) expect(r.json.error).toBe("invalid_credentials");
    // another account still logs in, on any process
    await login(c.procs[2]!.url, ADMIN.username, ADMIN.password);
  });
});

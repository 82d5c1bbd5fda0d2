// The benchmarks' cast: the simulator (fast mode), the bare pass-through proxy and the service on
// a scratch database of the PostgreSQL server, with users, keys and grants, and the request sets
// that drive each of them. Shared by `npm run bench` and `npm run bench:profile`.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { Keyring } from "../src/crypto/keyring.js";
import type { Database } from "../src/db/client.js";
import { scratchDatabase } from "./db.js";

/** the service's METRICS_TOKEN in the benchmark (bench/profile.ts reads its /metrics) */
export const BENCH_METRICS_TOKEN = "bench-metrics-token-0123456789abcdef";
import { freePort, startChild, type Child } from "./processes.js";

export const USERS = 64;
export const KEYS = 16;
const tsx = ["--import", "tsx"];
/** node's flags for the service, as the Dockerfile's CMD and `npm start` give them (test/ops/dockerfile.test.ts keeps the three alike) */
export const SERVICE_NODE_FLAGS = ["--max-semi-space-size=16"];

export type Req = { method: string; path: string; headers: Record<string, string>; body: string };

export type Cast = {
  database: Database;
  sim: Child;
  bare: Child;
  svc: Child;
  adminToken: string;
  users: { id: string; username: string; password: string; token: string }[];
  keyIds: string[];
  apiKeys: string[];
  /** another process of the service on the same database and keyring (another instance) */
  startAnotherService(): Promise<Child>;
  /** the same 4,096 creates, addressed to each target */
  serviceReqs: Req[];
  bareReqs: Req[];
  directReqs: Req[];
  stop(): Promise<void>;
};

export async function json(url: string, path: string, init: { method?: string; token?: string; body?: unknown; from?: string } = {}) {
  const r = await fetch(url + path, {
    method: init.method ?? "GET",
    headers: {
      "content-type": "application/json",
      ...(init.token ? { authorization: `Bearer ${init.token}` } : {}),
      // Each user logs in from an address of their own (the service trusts one proxy hop here).
      ...(init.from ? { "x-forwarded-for": init.from } : {}),
    },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await r.text();
  if (r.status >= 300) throw new Error(`${init.method ?? "GET"} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/** Total CPU time (user + system, ms) a process has used so far. */
export function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in clock ticks (100 Hz)
}

export async function startCast(opts: { serviceEnv?: Record<string, string>; serviceArgs?: string[]; bareArgs?: string[] } = {}): Promise<Cast> {
  const { database, url: dbUrl, drop } = await scratchDatabase("full", 4);
  const children: Child[] = [];
  const stop = async () => {
    await Promise.all(children.map((c) => c.stop()));
    await drop();
  };
  try {
    const apiKeys = Array.from({ length: KEYS }, () => randomBytes(32).toString("hex"));
    const simPort = await freePort();
    const sim = await startChild(
      [...tsx, "bench/simulator.ts"],
      { PORT: String(simPort), SIM_KEYS: JSON.stringify(Object.fromEntries(apiKeys.map((k, i) => [k, `o${i}@example.com`]))) },
      `http://127.0.0.1:${simPort}`,
      "/",
    );
    children.push(sim);
    const barePort = await freePort();
    const bare = await startChild([...(opts.bareArgs ?? []), ...tsx, "bench/bare-proxy.ts"], { PORT: String(barePort), UPSTREAM: sim.url, API_KEY: apiKeys[0]! }, `http://127.0.0.1:${barePort}`);
    children.push(bare);
    const open = "999999999/min";
    const serviceEnv = {
      DATABASE_URL: dbUrl,
      VAULT_KEYRING: Keyring.generateEntry("bench"),
      HOST: "127.0.0.1",
      HALTMAN_BASE_URL: sim.url,
      BOOTSTRAP_ADMIN_USERNAME: "admin",
      BOOTSTRAP_ADMIN_PASSWORD: "bench-admin-password",
      RATE_LIMIT_HANDLE_CREATE: open,
      RATE_LIMIT_DOMAIN_ENABLE: open,
      RATE_LIMIT_KEY: open,
      RATE_LIMIT_GLOBAL: open,
      LOG_LEVEL: "info",
      TRUST_PROXY: "1",
      METRICS_TOKEN: BENCH_METRICS_TOKEN,
      // as `npm start` and the Dockerfile run it (see the Dockerfile for why)
      MALLOC_ARENA_MAX: "2",
      MALLOC_MMAP_THRESHOLD_: "131072",
      ...opts.serviceEnv,
    };
    const startService = async () => {
      const port = await freePort();
      const child = await startChild([...SERVICE_NODE_FLAGS, ...(opts.serviceArgs ?? []), "dist/index.js"], { ...serviceEnv, PORT: String(port) }, `http://127.0.0.1:${port}`, "/readyz");
      children.push(child);
      return child;
    };
    const svc = await startService();

    // Users and keys: each user may use exactly one key.
    const adminToken = (await json(svc.url, "/v1/auth/login", { method: "POST", body: { username: "admin", password: "bench-admin-password" } })).access_token as string;
    const keyIds: string[] = [];
    for (const [i, k] of apiKeys.entries()) keyIds.push((await json(svc.url, "/v1/keys", { method: "POST", token: adminToken, body: { name: `k${i}`, api_key: k } })).id);
    const users: Cast["users"] = [];
    for (let u = 0; u < USERS; u++) {
      const username = `user${u}`;
      const password = `password-of-${username}`;
      const { id } = await json(svc.url, "/v1/admin/users", { method: "POST", token: adminToken, body: { username, password, role: "member" } });
      await json(svc.url, `/v1/keys/${keyIds[u % KEYS]}/grants`, { method: "POST", token: adminToken, body: { username } });
      const token = (await json(svc.url, "/v1/auth/login", { method: "POST", body: { username, password }, from: `10.1.0.${u}` })).access_token;
      users.push({ id, username, password, token });
    }
    const body = (n: number) => JSON.stringify({ handle: `h${n}` });
    const serviceReqs: Req[] = Array.from({ length: 4096 }, (_, n) => ({
      method: "POST",
      path: "/api/handle/create",
      headers: { "content-type": "application/json", authorization: `Bearer ${users[n % USERS]!.token}` },
      body: body(n),
    }));
    const bareReqs: Req[] = serviceReqs.map((r, n) => ({ ...r, headers: { "content-type": "application/json" }, body: body(n) }));
    const directReqs: Req[] = serviceReqs.map((r, n) => ({ ...r, headers: { "content-type": "application/json", "x-api-key": apiKeys[n % KEYS]! }, body: body(n) }));
    return { database, sim, bare, svc, adminToken, users, keyIds, apiKeys, startAnotherService: startService, serviceReqs, bareReqs, directReqs, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

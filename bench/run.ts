// npm run bench — the whole proxied path beside a bare proxy, on this machine, in one run.
// Starts the simulator (fast mode), a bare node:http pass-through proxy and the service (on the
// PostgreSQL server of DATABASE_URL / TEST_DATABASE_URL), drives each with the same load
// (autocannon), prints one table and writes bench/RESULTS.md. A benchmark, not a test.
import autocannon from "autocannon";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { sql } from "drizzle-orm";
import { Keyring } from "../src/crypto/keyring.js";
import { rowsOf } from "../src/db/client.js";
import { percentile, scratchDatabase } from "./db.js";
import { freePort, startChild, type Child } from "./processes.js";

const DURATION = Number(process.env.BENCH_SECONDS ?? 10);
const USERS = 64;
const KEYS = 16;
const AUDIT_EVENTS = Number(process.env.BENCH_AUDIT_EVENTS ?? 1_000_000);
const tsx = ["--import", "tsx"];

type Load = { rps: number; p50: number; p99: number; non2xx: number; codes: Record<string, number>; total: number };

type Req = { method: string; path: string; headers: Record<string, string>; body: string };

async function drive(url: string, requests: Req[], opts: { connections: number; rate?: number; seconds?: number }): Promise<Load> {
  let i = 0;
  const codes: Record<string, number> = {};
  const result = await autocannon({
    url,
    connections: opts.connections,
    duration: opts.seconds ?? DURATION,
    ...(opts.rate ? { overallRate: opts.rate } : {}),
    requests: [
      {
        setupRequest: (req: Record<string, unknown>) => {
          const r = requests[i++ % requests.length]!;
          return { ...req, method: r.method, path: r.path, headers: r.headers, body: r.body };
        },
        onResponse: (status: number) => {
          codes[status] = (codes[status] ?? 0) + 1;
        },
      },
    ],
  } as unknown as autocannon.Options);
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    non2xx: result.non2xx,
    codes,
    total: result.requests.total,
  };
}

async function json(url: string, path: string, init: { method?: string; token?: string; body?: unknown; from?: string } = {}) {
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

const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : "-");

async function main() {
  const startedAt = new Date();
  const { database, url: dbUrl, drop } = await scratchDatabase("full", 4);
  const children: Child[] = [];
  const stopAll = () => Promise.all(children.map((c) => c.stop()));
  try {
    // --- the cast --------------------------------------------------------------------------
    const apiKeys = Array.from({ length: KEYS }, () => randomBytes(32).toString("hex"));
    const simPort = await freePort();
    const sim = await startChild([...tsx, "bench/simulator.ts"], { PORT: String(simPort), SIM_KEYS: JSON.stringify(Object.fromEntries(apiKeys.map((k, i) => [k, `o${i}@example.com`]))) }, `http://127.0.0.1:${simPort}`, "/");
    children.push(sim);
    const barePort = await freePort();
    const bare = await startChild([...tsx, "bench/bare-proxy.ts"], { PORT: String(barePort), UPSTREAM: sim.url, API_KEY: apiKeys[0]! }, `http://127.0.0.1:${barePort}`);
    children.push(bare);
    const svcPort = await freePort();
    const open = "999999999/min";
    const svc = await startChild(
      ["dist/index.js"],
      {
        DATABASE_URL: dbUrl,
        VAULT_KEYRING: Keyring.generateEntry("bench"),
        HOST: "127.0.0.1",
        PORT: String(svcPort),
        HALTMAN_BASE_URL: sim.url,
        BOOTSTRAP_ADMIN_USERNAME: "admin",
        BOOTSTRAP_ADMIN_PASSWORD: "bench-admin-password",
        RATE_LIMIT_HANDLE_CREATE: open,
        RATE_LIMIT_DOMAIN_ENABLE: open,
        RATE_LIMIT_KEY: open,
        RATE_LIMIT_GLOBAL: open,
        LOG_LEVEL: "info",
        TRUST_PROXY: "1",
        // as `npm start` and the Dockerfile run it (see the Dockerfile for why)
        MALLOC_ARENA_MAX: "2",
        MALLOC_MMAP_THRESHOLD_: "131072",
      },
      `http://127.0.0.1:${svcPort}`,
      "/readyz",
    );
    children.push(svc);

    // --- users and keys: each user may use exactly one key -----------------------------------
    const admin = (await json(svc.url, "/v1/auth/login", { method: "POST", body: { username: "admin", password: "bench-admin-password" } })).access_token as string;
    const keyIds: string[] = [];
    for (const [i, k] of apiKeys.entries()) keyIds.push((await json(svc.url, "/v1/keys", { method: "POST", token: admin, body: { name: `k${i}`, api_key: k } })).id);
    const users: { id: string; token: string }[] = [];
    for (let u = 0; u < USERS; u++) {
      const username = `user${u}`;
      const password = `password-of-${username}`;
      const { id } = await json(svc.url, "/v1/admin/users", { method: "POST", token: admin, body: { username, password, role: "member" } });
      await json(svc.url, `/v1/keys/${keyIds[u % KEYS]}/grants`, { method: "POST", token: admin, body: { username } });
      const token = (await json(svc.url, "/v1/auth/login", { method: "POST", body: { username, password }, from: `10.1.0.${u}` })).access_token;
      users.push({ id, token });
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

    // Warm-up: JIT, connection pools, bucket rows.
    for (const [u, reqs] of [[sim.url, directReqs], [bare.url, bareReqs], [svc.url, serviceReqs]] as const) await drive(u, reqs, { connections: 16, seconds: 3 });
    const eventsBefore = (await rowsOf<{ n: number }>(database.db, sql`select count(*)::int as n from audit_events where action = 'handle.create'`))[0]!.n;

    // --- throughput ------------------------------------------------------------------------
    const rows: { name: string; c32: Load; c64: Load; fixed: Load; rss: number }[] = [];
    let serviceAnswered = 0;
    for (const [name, target, reqs] of [
      ["direct to simulator", sim, directReqs],
      ["bare proxy", bare, bareReqs],
      ["haltman-bff", svc, serviceReqs],
    ] as const) {
      const c32 = await drive(target.url, reqs, { connections: 32 });
      const c64 = await drive(target.url, reqs, { connections: 64 });
      const fixed = await drive(target.url, reqs, { connections: 32, rate: 500 });
      if (target === svc) serviceAnswered = [c32, c64, fixed].reduce((s, l) => s + (l.codes["200"] ?? 0), 0);
      rows.push({ name, c32, c64, fixed, rss: target.peakRssMb() });
      process.stdout.write(`  ${name}: ${fmt(c32.rps)} / ${fmt(c64.rps)} req/s, codes ${JSON.stringify(c64.codes)}\n`);
    }

    // Every admitted request has its audit record and its outcome.
    const [audit] = await rowsOf<{ events: number; with_outcome: number }>(
      database.db,
      sql`select count(*)::int as events, count(o.event_id)::int as with_outcome
          from audit_events e left join audit_event_outcomes o on o.event_id = e.id
          where e.action = 'handle.create' and e.seq > 0`,
    );
    const auditOk = audit!.events - Number(eventsBefore) >= serviceAnswered && audit!.events === audit!.with_outcome;

    // --- a storm of 50 concurrent logins (argon2) against proxied p99 at 500 req/s ---------------
    const baseline = rows[2]!.fixed;
    const storm = (async () => {
      const until = Date.now() + DURATION * 1000;
      let n = 0;
      while (Date.now() < until) {
        await Promise.all(Array.from({ length: 50 }, (_, i) => fetch(svc.url + "/v1/auth/login", { method: "POST", headers: { "content-type": "application/json", "x-forwarded-for": `10.2.${n % 250}.${i}` }, body: JSON.stringify({ username: `user${i % USERS}`, password: `password-of-user${i % USERS}` }) }).then((r) => r.text())));
        n += 50;
      }
      return n;
    })();
    const duringStorm = await drive(svc.url, serviceReqs, { connections: 32, rate: 500 });
    const logins = await storm;

    // --- a flood from one user far over their limit ------------------------------------------
    await json(svc.url, `/v1/admin/users/${users[0]!.id}`, { method: "PATCH", token: admin, body: { rate_limits: { handle_create: "10/min" } } });
    const floodReqs = serviceReqs.filter((_, n) => n % USERS === 0);
    const othersReqs = serviceReqs.filter((_, n) => n % USERS !== 0);
    const [flood, others] = await Promise.all([drive(svc.url, floodReqs, { connections: 32 }), drive(svc.url, othersReqs, { connections: 16, rate: 500 })]);

    // --- audit queries over 1,000,000 events ------------------------------------------------------
    await database.db.execute(sql`insert into audit_events (id, at, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id, handle, ip)
      select gen_random_uuid(), now() - make_interval(secs => ${AUDIT_EVENTS} - g), 'seed-' || g, (array[${sql.raw(users.slice(0, 8).map((u) => `'${u.id}'::uuid`).join(","))}])[1 + g % 8],
             'user' || (g % 8), 'handle.create', 'success', ${keyIds[0]}::uuid, null, 'seed' || (g % 50000), '10.0.0.1'
      from generate_series(1, ${AUDIT_EVENTS}) g`);
    await database.db.execute(sql`analyze audit_events`);
    const since = new Date(Date.now() - 3600_000).toISOString();
    const until = new Date(Date.now() - 1800_000).toISOString();
    const queries = {
      actor: `/v1/audit?actor=${users[3]!.id}&limit=50`,
      handle: `/v1/audit?handle=seed1234&limit=50`,
      "time range": `/v1/audit?since=${since}&until=${until}&limit=50`,
    };
    const auditP95: Record<string, number> = {};
    for (const [name, path] of Object.entries(queries)) {
      const times: number[] = [];
      for (let i = 0; i < 60; i++) {
        const t0 = performance.now();
        await json(svc.url, path, { token: admin });
        times.push(performance.now() - t0);
      }
      auditP95[name] = percentile(times.slice(10).sort((a, b) => a - b), 95);
    }

    // --- the report -------------------------------------------------------------------------
    const [direct, bareRow, service] = rows as [typeof rows[0], typeof rows[0], typeof rows[0]];
    const ratio32 = service.c32.rps / bareRow.c32.rps;
    const ratio64 = service.c64.rps / bareRow.c64.rps;
    const addedP50 = service.fixed.p50 - direct.fixed.p50;
    const addedP99 = service.fixed.p99 - direct.fixed.p99;
    const table = [
      "| target | req/s c=32 | req/s c=64 | p50 ms @500/s | p99 ms @500/s | peak RSS MB |",
      "|---|---:|---:|---:|---:|---:|",
      ...rows.map((r) => `| ${r.name} | ${fmt(r.c32.rps)} | ${fmt(r.c64.rps)} | ${fmt(r.fixed.p50, 1)} | ${fmt(r.fixed.p99, 1)} | ${fmt(r.rss)} |`),
      `| service / bare proxy | ${fmt(ratio32, 2)} | ${fmt(ratio64, 2)} | | | |`,
    ].join("\n");
    const floodRefusedRps = (flood.codes["429"] ?? 0) / DURATION;
    const checks = [
      ["throughput ≥ 50% of the bare proxy", `${fmt(ratio32 * 100)}% (c=32), ${fmt(ratio64 * 100)}% (c=64)`, Math.min(ratio32, ratio64) >= 0.5],
      ["p50 added over direct at 500 req/s ≤ 2 ms", `${fmt(addedP50, 1)} ms`, addedP50 <= 2],
      ["p99 added over direct at 500 req/s ≤ 10 ms", `${fmt(addedP99, 1)} ms`, addedP99 <= 10],
      ["peak RSS < 256 MB", `${fmt(service.rss)} MB`, service.rss < 256],
      ["50 concurrent logins raise proxied p99 by ≤ 20 ms", `${fmt(baseline.p99, 1)} → ${fmt(duringStorm.p99, 1)} ms (${logins} logins)`, duringStorm.p99 - baseline.p99 <= 20],
      ["a flood is refused at ≥ the bare proxy's throughput", `${fmt(floodRefusedRps)} refusals/s vs ${fmt(bareRow.c32.rps)} req/s`, floodRefusedRps >= bareRow.c32.rps],
      ["others' p99 during the flood rises ≤ 5 ms", `${fmt(baseline.p99, 1)} → ${fmt(others.p99, 1)} ms`, others.p99 - baseline.p99 <= 5],
      ...Object.entries(auditP95).map(([k, v]) => [`GET /v1/audit by ${k} over ${AUDIT_EVENTS.toLocaleString("en")} events: p95 < 50 ms`, `${fmt(v, 1)} ms`, v < 50] as const),
      ["every admitted request has its audit record and outcome", `${audit!.events - Number(eventsBefore)} events for ${serviceAnswered} admitted; ${audit!.events - audit!.with_outcome} without outcome`, auditOk],
    ] as const;
    const checkTable = ["| target | measured | met |", "|---|---|---|", ...checks.map(([t, m, ok]) => `| ${t} | ${m} | ${ok ? "yes" : "**no**"} |`)].join("\n");
    const machine = `${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
    const report = `# Benchmark results\n\nRun of \`npm run bench\` on ${startedAt.toISOString().slice(0, 10)}: ${machine}; PostgreSQL on loopback; ${DURATION} s per load; ${USERS} users over ${KEYS} keys; simulator in fast mode; every process on the same cores.\n\n${table}\n\n${checkTable}\n`;
    process.stdout.write(`\n${report}\n`);
    const analysis = new URL("./ANALYSIS.md", import.meta.url);
    const withAnalysis = existsSync(analysis) ? `${report}\n${readFileSync(analysis, "utf8")}` : report;
    if (process.env.BENCH_WRITE !== "0") writeFileSync(new URL("./RESULTS.md", import.meta.url), withAnalysis);
  } finally {
    await stopAll();
    await drop();
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});

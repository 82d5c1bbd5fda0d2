// npm run bench — the whole proxied path beside a bare proxy, on this machine, in one run.
// Starts the simulator (fast mode), a bare node:http pass-through proxy and the service (on the
// PostgreSQL server of DATABASE_URL / TEST_DATABASE_URL), drives each with the same load
// (autocannon, bench/load.ts), prints one table and writes bench/RESULTS.md. A benchmark, not a test.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { sql } from "drizzle-orm";
import { rowsOf } from "../src/db/client.js";
import { json, KEYS, startCast, USERS } from "./cast.js";
import { besideLoginStorm, closedLoop, describeLogins, fixedRate, percentile, type Load } from "./load.js";

const DURATION = Number(process.env.BENCH_SECONDS ?? 10);
const AUDIT_EVENTS = Number(process.env.BENCH_AUDIT_EVENTS ?? 1_000_000);
const RATE = 500;

const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toFixed(d) : "-");
const ok = (l: Load) => l.codes["200"] ?? 0;

async function main() {
  const startedAt = new Date();
  const cast = await startCast();
  const { database, sim, bare, svc, users } = cast;
  try {
    // Warm-up: JIT, connection pools, bucket rows, the key choices each instance remembers (3 s
    // each; as long as a load when loads are shorter, as in CI's short run).
    for (const [u, reqs] of [[sim.url, cast.directReqs], [bare.url, cast.bareReqs], [svc.url, cast.serviceReqs]] as const) {
      await closedLoop(u, reqs, { connections: 32, seconds: Math.min(3, DURATION) });
    }
    const [{ seq: firstSeq }] = await rowsOf<{ seq: number }>(database.db, sql`select coalesce(max(seq), 0)::int as seq from audit_events`) as [{ seq: number }];
    let serviceAnswered = 0;

    // --- throughput (closed loop) and latency (fixed rate), each target the same ----------------
    const rows: { name: string; c32: Load; c64: Load; fixed: Load; rss: number }[] = [];
    for (const [name, target, reqs] of [
      ["direct to simulator", sim, cast.directReqs],
      ["bare proxy", bare, cast.bareReqs],
      ["haltman-bff", svc, cast.serviceReqs],
    ] as const) {
      const c32 = await closedLoop(target.url, reqs, { connections: 32, seconds: DURATION });
      const c64 = await closedLoop(target.url, reqs, { connections: 64, seconds: DURATION });
      const fixed = await fixedRate(target.url, reqs, { rate: RATE, seconds: DURATION });
      if (target === svc) serviceAnswered += ok(c32) + ok(c64) + ok(fixed);
      rows.push({ name, c32, c64, fixed, rss: target.peakRssMb() });
      process.stdout.write(`  ${name}: ${fmt(c32.rps)} / ${fmt(c64.rps)} req/s; at ${RATE}/s p50 ${fmt(fixed.p50, 2)} p99 ${fmt(fixed.p99, 2)} ms; codes ${JSON.stringify(c64.codes)}\n`);
    }
    const [direct, bareRow, service] = rows as [typeof rows[0], typeof rows[0], typeof rows[0]];

    // --- a storm of 50 concurrent logins (argon2) against proxied p99 at the fixed rate -------------
    const baseline = service.fixed;
    const { load: duringStorm, logins } = await besideLoginStorm(svc.url, USERS, () => fixedRate(svc.url, cast.serviceReqs, { rate: RATE, seconds: DURATION }));
    serviceAnswered += ok(duringStorm);

    // --- a flood from one user far over their limit, beside everyone else at the fixed rate -------
    await json(svc.url, `/v1/admin/users/${users[0]!.id}`, { method: "PATCH", token: cast.adminToken, body: { rate_limits: { handle_create: "10/min" } } });
    const floodReqs = cast.serviceReqs.filter((_, n) => n % USERS === 0);
    const othersReqs = cast.serviceReqs.filter((_, n) => n % USERS !== 0);
    const [flood, others] = await Promise.all([
      closedLoop(svc.url, floodReqs, { connections: 32, seconds: DURATION }),
      fixedRate(svc.url, othersReqs, { rate: RATE, seconds: DURATION }),
    ]);
    serviceAnswered += ok(flood) + ok(others);
    const floodRefusedRps = (flood.codes["429"] ?? 0) / flood.seconds;

    // --- every admitted call has its attempt and its outcome on record -----------------------------
    // Calls still in flight when a load generator stopped finish on their own: wait for quiet.
    type Tally = { attempts: number; success: number; refused: number; open: number };
    const tally = async () =>
      (await rowsOf<Tally>(
        database.db,
        // An event's outcome: its row in audit_event_outcomes, or its own (a refusal recorded at once).
        sql`select count(*)::int as attempts, count(*) filter (where coalesce(o.outcome, e.outcome) = 'success')::int as success,
              count(*) filter (where coalesce(o.outcome, e.outcome) = 'rate_limited')::int as refused,
              count(*) filter (where coalesce(o.outcome, e.outcome) is null)::int as open
            from audit_events e left join audit_event_outcomes o on o.event_id = e.id
            where e.action = 'handle.create' and e.seq > ${firstSeq}`,
      ))[0]!;
    let audit = await tally();
    for (let i = 0; i < 50 && audit.open > 0; i++) {
      await new Promise((r) => setTimeout(r, 200));
      audit = await tally();
    }
    const auditOk = audit.open === 0 && audit.success >= serviceAnswered;

    // --- audit queries over 1,000,000 events ---------------------------------------------------
    await database.db.execute(sql`insert into audit_events (id, at, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id, handle, ip)
      select gen_random_uuid(), now() - make_interval(secs => ${AUDIT_EVENTS} - g), 'seed-' || g, (array[${sql.raw(users.slice(0, 8).map((u) => `'${u.id}'::uuid`).join(","))}])[1 + g % 8],
             'user' || (g % 8), 'handle.create', 'success', ${cast.keyIds[0]}::uuid, null, 'seed' || (g % 50000), '10.0.0.1'
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
        await json(svc.url, path, { token: cast.adminToken });
        times.push(performance.now() - t0);
      }
      auditP95[name] = percentile(times.slice(10).sort((a, b) => a - b), 95);
    }

    // --- the report -------------------------------------------------------------------------
    const ratio32 = service.c32.rps / bareRow.c32.rps;
    const ratio64 = service.c64.rps / bareRow.c64.rps;
    const addedP50 = service.fixed.p50 - direct.fixed.p50;
    const addedP99 = service.fixed.p99 - direct.fixed.p99;
    const table = [
      `| target | req/s c=32 | req/s c=64 | p50 ms @${RATE}/s | p99 ms @${RATE}/s | peak RSS MB |`,
      "|---|---:|---:|---:|---:|---:|",
      ...rows.map((r) => `| ${r.name} | ${fmt(r.c32.rps)} | ${fmt(r.c64.rps)} | ${fmt(r.fixed.p50, 2)} | ${fmt(r.fixed.p99, 2)} | ${fmt(r.rss)} |`),
      `| service / bare proxy | ${fmt(ratio32, 2)} | ${fmt(ratio64, 2)} | | | |`,
    ].join("\n");
    const checks = [
      ["throughput ≥ 50% of the bare proxy", `${fmt(ratio32 * 100)}% (c=32), ${fmt(ratio64 * 100)}% (c=64)`, Math.min(ratio32, ratio64) >= 0.5],
      [`p50 added over direct at ${RATE} req/s ≤ 2 ms`, `${fmt(addedP50, 2)} ms`, addedP50 <= 2],
      [`p99 added over direct at ${RATE} req/s ≤ 10 ms`, `${fmt(addedP99, 2)} ms`, addedP99 <= 10],
      ["peak RSS < 256 MB", `${fmt(service.rss)} MB`, service.rss < 256],
      ["50 concurrent logins raise proxied p99 by ≤ 20 ms", `${fmt(baseline.p99, 2)} → ${fmt(duringStorm.p99, 2)} ms (${describeLogins(logins)})`, duringStorm.p99 - baseline.p99 <= 20],
      ["a flood is refused at ≥ the bare proxy's throughput", `${fmt(floodRefusedRps)} refusals/s vs ${fmt(bareRow.c32.rps)} req/s`, floodRefusedRps >= bareRow.c32.rps],
      ["others' p99 during the flood rises ≤ 5 ms", `${fmt(baseline.p99, 2)} → ${fmt(others.p99, 2)} ms`, others.p99 - baseline.p99 <= 5],
      ...Object.entries(auditP95).map(([k, v]) => [`GET /v1/audit by ${k} over ${AUDIT_EVENTS.toLocaleString("en")} events: p95 < 50 ms`, `${fmt(v, 1)} ms`, v < 50] as const),
      [
        "every admitted request has its audit record and outcome",
        `${audit.success} successes on record for ${serviceAnswered} answered 200 in the measured seconds (the fixed-rate loads' warm-up seconds, ${RATE} calls each, are on record and not counted as answered; ${audit.attempts} calls recorded, ${audit.refused} refused); ${audit.open} without outcome`,
        auditOk,
      ],
    ] as const;
    const checkTable = ["| target | measured | met |", "|---|---|---|", ...checks.map(([t, m, met]) => `| ${t} | ${m} | ${met ? "yes" : "**no**"} |`)].join("\n");
    const machine = `${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
    let commit = "";
    try {
      commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
    } catch {
      // not a checkout
    }
    const report =
      `# Benchmark results\n\nRun of \`npm run bench\` on ${startedAt.toISOString().slice(0, 10)}${commit ? ` (commit \`${commit}\`)` : ""}: ${machine}; ` +
      `PostgreSQL on loopback; ${DURATION} s per load; ${USERS} users over ${KEYS} keys; simulator in fast mode; every process on the same cores. ` +
      `Closed loop: autocannon connections each sending as soon as answered. Fixed rate: ${RATE} requests a second evenly spaced (bench/load.ts says how).\n\n${table}\n\n${checkTable}\n`;
    process.stdout.write(`\n${report}\n`);
    const analysis = new URL("./ANALYSIS.md", import.meta.url);
    const withAnalysis = existsSync(analysis) ? `${report}\n${readFileSync(analysis, "utf8")}` : report;
    if (process.env.BENCH_WRITE !== "0") writeFileSync(new URL("./RESULTS.md", import.meta.url), withAnalysis);
    // A target missed is a figure to report; an admitted call missing from the audit log is a
    // broken guarantee: the run fails (CI's short run of this bench relies on it).
    if (!auditOk) {
      process.stderr.write("FAILED: an admitted call has no audit record or no outcome (the check's row above)\n");
      process.exitCode = 1;
    }
  } finally {
    await cast.stop();
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});

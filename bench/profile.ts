// npm run bench:profile -- <target> <mode> [connections|rate] — one load against one target with the
// CPU each process spent (and the service's threads, and its grouped statements from /metrics), to
// see where the time goes. A development tool; `npm run bench` is the benchmark of record.
//   target: direct | bare | service; flood (one user over their limit: the cost of a refusal);
//   storm (`storm rate [500]`: proxied calls at that rate alone, then beside a login storm); ratio
//   (`ratio closed [64]`: bare and service alternated, taking turns at going first, their ratio
//   without the machine's drift between two runs); framework (likewise, the bare proxy against
//   itself on Hono, bench/hono-proxy.ts). mode: closed | rate; the level defaults to 32 connections or 500/s.
//   SERVICE_INSTANCES=n (ratio) runs n processes of the service on the one database, the
//   connections shared out among them. REPS=n repeats the load; BENCH_SECONDS sets its length;
//   BENCH_LOG_LEVEL the service's LOG_LEVEL (info: an access line a request, as deployed);
//   BENCH_TRACE=file writes each fixed-rate request's [ms since the start, latency ms] there
//   (where in the run the slow ones fall).
//   PROFILE_SERVICE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" passes node flags to the service,
//   PROFILE_BARE_ARGS to the bare proxy.
//   PROFILE_HOOK='perf record -g -p $SVC_PID -- sleep 3' runs a command 2 s into the load
//   ($SVC_PID, $BARE_PID, $PG_PIDS are set).
import { execFile, execFileSync } from "node:child_process";
import { BENCH_METRICS_TOKEN, cpuMs, json, startCast, USERS } from "./cast.js";
import { besideLoginStorm, closedLoop, describeLogins, fixedRate } from "./load.js";
import { freePort, startChild, type Child } from "./processes.js";

const [target = "service", mode = "closed", levelArg] = process.argv.slice(2);
// storm always runs at a fixed rate; ratio and framework always in a closed loop
const fixedMode = target === "storm" ? "rate" : target === "ratio" || target === "framework" ? "closed" : undefined;
if (fixedMode && mode !== fixedMode) {
  process.stderr.write(`${target} runs ${fixedMode === "rate" ? "at a fixed rate" : "in a closed loop"}: \`${target} ${fixedMode} [${fixedMode === "rate" ? "rate" : "connections"}]\`\n`);
  process.exit(2);
}
const level = levelArg ?? (mode === "rate" ? "500" : target === "ratio" || target === "framework" ? "64" : "32");
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);

function postgresPids(): number[] {
  try {
    return execFileSync("pgrep", ["-u", "postgres"], { encoding: "utf8" }).trim().split("\n").map(Number).filter(Boolean);
  } catch {
    return [];
  }
}
import { readdirSync, readFileSync } from "node:fs";
function threads(pid: number): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${t}/comm`, "utf8").trim();
      const f = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8").split(") ")[1]!.split(" ");
      m.set(`${name}#${t}`, (Number(f[11]) + Number(f[12])) * 10);
    } catch {}
  }
  return m;
}
/** From the service's /metrics: db_group_* sums and counts by statement; session checks by answer. */
async function serviceMetrics(url: string): Promise<{ groups: Map<string, { n: number; items: number; seconds: number }>; sessionChecks: Map<string, number> }> {
  const text = await (await fetch(url + "/metrics", { headers: { authorization: `Bearer ${BENCH_METRICS_TOKEN}` } })).text();
  const m = new Map<string, { n: number; items: number; seconds: number }>();
  const sessionChecks = new Map<string, number>();
  for (const line of text.split("\n")) {
    const c = /^session_checks_total\{answer="([^"]+)"\} (\S+)/.exec(line);
    if (c) sessionChecks.set(c[1]!, Number(c[2]));
    const r = /^db_group_(size|duration_seconds)_(sum|count)\{statement="([^"]+)"\} (\S+)/.exec(line);
    if (!r) continue;
    const e = m.get(r[3]!) ?? { n: 0, items: 0, seconds: 0 };
    if (r[1] === "size" && r[2] === "count") e.n = Number(r[4]);
    if (r[1] === "size" && r[2] === "sum") e.items = Number(r[4]);
    if (r[1] === "duration_seconds" && r[2] === "sum") e.seconds = Number(r[4]);
    m.set(r[3]!, e);
  }
  return { groups: m, sessionChecks };
}
const sum = (pids: number[]) => pids.reduce((s, p) => { try { return s + cpuMs(p); } catch { return s; } }, 0);

async function main() {
  const stopAlso: Child[] = [];
  const nodeArgs = (v: string | undefined) => (v ?? "").split(" ").filter(Boolean);
  const cast = await startCast({
    serviceArgs: nodeArgs(process.env.PROFILE_SERVICE_ARGS),
    bareArgs: nodeArgs(process.env.PROFILE_BARE_ARGS),
    // the benchmark of record (run.ts) always logs as deployed; here the access line can be measured
    serviceEnv: process.env.BENCH_LOG_LEVEL ? { LOG_LEVEL: process.env.BENCH_LOG_LEVEL } : {},
  });
  try {
    if (target === "ratio" || target === "framework") {
      // X / bare proxy, alternated, so that the machine's drift hits both alike: X is the service,
      // or (framework) the bare proxy itself on Hono and @hono/node-server
      const c = Number(level);
      // SERVICE_INSTANCES=n: n processes of the service on the one database, the connections
      // shared out among them (what more instances on the same cores buy)
      const instances = [cast.svc];
      const wanted = target === "ratio" ? Number(process.env.SERVICE_INSTANCES ?? 1) : 1;
      for (let n = 1; n < wanted; n++) instances.push(await cast.startAnotherService());
      let other: { name: string; url: string | string[]; reqs: typeof cast.serviceReqs; pids: number[] } = {
        name: instances.length > 1 ? `service x${instances.length}` : "service",
        url: instances.map((i) => i.url),
        reqs: cast.serviceReqs,
        pids: instances.map((i) => i.pid),
      };
      if (target === "framework") {
        const port = await freePort();
        const hono = await startChild(["--import", "tsx", "bench/hono-proxy.ts"], { PORT: String(port), UPSTREAM: cast.sim.url, API_KEY: cast.apiKeys[0]! }, `http://127.0.0.1:${port}`);
        stopAlso.push(hono);
        other = { name: "bare on hono", url: hono.url, reqs: cast.bareReqs, pids: [hono.pid] };
      }
      await closedLoop(cast.bare.url, cast.bareReqs, { connections: c, seconds: 2 });
      await closedLoop(other.url, other.reqs, { connections: c, seconds: 3 });
      const ratios: number[] = [];
      const bare = () => closedLoop(cast.bare.url, cast.bareReqs, { connections: c, seconds: SECONDS });
      // X's load, with the CPU its processes and PostgreSQL spent on it
      const measured = async () => {
        const cpuBefore = sum(other.pids);
        const pgBefore = sum(postgresPids());
        const load = await closedLoop(other.url, other.reqs, { connections: c, seconds: SECONDS });
        return { load, cpuMs: sum(other.pids) - cpuBefore, pgMs: sum(postgresPids()) - pgBefore };
      };
      for (let rep = 0; rep < Number(process.env.REPS ?? 3); rep++) {
        // Which load goes first alternates from pair to pair: on this VM the first (or, in another
        // phase, the second) run of a pair was measured faster, whichever load it was.
        const bareFirst = rep % 2 === 0;
        const bareBefore = bareFirst ? await bare() : undefined;
        const m = await measured();
        const b = bareBefore ?? (await bare());
        const v = m.load;
        const perCall = (ms: number) => ((ms * 1000) / v.total).toFixed(0);
        ratios.push(v.rps / b.rps);
        process.stdout.write(
          `c=${c}${bareFirst ? "" : `, ${other.name} first`}: bare ${b.rps.toFixed(0)}, ${other.name} ${v.rps.toFixed(0)} req/s, ratio ${(v.rps / b.rps).toFixed(3)}; ` +
            `a call: ${other.name} ${perCall(m.cpuMs)} µs, postgres ${perCall(m.pgMs)} µs of CPU\n`,
        );
      }
      if (target === "ratio") process.stdout.write(`peak RSS: ${instances.map((i) => `${i.peakRssMb().toFixed(0)} MB`).join(" + ")}\n`);
      process.stdout.write(`median ratio ${[...ratios].sort((x, y) => x - y)[Math.floor(ratios.length / 2)]!.toFixed(3)}\n`);
      return;
    }
    if (target === "storm") {
      // proxied calls at the fixed rate, alone and then beside a login storm (bench/load.ts)
      const rate = Number(level);
      await fixedRate(cast.svc.url, cast.serviceReqs, { rate, seconds: 3 });
      for (let rep = 0; rep < Number(process.env.REPS ?? 1); rep++) {
        const alone = await fixedRate(cast.svc.url, cast.serviceReqs, { rate, seconds: SECONDS });
        const { load: beside, logins } = await besideLoginStorm(cast.svc.url, USERS, () => fixedRate(cast.svc.url, cast.serviceReqs, { rate, seconds: SECONDS }));
        process.stdout.write(`at ${rate}/s: p50 ${alone.p50.toFixed(2)} -> ${beside.p50.toFixed(2)} ms, p99 ${alone.p99.toFixed(2)} -> ${beside.p99.toFixed(2)} ms beside ${describeLogins(logins)}\n`);
      }
      return;
    }
    if (target === "flood") {
      // one user far over their own limit: what a refusal costs
      await json(cast.svc.url, `/v1/admin/users/${cast.users[0]!.id}`, { method: "PATCH", token: cast.adminToken, body: { rate_limits: { handle_create: "10/min" } } });
    }
    const [url, reqs] = target === "flood" ? [cast.svc.url, cast.serviceReqs.filter((_, n) => n % USERS === 0)] : target === "direct" ? [cast.sim.url, cast.directReqs] : target === "bare" ? [cast.bare.url, cast.bareReqs] : [cast.svc.url, cast.serviceReqs];
    const drive = () => (mode === "rate" ? fixedRate(url, reqs, { rate: Number(level), seconds: SECONDS }) : closedLoop(url, reqs, { connections: Number(level), seconds: SECONDS }));
    await (mode === "rate" ? fixedRate(url, reqs, { rate: Number(level), seconds: 3 }) : closedLoop(url, reqs, { connections: Number(level), seconds: 3 }));
    const procs = { simulator: cast.sim.pid, bare: cast.bare.pid, service: cast.svc.pid };
    const reps = Number(process.env.REPS ?? 1);
    const rates: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
    const before = Object.fromEntries(Object.entries(procs).map(([k, p]) => [k, cpuMs(p)]));
    const pgBefore = sum(postgresPids());
    const thrBefore = threads(cast.svc.pid);
    const groupsBefore = await serviceMetrics(cast.svc.url);
    const selfBefore = process.cpuUsage();
    const t0 = performance.now();
    const hook = process.env.PROFILE_HOOK
      ? new Promise<void>((resolve) =>
          setTimeout(() => {
            execFile("bash", ["-c", process.env.PROFILE_HOOK!], { encoding: "utf8", env: { ...process.env, SVC_PID: String(cast.svc.pid), BARE_PID: String(cast.bare.pid), PG_PIDS: postgresPids().join(",") } }, (err, out, errOut) => {
              process.stdout.write(out + errOut + (err ? `hook: ${err.message}\n` : ""));
              resolve();
            });
          }, 2000),
        )
      : Promise.resolve();
    const load = await drive();
    await hook;
    const wall = performance.now() - t0;
    const self = process.cpuUsage(selfBefore);
    const thrAfter = threads(cast.svc.pid);
    const perThread = [...thrAfter].map(([k, v]) => [k.split("#")[0], (v - (thrBefore.get(k) ?? 0)) / wall] as const).filter(([, v]) => v > 0.005);
    const groupsAfter = await serviceMetrics(cast.svc.url);
    for (const [k, v] of groupsAfter.groups) {
      const b = groupsBefore.groups.get(k) ?? { n: 0, items: 0, seconds: 0 };
      const n = v.n - b.n;
      if (n > 0) process.stdout.write(`  ${k}: ${n} groups, ${((v.items - b.items) / n).toFixed(1)} calls each, ${(((v.seconds - b.seconds) / n) * 1000).toFixed(2)} ms each\n`);
    }
    for (const [answer, total] of groupsAfter.sessionChecks) {
      const n = total - (groupsBefore.sessionChecks.get(answer) ?? 0);
      if (n > 0) process.stdout.write(`  session checks answered from ${answer}: ${n}\n`);
    }
    process.stdout.write(`service threads (cores): ${perThread.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")}\n`);
    const cpu: Record<string, number> = Object.fromEntries(Object.entries(procs).map(([k, p]) => [k, (cpuMs(p) - before[k]!) / wall]));
    cpu.postgres = (sum(postgresPids()) - pgBefore) / wall;
    cpu.loadgen = (self.user + self.system) / 1000 / wall;
    process.stdout.write(`${target} ${mode} ${level}: ${load.rps.toFixed(0)} req/s, p50 ${load.p50.toFixed(2)} ms, p99 ${load.p99.toFixed(2)} ms, codes ${JSON.stringify(load.codes)}, errors ${load.errors}\n`);
    process.stdout.write(`cores used: ${Object.entries(cpu).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")}\n`);
    if (load.total > 0) process.stdout.write(`CPU per request: ${Object.entries(cpu).map(([k, v]) => `${k} ${((v * wall * 1000) / load.total).toFixed(0)} µs`).join(", ")}\n`);
    rates.push(load.rps);
    }
    if (reps > 1) process.stdout.write(`median ${[...rates].sort((a, b) => a - b)[Math.floor(reps / 2)]!.toFixed(0)} req/s over ${reps}: ${rates.map((r) => r.toFixed(0)).join(" ")}\n`);
  } finally {
    await Promise.all(stopAlso.map((c) => c.stop()));
    await cast.stop();
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});

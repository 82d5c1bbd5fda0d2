// npm run bench:ratelimit — the limiter alone, as a proxied call asks it: user, key and global
// buckets decided together, against the PostgreSQL server. Prints decisions/s and latency at 1,
// 16 and 64 concurrent callers. A benchmark, not a test: it prints figures and checks exactness.
import { cpus } from "node:os";
import { parseRatePolicy } from "../src/config.js";
import { createLimiter, type Bucket } from "../src/services/rate-limit.js";
import { percentile, scratchDatabase } from "./db.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const LEVELS = [1, 16, 64];
const USERS = 500;
const KEYS = 50;
const open = parseRatePolicy("999999999/min")!;

async function main() {
  const { database, drop } = await scratchDatabase("rl", 10);
  const limiter = createLimiter({ query: database.lane("rate_limit_decide") });
  const buckets = (i: number): Bucket[] => [
    { name: "user", key: `user:${i % USERS}:handle_create`, policy: open },
    { name: "key", key: `key:${i % KEYS}:create`, policy: open },
    { name: "global", key: "global", policy: open },
  ];
  // Warm-up: create the bucket rows and the function's plan.
  await Promise.all(Array.from({ length: USERS }, (_, i) => limiter.decide(buckets(i))));

  const rows: string[][] = [];
  for (const callers of LEVELS) {
    const latencies: number[] = [];
    const until = performance.now() + SECONDS * 1000;
    let n = 0;
    await Promise.all(
      Array.from({ length: callers }, async (_, c) => {
        for (let i = c; performance.now() < until; i += callers) {
          const t0 = performance.now();
          const d = await limiter.decide(buckets(i), { pauses: ["global", `key:${i % KEYS}:create`] });
          latencies.push(performance.now() - t0);
          if (!d.allowed) throw new Error("the open policy refused a call");
          n++;
        }
      }),
    );
    latencies.sort((a, b) => a - b);
    rows.push([String(callers), String(Math.round(n / SECONDS)), percentile(latencies, 50).toFixed(2), percentile(latencies, 99).toFixed(2)]);
  }

  // Exactness under the same grouping: 200 concurrent calls on a 10/min bucket admit exactly 10.
  const tight = parseRatePolicy("10/min")!;
  const burst = await Promise.all(Array.from({ length: 200 }, () => limiter.decide([{ name: "user", key: "user:exact", policy: tight }, { name: "global", key: "global", policy: open }])));
  const admitted = burst.filter((d) => d.allowed).length;

  await drop();
  const header = ["callers", "decisions/s", "p50 ms", "p99 ms"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => "| " + cells.map((c, i) => c.padStart(widths[i]!)).join(" | ") + " |";
  process.stdout.write(`\nrate limiter: user + key + global per decision, PostgreSQL, ${cpus().length} cores, ${SECONDS} s per level\n`);
  process.stdout.write([line(header), "|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|", ...rows.map(line)].join("\n") + "\n");
  process.stdout.write(`exactness: 200 concurrent calls on a 10/min bucket admitted ${admitted} (expected 10)\n`);
  if (admitted !== 10) process.exit(1);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});

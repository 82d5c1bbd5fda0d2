// Load generation for the benchmarks, with autocannon as a library.
//
// Closed loop (`closedLoop`): N connections, each sending its next request as soon as the last is
// answered: the most a target can serve.
//
// Fixed rate (`fixedRate`): requests evenly spaced in time, independent of the answers. autocannon
// cannot do that: its `overallRate` makes each connection send its share of a second back to back
// when the second starts, then wait (lib/httpClient.js, `reqsMadeThisSecond`), so "500 req/s over
// 32 connections" is a 32-wide burst every second and its latencies are the burst's. 500
// one-connection autocannon instances started 2 ms apart were tried: spaced right, but they cost
// the generator 0.5 to 1 ms of CPU a request (each instance's own timers and summaries), on the
// two cores the measured processes share, and one run in three came out 10x slower for it. So the
// fixed rate is an open loop over undici (the upstream client's library), a request every 2 ms.
//
// Closed-loop latencies are taken from each response as autocannon measures it (process.hrtime,
// fractions of a millisecond), not from its histograms, which keep whole milliseconds.
import autocannon from "autocannon";
import { Pool } from "undici";
import type { Req } from "./cast.js";

export type Load = {
  rps: number;
  p50: number;
  p99: number;
  /** answers by status */
  codes: Record<string, number>;
  total: number;
  errors: number;
  seconds: number;
};

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

type Run = { instance: autocannon.Instance; done: Promise<autocannon.Result> };

function start(url: string, requests: Req[], opts: autocannon.Options, latencies: number[], codes: Record<string, number>): Run {
  let i = 0;
  let resolve!: (r: autocannon.Result) => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<autocannon.Result>((res, rej) => ((resolve = res), (reject = rej)));
  const instance = autocannon(
    {
      ...opts,
      url,
      requests: [
        {
          setupRequest: (req: Record<string, unknown>) => {
            const r = requests[i % requests.length]!;
            i++;
            return { ...req, method: r.method, path: r.path, headers: r.headers, body: r.body };
          },
        },
      ],
    } as unknown as autocannon.Options,
    (err, result) => (err ? reject(err) : resolve(result)),
  );
  instance.on("response", (_client: unknown, status: number, _bytes: number, ms: number) => {
    codes[status] = (codes[status] ?? 0) + 1;
    latencies.push(ms);
  });
  return { instance, done };
}

function summarise(latencies: number[], codes: Record<string, number>, seconds: number, errors: number): Load {
  const sorted = Float64Array.from(latencies).sort();
  const total = Object.values(codes).reduce((a, b) => a + b, 0);
  return { rps: total / seconds, p50: percentile(sorted, 50), p99: percentile(sorted, 99), codes, total, errors, seconds };
}

/**
 * `connections` connections, each sending back to back, for `seconds`. Given several URLs (instances
 * of one service), the connections are shared out among them, as a layer-4 balancer would.
 */
export async function closedLoop(url: string | string[], requests: Req[], opts: { connections: number; seconds: number }): Promise<Load> {
  const urls = typeof url === "string" ? [url] : url;
  const latencies: number[] = [];
  const codes: Record<string, number> = {};
  const t0 = performance.now();
  const runs = urls
    .map((u, i) => ({ u, connections: Math.floor(opts.connections / urls.length) + (i < opts.connections % urls.length ? 1 : 0) }))
    .filter((r) => r.connections > 0) // more URLs than connections: the rest get none
    .map((r) => start(r.u, requests, { url: r.u, connections: r.connections, duration: opts.seconds } as autocannon.Options, latencies, codes));
  const results = await Promise.all(runs.map((r) => r.done));
  return summarise(latencies, codes, (performance.now() - t0) / 1000, results.reduce((n, r) => n + r.errors + r.timeouts, 0));
}

/**
 * `rate` requests a second, evenly spaced, for `seconds`: an open loop (each request leaves at its
 * time, whatever the answers), through an undici Pool with enough connections that none waits for
 * another. Latency counts from the request's scheduled time (or its sending, when the timer let it
 * go early), so a late start (the generator itself busy) counts against the measurement rather
 * than hiding in it.
 */
export async function fixedRate(url: string, requests: Req[], opts: { rate: number; seconds: number }): Promise<Load> {
  const pool = new Pool(url, { connections: 256, pipelining: 1, keepAliveTimeout: 30_000 });
  const codes: Record<string, number> = {};
  const latencies: number[] = [];
  let errors = 0;
  const gap = 1000 / opts.rate;
  const total = Math.round(opts.rate * opts.seconds);
  const warm = Math.min(total, opts.rate); // the first second opens the connections: not measured
  const inFlight: Promise<void>[] = [];
  const t0 = performance.now() + 50;
  const trace: [number, number][] | undefined = process.env.BENCH_TRACE ? [] : undefined;
  for (let k = 0; k < warm + total; k++) {
    const due = t0 + k * gap;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const r = requests[k % requests.length]!;
    const sent = Math.min(due, performance.now()); // late: from when it was due; early: from its sending
    inFlight.push(
      pool
        .request({ path: r.path, method: r.method as "POST", headers: r.headers, body: r.body })
        .then(async (res) => {
          await res.body.dump();
          if (k < warm) return;
          codes[res.statusCode] = (codes[res.statusCode] ?? 0) + 1;
          latencies.push(performance.now() - sent);
          trace?.push([sent - t0, performance.now() - sent]);
        })
        .catch(() => {
          if (k >= warm) errors++;
        }),
    );
  }
  await Promise.all(inFlight);
  await pool.close();
  if (trace) (await import("node:fs")).writeFileSync(process.env.BENCH_TRACE!, JSON.stringify(trace));
  return summarise(latencies, codes, opts.seconds, errors);
}

/**
 * A login storm: 50 logins at once (argon2 each), the next 50 as soon as those are answered, until
 * stopped. Each round comes from addresses of its own (the per-address throttle); users repeat
 * every round, so a run of more than ~10 rounds a minute meets the per-account throttle, whose
 * 429s are counted apart. `stop()` resolves with the answers by status (a failed request: "error").
 */
function loginStorm(url: string, users: number, width = 50): { stop(): Promise<Record<string, number>> } {
  let on = true;
  const codes: Record<string, number> = {};
  const count = (k: string) => (codes[k] = (codes[k] ?? 0) + 1);
  const done = (async () => {
    for (let round = 0; on; round++) {
      await Promise.all(
        Array.from({ length: width }, (_, i) =>
          fetch(url + "/v1/auth/login", {
            method: "POST",
            headers: { "content-type": "application/json", "x-forwarded-for": `10.2.${round % 250}.${i}` },
            body: JSON.stringify({ username: `user${i % users}`, password: `password-of-user${i % users}` }),
          }).then(
            async (r) => {
              await r.text();
              count(String(r.status));
            },
            () => count("error"),
          ),
        ),
      );
    }
    return codes;
  })();
  return {
    stop() {
      on = false;
      return done;
    },
  };
}

/** `fn`'s load run beside a login storm, and the storm's answers; the storm stops even if `fn` fails. */
export async function besideLoginStorm<T>(url: string, users: number, fn: () => Promise<T>): Promise<{ load: T; logins: Record<string, number> }> {
  const storm = loginStorm(url, users);
  let load: T;
  let logins: Record<string, number>;
  try {
    load = await fn();
  } finally {
    logins = await storm.stop();
  }
  return { load, logins };
}

/** "300 logins" or "250 logins, 50 answered 429": what a storm's answers were. */
export function describeLogins(codes: Record<string, number>): string {
  const others = Object.entries(codes).filter(([k]) => k !== "200");
  return `${codes["200"] ?? 0} logins${others.map(([k, n]) => `, ${n} answered ${k}`).join("")}`;
}

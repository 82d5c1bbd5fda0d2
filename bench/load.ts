// Load generation for the benchmarks, with autocannon as a library.
//
// Closed loop (`closedLoop`): N connections, each sending its next request as soon as the last is
// answered: the most a target can serve.
//
// Fixed rate (`fixedRate`): requests evenly spaced in time, independent of the answers. autocannon's
// own `overallRate` does not do that: each connection sends its share of a second back to back
// when the second starts, then waits (lib/httpClient.js, `reqsMadeThisSecond`), so "500 req/s over
// 32 connections" is a 32-wide burst every second, and its latencies are those of the burst. Here
// the rate is made of `rate` autocannon instances of one connection and one request a second each,
// started 1/rate s apart: one request every 2 ms at 500 req/s, as independent clients would send.
//
// Latencies are taken from each response as autocannon measures it (process.hrtime, fractions of
// a millisecond), not from its histograms, which keep whole milliseconds.
import autocannon from "autocannon";
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

/** Each answer's latency (ms), and when it came (performance.now()). */
type Samples = { ms: number[]; at: number[] };

function start(url: string, requests: Req[], first: number, stride: number, opts: autocannon.Options, samples: Samples, codes: Record<string, number>): Run {
  let i = first;
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
            i += stride;
            return { ...req, method: r.method, path: r.path, headers: r.headers, body: r.body };
          },
        },
      ],
    } as unknown as autocannon.Options,
    (err, result) => (err ? reject(err) : resolve(result)),
  );
  instance.on("response", (_client: unknown, status: number, _bytes: number, ms: number) => {
    codes[status] = (codes[status] ?? 0) + 1;
    samples.ms.push(ms);
    samples.at.push(performance.now());
  });
  return { instance, done };
}

function summarise(latencies: number[], codes: Record<string, number>, seconds: number, errors: number): Load {
  const sorted = Float64Array.from(latencies).sort();
  const total = Object.values(codes).reduce((a, b) => a + b, 0);
  return { rps: total / seconds, p50: percentile(sorted, 50), p99: percentile(sorted, 99), codes, total, errors, seconds };
}

/** `connections` connections, each sending back to back, for `seconds`. */
export async function closedLoop(url: string, requests: Req[], opts: { connections: number; seconds: number }): Promise<Load> {
  const samples: Samples = { ms: [], at: [] };
  const codes: Record<string, number> = {};
  const t0 = performance.now();
  const run = start(url, requests, 0, 1, { url, connections: opts.connections, duration: opts.seconds } as autocannon.Options, samples, codes);
  const result = await run.done;
  return summarise(samples.ms, codes, (performance.now() - t0) / 1000, result.errors + result.timeouts);
}

/** `rate` requests a second, evenly spaced, for `seconds`. */
export async function fixedRate(url: string, requests: Req[], opts: { rate: number; seconds: number }): Promise<Load> {
  const samples: Samples = { ms: [], at: [] };
  const codes: Record<string, number> = {};
  const runs: Run[] = [];
  const gapMs = 1000 / opts.rate;
  const t0 = performance.now();
  for (let k = 0; k < opts.rate; k++) {
    // Start instance k at k·gap: a busy-wait-free schedule that tolerates timer lateness.
    const due = t0 + k * gapMs;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    runs.push(start(url, requests, k, opts.rate, { url, connections: 1, connectionRate: 1, duration: opts.seconds + 1 } as autocannon.Options, samples, codes));
  }
  // Measured: from a second after the last instance started (their set-up costs the generator
  // about 2 ms each, and each first request opens a connection) until the first one ends (an
  // ending instance computes its own summary, which would delay the others' answers).
  const from = performance.now() + 1000;
  const to = t0 + (opts.seconds + 1) * 1000;
  const results = await Promise.all(runs.map((r) => r.done));
  const errors = results.reduce((s, r) => s + r.errors + r.timeouts, 0);
  const kept = samples.ms.filter((_, i) => samples.at[i]! >= from && samples.at[i]! < to);
  const load = summarise(kept, codes, Math.max(0.001, (to - from) / 1000), errors);
  return { ...load, rps: kept.length / ((to - from) / 1000) };
}

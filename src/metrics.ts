// Prometheus metrics. One registry per app instance (tests build several apps in one process).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export type Metrics = ReturnType<typeof createMetrics>;

export function createMetrics(opts: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const m = {
    registry,
    httpRequests: new Counter({
      name: "http_requests_total",
      help: "HTTP requests answered, by route pattern, method and status",
      labelNames: ["route", "method", "status"] as const,
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: "http_request_duration_seconds",
      help: "Time to answer, by route pattern and method",
      labelNames: ["route", "method"] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    dbPoolMax: new Gauge({ name: "db_pool_max_connections", help: "Most connections the database pool opens", registers: [registry] }),
    dbPoolConnections: new Gauge({
      name: "db_pool_connections",
      help: "This instance's database connections, by state",
      labelNames: ["state"] as const,
      registers: [registry],
    }),
    passwordHashes: new Gauge({
      name: "password_hashes",
      help: "argon2 computations running and queued",
      labelNames: ["state"] as const,
      registers: [registry],
    }),
    upstreamRequests: new Counter({
      name: "upstream_requests_total",
      help: "Calls to Haltman, by operation and result (HTTP status or fault)",
      labelNames: ["operation", "result"] as const,
      registers: [registry],
    }),
    upstreamDuration: new Histogram({
      name: "upstream_request_duration_seconds",
      help: "Time Haltman took to answer, by operation",
      labelNames: ["operation"] as const,
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    dbGroupSize: new Histogram({
      name: "db_group_size",
      help: "Calls grouped into one statement of the hot path (services/batch.ts), by statement",
      labelNames: ["statement"] as const,
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers: [registry],
    }),
    dbGroupDuration: new Histogram({
      name: "db_group_duration_seconds",
      help: "Time from a grouped statement's sending to its answer, by statement",
      labelNames: ["statement"] as const,
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
    sessionChecks: new Counter({
      name: "session_checks_total",
      help: "Access tokens' session checks, by how they were answered: memory, or database (the call waited for the read)",
      labelNames: ["answer"] as const,
      registers: [registry],
    }),
    rateLimitRefusals: new Counter({
      name: "rate_limit_refusals_total",
      help: "Calls refused by a rate limit, by reason (user, key, global, upstream, login)",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
  };
  return m;
}

/** The batch.ts observer that feeds db_group_size and db_group_duration_seconds for one statement. */
export function groupObserver(m: Metrics, statement: string): (size: number, seconds: number) => void {
  const size = m.dbGroupSize.labels(statement);
  const duration = m.dbGroupDuration.labels(statement);
  return (n, seconds) => {
    size.observe(n);
    duration.observe(seconds);
  };
}

/** The session gate's observer that feeds session_checks_total (children bound once: no label lookup a call). */
export function sessionCheckObserver(m: Metrics): (answer: "memory" | "database") => void {
  const answered = { memory: m.sessionChecks.labels("memory"), database: m.sessionChecks.labels("database") };
  return (answer) => answered[answer].inc();
}

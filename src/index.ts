// Entry: config -> dependencies -> serve(createApp(deps)); graceful shutdown on SIGTERM/SIGINT.
import { createApp, refusedRequestRecorder } from "./app.js";
import { isDatabaseUnavailable } from "./db/unavailable.js";
import { ConfigError, loadConfig } from "./config.js";
import { KeyringError } from "./crypto/keyring.js";
import { createDeps } from "./deps.js";
import { exitOnFault } from "./fatal.js";
import { createLogger, describeError } from "./log.js";
import { listen } from "./http/server.js";
import { maintainTables } from "./db/maintenance.js";
import { runOnlineSteps } from "./db/online.js";
import { sweepIdempotencyKeys } from "./services/idempotency.js";
import { sweepBuckets, sweepPauses } from "./services/rate-limit.js";
import { sweepSessions } from "./services/sessions.js";
import { StartupError, ensureFirstAdmin, prepareDatabase } from "./startup.js";

async function main() {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const p of err.problems) process.stderr.write(`config: ${p}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }
  const log = createLogger(config.logLevel);
  exitOnFault(log);
  for (const w of config.warnings) log.warn(`config: ${w}`);
  const { database, keyring } = await prepareDatabase(config, log);
  // The indexes and backfills no migration holds its tables locked for (db/online.ts). Embedded,
  // before listening: PGlite's one connection would hold every request behind them. On a server,
  // beside the requests, as the build does not block them; until a run of this instance has done
  // it all (not another instance's, which may be cut short), the housekeeping below looks again.
  let onlineDone = false;
  let onlineRun: Promise<void> | undefined;
  const online = (): Promise<void> =>
    onlineDone
      ? Promise.resolve()
      : (onlineRun ??= runOnlineSteps(database, log)
          .then((r) => void (onlineDone = r.ran))
          .catch((err) => log.warn({ err: describeError(err) }, "building the audit indexes failed; tried again in ten minutes"))
          .finally(() => (onlineRun = undefined)));
  if (database.kind === "pglite") await online();
  else void online();
  const deps = await createDeps({ config, database, keyring, log });
  await ensureFirstAdmin(deps, (text) => process.stdout.write(text + "\n"));

  const app = createApp(deps);
  const server = listen(
    app.fetch,
    { hostname: config.host, port: config.port },
    (info) => log.info({ host: info.address, port: info.port, database: database.kind }, "listening"),
    refusedRequestRecorder(deps),
  );
  server.on("error", (err: NodeJS.ErrnoException) => {
    log.fatal({ err: describeError(err), host: config.host, port: config.port }, err.code === "EADDRINUSE" ? "the address is in use" : "the server failed");
    process.exit(1);
  });

  // Housekeeping: rows that no longer change any decision (full buckets, spent idempotency keys,
  // pauses in the past). Any instance may run it; the statements are idempotent. On PGlite, which
  // has no autovacuum, the tables are then vacuumed and analyzed as autovacuum would (db/maintenance.ts).
  const maintain = async () => {
    if (database.kind !== "pglite") return;
    const done = await maintainTables(database.db);
    if (done.length > 0) log.info({ tables: done }, "embedded database maintained (autovacuum's part)");
  };
  maintain().catch((err) => log.warn({ err: describeError(err) }, "embedded database maintenance failed"));
  const sweeper = setInterval(() => {
    // (embedded, the online steps only ever run before listening: PGlite's one connection)
    Promise.all([sweepBuckets(database.db), sweepIdempotencyKeys(database.db), sweepPauses(database.db), sweepSessions(database.db), database.kind === "postgres" ? online() : undefined])
      .then(maintain)
      .catch((err) => log.warn({ err: describeError(err) }, "housekeeping sweep failed"));
  }, 10 * 60_000);
  sweeper.unref();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down: no new connections, finishing requests in flight");
    clearInterval(sweeper);
    const force = setTimeout(() => {
      log.warn("requests still in flight after 15 s; closing their connections");
      server.closeAllConnections();
    }, 15_000);
    force.unref();
    // Keep-alive connections go idle as their last request ends: close each as soon as it does,
    // rather than waiting for the force timeout.
    const idle = setInterval(() => server.closeIdleConnections(), 100);
    idle.unref();
    server.close(async () => {
      clearInterval(idle);
      await deps.upstream.close().catch(() => {});
      await deps.passwords.close?.().catch(() => {});
      await database.close().catch(() => {});
      log.info("stopped");
      process.exit(0);
    });
    server.closeIdleConnections();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((err) => {
  if (err instanceof StartupError || err instanceof KeyringError) {
    process.stderr.write(`startup: ${err.message}\n`);
    process.exit(78);
  }
  if (isDatabaseUnavailable(err)) {
    // An operator's problem to fix (a database missing, unreachable, or refusing us), told in a
    // line; EX_UNAVAILABLE, for a supervisor to start it again later.
    const d = describeError(err);
    const where = process.env.DATABASE_URL ? "the database of DATABASE_URL" : "the embedded database";
    process.stderr.write(`startup: ${where} cannot be used: ${d.message ?? "unreachable"}${d.code ? ` (${d.code})` : ""}\n`);
    process.exit(69);
  }
  process.stderr.write(`startup failed: ${JSON.stringify(describeError(err))}\n`);
  process.exit(1);
});

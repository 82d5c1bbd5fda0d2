// The one wiring point: everything a request needs, built once at start and passed to createApp.
import type { Logger } from "pino";
import type { Config, RatePolicy } from "./config.js";
import { parseRatePolicy } from "./config.js";
import type { Keyring } from "./crypto/keyring.js";
import type { Database, Db } from "./db/client.js";
import { createMetrics, groupObserver, sessionCheckObserver, type Metrics } from "./metrics.js";
import { createPasswordHasher, type PasswordHasher } from "./services/passwords.js";
import { createSessionGate, type SessionGate } from "./services/sessions.js";
import { createTokenService, type TokenService } from "./services/tokens.js";
import { createAdmission, type Admitter } from "./services/admission.js";
import { createLocalRefusals, type LocalRefusals } from "./services/refusals.js";
import { createLimiter, type Limiter } from "./services/rate-limit.js";
import { createAuditWriter, type AuditWriter } from "./services/audit.js";
import { createKeyChooser, loadVault, type KeyChooser, type Vault } from "./services/vault.js";
import { createUpstreamClient, type UpstreamClient } from "./upstream/client.js";

export type LoginLimits = { perAccount: RatePolicy; perAddress: RatePolicy };

/** Login throttling: per account (whatever the address) and per client address (whatever the account). */
export const DEFAULT_LOGIN_LIMITS: LoginLimits = {
  perAccount: parseRatePolicy("10/min")!,
  perAddress: parseRatePolicy("30/min")!,
};

export type Deps = {
  config: Config;
  database: Database;
  db: Db;
  keyring: Keyring;
  log: Logger;
  metrics: Metrics;
  passwords: PasswordHasher;
  tokens: TokenService;
  sessions: SessionGate;
  vault: Vault;
  upstream: UpstreamClient;
  /** rate limits on their own (login throttling) */
  limiter: Limiter;
  /** the proxied calls' data access, grouped (services/batch.ts) */
  chooseKey: KeyChooser;
  admit: Admitter;
  /** callers this instance refuses on its own for a moment, after the database refused them */
  refusals: LocalRefusals;
  auditWriter: AuditWriter;
  loginLimits: LoginLimits;
};

export async function createDeps(input: {
  config: Config;
  database: Database;
  keyring: Keyring;
  log: Logger;
  passwords?: PasswordHasher;
  loginLimits?: LoginLimits;
  metrics?: Metrics;
  sessionCheckTtlMs?: number;
  upstream?: UpstreamClient;
}): Promise<Deps> {
  const { config, database, keyring } = input;
  const tokens = await createTokenService({
    db: database.db,
    keyring,
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
    accessTtlS: config.accessTokenTtlS,
    log: input.log,
  });
  const vault = await loadVault(database.db, keyring);
  const metrics = input.metrics ?? createMetrics();
  metrics.dbPoolMax.set(database.poolMax);
  return {
    config,
    database,
    db: database.db,
    keyring,
    log: input.log,
    metrics,
    passwords: input.passwords ?? createPasswordHasher({ isolated: true }),
    tokens,
    sessions: createSessionGate(database.db, {
      ...(input.sessionCheckTtlMs !== undefined ? { ttlMs: input.sessionCheckTtlMs } : {}),
      observe: sessionCheckObserver(metrics),
    }),
    vault,
    // Each kind of grouped statement on a connection of its own (Database.lane).
    limiter: createLimiter({ query: database.lane("rate_limit_decide") }, { observe: groupObserver(metrics, "rate_limit_decide") }),
    chooseKey: createKeyChooser({ query: database.lane("key_choice") }, { observe: groupObserver(metrics, "key_choice") }),
    refusals: createLocalRefusals(),
    admit: createAdmission({ query: database.lane("proxy_admit") }, { observe: groupObserver(metrics, "proxy_admit") }),
    // Events take no row lock: two groups can be written at once, on two connections. Outcomes
    // also mark their keys' rows: one connection, so two groups never take them in opposite orders.
    auditWriter: createAuditWriter(
      { events: { query: database.lane("audit_event", 2) }, outcomes: { query: database.lane("audit_outcome") } },
      { events: { observe: groupObserver(metrics, "audit_event") }, outcomes: { observe: groupObserver(metrics, "audit_outcome") } },
    ),
    upstream:
      input.upstream ??
      createUpstreamClient({ baseUrl: config.haltmanBaseUrl, timeoutMs: config.upstreamTimeoutMs, bot: config.haltmanBot }),
    loginLimits: input.loginLimits ?? DEFAULT_LOGIN_LIMITS,
  };
}

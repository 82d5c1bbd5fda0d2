// The only module that reads process.env. Everything else receives a frozen Config.
import { isIP } from "node:net";
import { Keyring, KeyringError } from "./crypto/keyring.js";

export type RatePolicy = {
  /** how many calls fit in one period */
  readonly limit: number;
  /** the period, in milliseconds */
  readonly periodMs: number;
  /** the form it was written in, e.g. "10/min" */
  readonly text: string;
  /** the most calls that may go at once (a full bucket); `limit` when unset */
  readonly burst?: number;
};

/**
 * Upstream's own limits (UPSTREAM.md), counted in fixed one-minute windows whose edges we cannot
 * see: per key and upstream bucket, and per calling address (every call of ours leaves from one).
 */
export const UPSTREAM_LIMITS = { perKeyPerMinute: 120, perAddressPerMinute: 300 } as const;

/** Slack for calls that reach upstream closer together than they were admitted (queues on the way). */
const UPSTREAM_WINDOW_SLACK_MS = 1_000;
/** rate_limit_decide() admits a call up to 0.001 ms before its time (float rounding): counted as 1 ms. */
const DECIDE_LEEWAY_MS = 1;

/**
 * The largest burst that keeps a policy under an upstream ceiling of `perMinute` calls in every
 * minute, however upstream's windows fall. A bucket of `limit/period` that starts full lets through
 * its burst and then one call every period/limit: in any window of W, burst + ceil(W / interval) - 1
 * calls. W is the minute plus UPSTREAM_WINDOW_SLACK_MS, or the bare minute for a rate too close to
 * the ceiling to leave that slack (119/min or 120/min a key: a burst of 1). Undefined when even a
 * burst of one passes the ceiling within a minute: the policy's rate alone is above upstream's.
 */
export function burstUnder(policy: RatePolicy, perMinute: number): number | undefined {
  const interval = policy.periodMs / policy.limit;
  const fits = (windowMs: number) => perMinute - Math.ceil(windowMs / interval - 1e-9) + 1;
  // The first that leaves a burst of at least one: the minute with the slack, the bare minute, and
  // for a rate of exactly upstream's (120/min a key) the minute without the database's leeway, one
  // call every interval (which only a window starting within a microsecond of a call could see as
  // one call too many).
  const burst = [60_000 + UPSTREAM_WINDOW_SLACK_MS + DECIDE_LEEWAY_MS, 60_000 + DECIDE_LEEWAY_MS, 60_000].map(fits).find((b) => b >= 1) ?? 0;
  return burst >= 1 ? Math.min(policy.limit, burst) : undefined;
}

export type Config = Readonly<{
  databaseUrl: string | undefined;
  dataDir: string;
  host: string;
  port: number;
  haltmanBaseUrl: URL;
  upstreamTimeoutMs: number;
  /** undefined: embedded mode may generate one into DATA_DIR */
  vaultKeyring: string | undefined;
  bootstrapAdmin: { username: string; password: string } | undefined;
  jwtIssuer: string;
  jwtAudience: string;
  accessTokenTtlS: number;
  refreshTokenTtlS: number;
  rateLimits: Readonly<{
    handleCreate: RatePolicy;
    domainEnable: RatePolicy;
    key: RatePolicy;
    global: RatePolicy;
  }>;
  haltmanBot: { token: string; source: string } | undefined;
  /** a static bearer token that reads /metrics (for a scraper; an admin's access token also does) */
  metricsToken: string | undefined;
  trustProxy: number;
  corsOrigins: readonly string[];
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** settings that are valid but will not do what they seem to (logged at start) */
  warnings: readonly string[];
}>;

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

const RATE_UNITS: Record<string, number> = { s: 1_000, min: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, min: 60, h: 3_600, d: 86_400 };
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

/** `<count>/<s|min|h|d>`, e.g. `10/min`. */
export function parseRatePolicy(text: string): RatePolicy | undefined {
  const m = /^(\d{1,9})\/(s|min|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  const limit = Number(m[1]);
  if (limit < 1) return undefined;
  return { limit, periodMs: RATE_UNITS[m[2]!]!, text: `${limit}/${m[2]}` };
}

/** `<n><s|m|h|d>` or a bare number of seconds, e.g. `15m`, `30d`. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d{1,9})(s|m|min|h|d)?$/.exec(text.trim());
  if (!m) return undefined;
  const n = Number(m[1]) * DURATION_UNITS[m[2] ?? "s"]!;
  return n > 0 ? n : undefined;
}

type Env = Record<string, string | undefined>;

/**
 * Parses the environment once. A bad value is reported as one line naming the variable and
 * what it should look like, never echoing the value (it may be a secret).
 *
 * `needsKeyring: false` for a command that never seals or opens anything (`migrate`): it may run
 * without the keyring, as a deployment's migration job should (it need not hold the secret).
 */
export function loadConfig(env: Env = process.env, opts: { needsKeyring?: boolean } = {}): Config {
  const problems: string[] = [];
  // The contract: a variable set to the empty string counts as unset.
  const get = (name: string): string | undefined => {
    const v = env[name];
    return v === undefined || v === "" ? undefined : v;
  };
  const bad = (name: string, expected: string) => problems.push(`${name}: ${expected}`);

  const int = (name: string, def: number, min: number, max: number): number => {
    const raw = get(name);
    if (raw === undefined) return def;
    const n = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      bad(name, `expected a whole number from ${min} to ${max}`);
      return def;
    }
    return n;
  };
  const rate = (name: string, def: string): RatePolicy => {
    const p = parseRatePolicy(get(name) ?? def);
    if (!p) {
      bad(name, "expected <count>/<s|min|h|d>, e.g. 10/min, with a count of at least 1");
      return parseRatePolicy(def)!;
    }
    return p;
  };
  const duration = (name: string, def: string): number => {
    const s = parseDuration(get(name) ?? def);
    if (s === undefined) {
      bad(name, "expected a duration such as 900s, 15m, 12h or 30d");
      return parseDuration(def)!;
    }
    return s;
  };

  const databaseUrl = get("DATABASE_URL");
  if (databaseUrl !== undefined) {
    const why = /^postgres(ql)?:\/\//.test(databaseUrl) ? postgresUrlProblem(databaseUrl) : "expected a postgres:// or postgresql:// URL";
    if (why) bad("DATABASE_URL", why);
  }

  const host = get("HOST") ?? "127.0.0.1";
  if (isIP(host) === 0 && !/^[A-Za-z0-9.-]{1,253}$/.test(host)) bad("HOST", "expected an IP address or host name");

  let haltmanBaseUrl = new URL("https://mail.haltman.io");
  const base = get("HALTMAN_BASE_URL");
  if (base !== undefined) {
    try {
      const u = new URL(base);
      if ((u.protocol !== "https:" && u.protocol !== "http:") || u.username || u.password || u.search || u.hash) {
        throw new Error("scheme");
      }
      haltmanBaseUrl = u;
    } catch {
      bad("HALTMAN_BASE_URL", "expected an http(s):// origin without credentials, query or fragment");
    }
  }

  const keyring = get("VAULT_KEYRING");
  if (keyring === undefined && databaseUrl !== undefined && (opts.needsKeyring ?? true)) {
    bad("VAULT_KEYRING", "required when DATABASE_URL is set (entries id:base64-of-32-bytes, comma separated)");
  }
  // Its syntax is judged by its own parser (crypto/keyring.ts), whose problems name entries by
  // position and id only: the material never reaches a message.
  if (keyring !== undefined) {
    try {
      Keyring.parse(keyring);
    } catch (err) {
      if (!(err instanceof KeyringError)) throw err;
      bad("VAULT_KEYRING", err.problems.join("; ")); // one line for the variable, whatever its entries
    }
  }

  const adminUser = get("BOOTSTRAP_ADMIN_USERNAME");
  const adminPass = get("BOOTSTRAP_ADMIN_PASSWORD");
  let bootstrapAdmin: Config["bootstrapAdmin"];
  if ((adminUser === undefined) !== (adminPass === undefined)) {
    bad(adminUser === undefined ? "BOOTSTRAP_ADMIN_USERNAME" : "BOOTSTRAP_ADMIN_PASSWORD", "set both BOOTSTRAP_ADMIN_USERNAME and BOOTSTRAP_ADMIN_PASSWORD, or neither");
  } else if (adminUser !== undefined && adminPass !== undefined) {
    if (normaliseUsername(adminUser) === undefined) bad("BOOTSTRAP_ADMIN_USERNAME", "expected 3 to 64 of a-z 0-9 . _ -");
    if ([...adminPass].length < 8 || [...adminPass].length > 1024) bad("BOOTSTRAP_ADMIN_PASSWORD", "expected 8 to 1024 characters");
    bootstrapAdmin = { username: adminUser.toLowerCase(), password: adminPass };
  }

  const botToken = get("HALTMAN_BOT_TOKEN");
  const botSource = get("HALTMAN_BOT_SOURCE");
  let haltmanBot: Config["haltmanBot"];
  if ((botToken === undefined) !== (botSource === undefined)) {
    bad(botToken === undefined ? "HALTMAN_BOT_TOKEN" : "HALTMAN_BOT_SOURCE", "set both HALTMAN_BOT_TOKEN and HALTMAN_BOT_SOURCE, or neither");
  } else if (botToken !== undefined && botSource !== undefined) {
    // Sent as header values: visible ASCII, spaces only between (undici refuses the rest, and
    // every proxied call would fail).
    const headerValue = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;
    if (!headerValue.test(botToken)) bad("HALTMAN_BOT_TOKEN", "expected visible ASCII characters (spaces only between them), as an HTTP header carries");
    if (!headerValue.test(botSource)) bad("HALTMAN_BOT_SOURCE", "expected visible ASCII characters (spaces only between them), as an HTTP header carries");
    haltmanBot = { token: botToken, source: botSource };
  }

  // A scraper's secret: long enough not to be guessed, in the bearer token's alphabet (RFC 6750).
  const metricsToken = get("METRICS_TOKEN");
  if (metricsToken !== undefined && !/^[A-Za-z0-9._~+/-]{32,512}=*$/.test(metricsToken)) {
    bad("METRICS_TOKEN", "expected 32 to 512 of A-Z a-z 0-9 . _ ~ + / - (a random secret, such as the output of `openssl rand -hex 32`)");
  }

  const corsOrigins: string[] = [];
  for (const raw of (get("CORS_ORIGINS") ?? "").split(",")) {
    const o = raw.trim();
    if (!o) continue;
    try {
      const u = new URL(o);
      if (u.origin !== o.replace(/\/$/, "")) throw new Error("not an origin");
      corsOrigins.push(u.origin);
    } catch {
      bad("CORS_ORIGINS", "expected comma-separated origins such as https://app.example.com");
      break;
    }
  }

  const logLevel = (get("LOG_LEVEL") ?? "info").toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) bad("LOG_LEVEL", `expected one of ${LOG_LEVELS.join(", ")}`);

  // The key's and the global bucket stand between the team and upstream's limits: their bursts
  // are cut so that no minute holds more calls than upstream takes in one.
  const warnings: string[] = [];
  const upstreamFacing = (name: string, def: string, perMinute: number, what: string): RatePolicy => {
    const p = rate(name, def);
    const burst = burstUnder(p, perMinute);
    if (burst === undefined) {
      // Taken as the operator's word (upstream may allow this deployment more), burst and all.
      warnings.push(`${name}=${p.text} is a faster rate than upstream's ${perMinute}/min ${what}: unless upstream allows this deployment more, it will answer 429 and the service pause`);
      return p;
    }
    return burst === p.limit ? p : { ...p, burst };
  };

  // A path is a prefix put before upstream's own (a gateway's); ending in /api, it is most likely
  // upstream's own, which the calls already carry (they would go to /api/api/...).
  if (/\/api\/?$/.test(haltmanBaseUrl.pathname)) {
    warnings.push(`HALTMAN_BASE_URL ends in /api: the calls go to ${haltmanBaseUrl.pathname.replace(/\/$/, "")}/api/handle/create; upstream's origin alone is most likely meant`);
  }

  const issuer = get("JWT_ISSUER") ?? "haltman-bff";
  const audience = get("JWT_AUDIENCE") ?? "haltman-bff";

  const config: Config = {
    databaseUrl,
    dataDir: get("DATA_DIR") ?? "./data",
    host,
    port: int("PORT", 3000, 0, 65535),
    haltmanBaseUrl,
    upstreamTimeoutMs: int("UPSTREAM_TIMEOUT_MS", 10_000, 100, 600_000),
    vaultKeyring: keyring,
    bootstrapAdmin,
    jwtIssuer: issuer,
    jwtAudience: audience,
    accessTokenTtlS: duration("ACCESS_TOKEN_TTL", "15m"),
    refreshTokenTtlS: duration("REFRESH_TOKEN_TTL", "30d"),
    rateLimits: Object.freeze({
      handleCreate: rate("RATE_LIMIT_HANDLE_CREATE", "10/min"),
      domainEnable: rate("RATE_LIMIT_DOMAIN_ENABLE", "30/min"),
      key: upstreamFacing("RATE_LIMIT_KEY", "100/min", UPSTREAM_LIMITS.perKeyPerMinute, "per key"),
      global: upstreamFacing("RATE_LIMIT_GLOBAL", "250/min", UPSTREAM_LIMITS.perAddressPerMinute, "per calling address"),
    }),
    haltmanBot,
    metricsToken,
    trustProxy: int("TRUST_PROXY", 0, 0, 32),
    corsOrigins: Object.freeze(corsOrigins),
    logLevel: logLevel as Config["logLevel"],
    warnings: Object.freeze(warnings),
  };
  if (config.refreshTokenTtlS > 366 * 86_400) bad("REFRESH_TOKEN_TTL", "expected at most 366d");
  if (config.accessTokenTtlS > 24 * 3600) bad("ACCESS_TOKEN_TTL", "expected at most 24h (access tokens are short-lived; refresh tokens carry sessions)");
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

export const USERNAME_RE = /^[a-z0-9._-]{3,64}$/;

/**
 * A username as stored: lower-cased, 3 to 64 of a-z 0-9 . _ -. The characters are checked
 * before lower-casing: "\u212Aelvin" (Kelvin sign) lower-cases to "kelvin" and must be refused.
 */
export function normaliseUsername(raw: string): string | undefined {
  return /^[A-Za-z0-9._-]{3,64}$/.test(raw) ? raw.toLowerCase() : undefined;
}

/**
 * Why postgres.js could not read this URL, or undefined. It takes the hosts (several, comma
 * separated) and the credentials percent-decoded, and the rest through the WHATWG URL parser:
 * the same steps here, so that a bad URL is a line of the config report, not a stack at start.
 * Never the URL itself in the answer: it may hold a password.
 */
export function postgresUrlProblem(url: string): string | undefined {
  // postgres.js ends the authority at the first / or ? and its credentials at the first @: a
  // password holding one of them unencoded would be taken for a host or a port (and show up in
  // a connection error).
  const rest = url.slice(url.indexOf("://") + 3);
  const end = rest.search(/[/?#]/);
  if (end >= 0 && rest.indexOf("@", end) >= 0) return "its user name or password holds an unencoded / ? or # (write them as %2F %3F %23)";
  const authority = rest.split(/[?/]/)[0]!;
  if (authority.indexOf("@") !== authority.lastIndexOf("@")) return "its user name or password holds an unencoded @ (write it as %40)";
  const at = authority.lastIndexOf("@");
  let hosts: string;
  try {
    hosts = decodeURIComponent(authority.slice(at + 1));
  } catch {
    return "its host part is not valid percent-encoding";
  }
  for (const h of hosts.split(",")) {
    const port = /:(\d*)$/.exec(h)?.[1];
    if (port !== undefined && port !== "" && !(Number(port) >= 1 && Number(port) <= 65535)) return "a port must be 1 to 65535";
  }
  let parsed: URL;
  try {
    parsed = new URL(url.replace(hosts, hosts.split(",")[0]!));
  } catch {
    return "not a URL (check the host and port)";
  }
  try {
    decodeURIComponent(parsed.username);
    decodeURIComponent(parsed.password);
  } catch {
    return "its user name or password is not valid percent-encoding (write % as %25)";
  }
  return undefined;
}

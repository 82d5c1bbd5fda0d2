// config.ts: the contract's defaults, empty-as-unset, one problem line per bad variable (never
// echoing the value), and the rate-policy and duration parsers.
import { describe, expect, it } from "vitest";
import { ConfigError, UPSTREAM_LIMITS, burstUnder, loadConfig, parseDuration, parseRatePolicy, type Config, type RatePolicy } from "../../src/config.js";
import { createLogger } from "../../src/log.js";
import { StartupError, loadKeyring } from "../../src/startup.js";

function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  return [];
}

const ALL_VARS = [
  "DATABASE_URL", "DATA_DIR", "HOST", "PORT", "HALTMAN_BASE_URL", "UPSTREAM_TIMEOUT_MS", "VAULT_KEYRING",
  "BOOTSTRAP_ADMIN_USERNAME", "BOOTSTRAP_ADMIN_PASSWORD", "JWT_ISSUER", "JWT_AUDIENCE", "ACCESS_TOKEN_TTL",
  "REFRESH_TOKEN_TTL", "RATE_LIMIT_HANDLE_CREATE", "RATE_LIMIT_DOMAIN_ENABLE", "RATE_LIMIT_KEY", "RATE_LIMIT_GLOBAL",
  "HALTMAN_BOT_TOKEN", "HALTMAN_BOT_SOURCE", "METRICS_TOKEN", "TRUST_PROXY", "CORS_ORIGINS", "LOG_LEVEL",
];

describe("loadConfig defaults", () => {
  it("equal the contract's table", () => {
    const c: Config = loadConfig({});
    expect(c.databaseUrl).toBeUndefined();
    expect(c.dataDir).toBe("./data");
    expect(c.host).toBe("127.0.0.1");
    expect(c.port).toBe(3000);
    expect(c.haltmanBaseUrl.origin).toBe("https://mail.haltman.io");
    expect(c.upstreamTimeoutMs).toBe(10_000);
    expect(c.vaultKeyring).toBeUndefined();
    expect(c.bootstrapAdmin).toBeUndefined();
    expect(c.jwtIssuer).toBe("haltman-bff");
    expect(c.jwtAudience).toBe("haltman-bff");
    expect(c.accessTokenTtlS).toBe(15 * 60);
    expect(c.refreshTokenTtlS).toBe(30 * 86_400);
    expect(c.rateLimits.handleCreate).toEqual({ limit: 10, periodMs: 60_000, text: "10/min" });
    expect(c.rateLimits.domainEnable).toEqual({ limit: 30, periodMs: 60_000, text: "30/min" });
    // bursts cut to stay under upstream's 120/min a key and 300/min an address (below)
    expect(c.rateLimits.key).toEqual({ limit: 100, periodMs: 60_000, text: "100/min", burst: 19 });
    expect(c.rateLimits.global).toEqual({ limit: 250, periodMs: 60_000, text: "250/min", burst: 46 });
    expect(c.warnings).toEqual([]);
    expect(c.haltmanBot).toBeUndefined();
    expect(c.trustProxy).toBe(0);
    expect(c.corsOrigins).toEqual([]);
    expect(c.logLevel).toBe("info");
  });

  it("an empty string counts as unset, for every variable", () => {
    const empty = Object.fromEntries(ALL_VARS.map((v) => [v, ""]));
    const c = loadConfig(empty);
    expect(JSON.parse(JSON.stringify(c))).toEqual(JSON.parse(JSON.stringify(loadConfig({}))));
    // in particular DATABASE_URL="" does not demand a keyring, and half-set pairs given as "" are unset
    expect(loadConfig({ DATABASE_URL: "", VAULT_KEYRING: "" }).databaseUrl).toBeUndefined();
    expect(loadConfig({ BOOTSTRAP_ADMIN_USERNAME: "", BOOTSTRAP_ADMIN_PASSWORD: "" }).bootstrapAdmin).toBeUndefined();
  });

  it("takes good values", () => {
    const c = loadConfig({
      DATABASE_URL: "postgres://u@db:5432/x",
      VAULT_KEYRING: `k1:${Buffer.alloc(32).toString("base64")}`,
      DATA_DIR: "/var/lib/x",
      HOST: "0.0.0.0",
      PORT: "8080",
      HALTMAN_BASE_URL: "http://127.0.0.1:9999",
      UPSTREAM_TIMEOUT_MS: "2500",
      BOOTSTRAP_ADMIN_USERNAME: "Admin",
      BOOTSTRAP_ADMIN_PASSWORD: "a-long-password",
      JWT_ISSUER: "iss",
      JWT_AUDIENCE: "aud",
      ACCESS_TOKEN_TTL: "5m",
      REFRESH_TOKEN_TTL: "7d",
      RATE_LIMIT_HANDLE_CREATE: "5/s",
      RATE_LIMIT_DOMAIN_ENABLE: "100/h",
      RATE_LIMIT_KEY: "1000/d",
      RATE_LIMIT_GLOBAL: "300/min",
      HALTMAN_BOT_TOKEN: "tok",
      HALTMAN_BOT_SOURCE: "src",
      TRUST_PROXY: "2",
      CORS_ORIGINS: "https://a.example.com, https://b.example.com:8443",
      LOG_LEVEL: "debug",
    });
    expect(c).toMatchObject({
      databaseUrl: "postgres://u@db:5432/x",
      dataDir: "/var/lib/x",
      host: "0.0.0.0",
      port: 8080,
      upstreamTimeoutMs: 2500,
      bootstrapAdmin: { username: "admin", password: "a-long-password" },
      jwtIssuer: "iss",
      jwtAudience: "aud",
      accessTokenTtlS: 300,
      refreshTokenTtlS: 7 * 86_400,
      haltmanBot: { token: "tok", source: "src" },
      trustProxy: 2,
      corsOrigins: ["https://a.example.com", "https://b.example.com:8443"],
      logLevel: "debug",
    });
    expect(c.haltmanBaseUrl.origin).toBe("http://127.0.0.1:9999");
    expect(c.rateLimits.handleCreate).toEqual({ limit: 5, periodMs: 1000, text: "5/s" });
    expect(c.rateLimits.key.periodMs).toBe(86_400_000);
  });

  it("is frozen", () => {
    const c = loadConfig({});
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.rateLimits)).toBe(true);
  });
});

const GOOD_KEYRING = `k1:${Buffer.alloc(32, 3).toString("base64")}`;

describe("bad values", () => {
  const SECRET = "Zebra7SecretValue";
  const bad: [string, Record<string, string>][] = [
    ["DATABASE_URL", { DATABASE_URL: `mysql://user:${SECRET}@db/x`, VAULT_KEYRING: GOOD_KEYRING }],
    // what postgres.js cannot read (it threw at start, with a stack, exit 1)
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:pa%zz${SECRET}@127.0.0.1:5432/db`, VAULT_KEYRING: GOOD_KEYRING }],
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:${SECRET}@127.0.0.1:99999/db`, VAULT_KEYRING: GOOD_KEYRING }],
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:${SECRET}@h1:5432,h2:0/db`, VAULT_KEYRING: GOOD_KEYRING }],
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:${SECRET}@bad host/db`, VAULT_KEYRING: GOOD_KEYRING }],
    // what postgres.js would split at the wrong place, taking part of the password for a host or port
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:1234/${SECRET}@127.0.0.1:5432/db`, VAULT_KEYRING: GOOD_KEYRING }],
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:12?${SECRET}@127.0.0.1:5432/db`, VAULT_KEYRING: GOOD_KEYRING }],
    ["DATABASE_URL", { DATABASE_URL: `postgres://app:pa@${SECRET}@127.0.0.1:5432/db`, VAULT_KEYRING: GOOD_KEYRING }],
    // the keyring's syntax is reported with the rest (by position and id, never its material)
    ["VAULT_KEYRING", { VAULT_KEYRING: `k1:${SECRET}` }],
    ["VAULT_KEYRING", { VAULT_KEYRING: `${GOOD_KEYRING},${GOOD_KEYRING}` }],
    // several bad entries: still one line for the variable
    ["VAULT_KEYRING", { VAULT_KEYRING: `k1:${SECRET},k2:${SECRET}x,bad id:${SECRET}` }],
    ["METRICS_TOKEN", { METRICS_TOKEN: `short-${SECRET}` }],
    ["METRICS_TOKEN", { METRICS_TOKEN: `${SECRET} ${SECRET} ${SECRET}` }],
    ["HOST", { HOST: `bad host ${SECRET}!` }],
    ["PORT", { PORT: `${SECRET}` }],
    ["PORT", { PORT: "70000" }],
    ["PORT", { PORT: "-1" }],
    ["PORT", { PORT: "80.5" }],
    ["HALTMAN_BASE_URL", { HALTMAN_BASE_URL: `ftp://mail.example.com/${SECRET}` }],
    ["HALTMAN_BASE_URL", { HALTMAN_BASE_URL: `https://user:${SECRET}@mail.example.com` }],
    ["HALTMAN_BASE_URL", { HALTMAN_BASE_URL: `https://mail.example.com/?token=${SECRET}` }],
    ["HALTMAN_BASE_URL", { HALTMAN_BASE_URL: `not a url ${SECRET}` }],
    ["UPSTREAM_TIMEOUT_MS", { UPSTREAM_TIMEOUT_MS: `${SECRET}` }],
    ["UPSTREAM_TIMEOUT_MS", { UPSTREAM_TIMEOUT_MS: "0" }],
    ["ACCESS_TOKEN_TTL", { ACCESS_TOKEN_TTL: `${SECRET}` }],
    ["ACCESS_TOKEN_TTL", { ACCESS_TOKEN_TTL: "0" }],
    ["ACCESS_TOKEN_TTL", { ACCESS_TOKEN_TTL: "48h" }],
    ["REFRESH_TOKEN_TTL", { REFRESH_TOKEN_TTL: `30 ${SECRET}` }],
    ["RATE_LIMIT_HANDLE_CREATE", { RATE_LIMIT_HANDLE_CREATE: "10/week" }],
    ["RATE_LIMIT_DOMAIN_ENABLE", { RATE_LIMIT_DOMAIN_ENABLE: "0/min" }],
    ["RATE_LIMIT_KEY", { RATE_LIMIT_KEY: `${SECRET}/min` }],
    ["RATE_LIMIT_GLOBAL", { RATE_LIMIT_GLOBAL: "250" }],
    ["TRUST_PROXY", { TRUST_PROXY: "-1" }],
    ["TRUST_PROXY", { TRUST_PROXY: `${SECRET}` }],
    ["TRUST_PROXY", { TRUST_PROXY: "true" }],
    ["CORS_ORIGINS", { CORS_ORIGINS: `https://ok.example.com,not-an-origin-${SECRET}` }],
    ["CORS_ORIGINS", { CORS_ORIGINS: `https://app.example.com/path/${SECRET}` }],
    ["LOG_LEVEL", { LOG_LEVEL: `loud${SECRET}` }],
    // half of a pair: the line names the missing half
    ["BOOTSTRAP_ADMIN_USERNAME", { BOOTSTRAP_ADMIN_PASSWORD: `${SECRET}x` }],
    ["BOOTSTRAP_ADMIN_PASSWORD", { BOOTSTRAP_ADMIN_USERNAME: `admin-${SECRET}` }],
    ["BOOTSTRAP_ADMIN_PASSWORD", { BOOTSTRAP_ADMIN_USERNAME: "admin", BOOTSTRAP_ADMIN_PASSWORD: "short" }],
    ["BOOTSTRAP_ADMIN_USERNAME", { BOOTSTRAP_ADMIN_USERNAME: `bad name ${SECRET}`, BOOTSTRAP_ADMIN_PASSWORD: "long-enough-pw" }],
    ["HALTMAN_BOT_TOKEN", { HALTMAN_BOT_SOURCE: `src-${SECRET}` }],
    ["HALTMAN_BOT_SOURCE", { HALTMAN_BOT_TOKEN: `tok-${SECRET}` }],
    ["HALTMAN_BOT_TOKEN", { HALTMAN_BOT_TOKEN: `tok\n${SECRET}`, HALTMAN_BOT_SOURCE: "src" }],
    ["HALTMAN_BOT_SOURCE", { HALTMAN_BOT_TOKEN: "tok", HALTMAN_BOT_SOURCE: `team\n${SECRET}` }],
    // what no HTTP header carries: undici refused it on every proxied call (502)
    ["HALTMAN_BOT_SOURCE", { HALTMAN_BOT_TOKEN: "tok", HALTMAN_BOT_SOURCE: `team\u2192${SECRET}` }],
    ["HALTMAN_BOT_TOKEN", { HALTMAN_BOT_TOKEN: `tok\x7f${SECRET}`, HALTMAN_BOT_SOURCE: "src" }],
    ["HALTMAN_BOT_TOKEN", { HALTMAN_BOT_TOKEN: ` ${SECRET}`, HALTMAN_BOT_SOURCE: "src" }],
    ["VAULT_KEYRING", { DATABASE_URL: `postgres://user:${SECRET}@db/x` }],
  ];

  it.each(bad)("%s: exactly one problem line, naming it, without the value", (name, env) => {
    const problems = problemsOf(env);
    expect(problems, JSON.stringify(env)).toHaveLength(1);
    expect(problems[0]!.startsWith(`${name}:`), problems[0]).toBe(true);
    expect(problems[0]).not.toContain(SECRET);
    expect(problems[0]).not.toContain("\n");
    // and the thrown message does not carry it either
    try {
      loadConfig(env);
    } catch (err) {
      expect(String((err as Error).message)).not.toContain(SECRET);
      expect(String((err as Error).stack)).not.toContain(SECRET);
    }
  });

  it("several bad variables are all reported, one line each", () => {
    const problems = problemsOf({
      PORT: "x",
      LOG_LEVEL: "loud",
      TRUST_PROXY: "-3",
      RATE_LIMIT_KEY: "1/week",
      ACCESS_TOKEN_TTL: "forever",
      HALTMAN_BASE_URL: "gopher://x",
      DATABASE_URL: "postgres://db/x", // without VAULT_KEYRING
    });
    const names = problems.map((p) => p.split(":")[0]).sort();
    expect(names).toEqual(["ACCESS_TOKEN_TTL", "HALTMAN_BASE_URL", "LOG_LEVEL", "PORT", "RATE_LIMIT_KEY", "TRUST_PROXY", "VAULT_KEYRING"]);
  });

  it("DATABASE_URL without VAULT_KEYRING is a problem; with one it is fine", () => {
    expect(problemsOf({ DATABASE_URL: "postgres://db/x" }).map((p) => p.split(":")[0])).toEqual(["VAULT_KEYRING"]);
    expect(problemsOf({ DATABASE_URL: "postgres://db/x", VAULT_KEYRING: "" }).map((p) => p.split(":")[0])).toEqual(["VAULT_KEYRING"]);
    expect(problemsOf({ DATABASE_URL: "postgresql://db/x", VAULT_KEYRING: `k1:${Buffer.alloc(32).toString("base64")}` })).toEqual([]);
    // embedded mode needs none
    expect(problemsOf({})).toEqual([]);
    // what postgres.js reads: several hosts, IPv6, percent-encoded credentials, an empty port
    for (const url of ["postgres://u:p%40ss@h1:5432,h2:5433/db", "postgres://[::1]:5432/db", "postgres://u@db:/x?sslmode=require"]) {
      expect(problemsOf({ DATABASE_URL: url, VAULT_KEYRING: GOOD_KEYRING }), url).toEqual([]);
    }
  });

  it("a command that needs no keyring (migrate) takes DATABASE_URL without one", () => {
    const c = loadConfig({ DATABASE_URL: "postgres://db/x" }, { needsKeyring: false });
    expect(c.databaseUrl).toBe("postgres://db/x");
    expect(c.vaultKeyring).toBeUndefined();
    expect(() => loadConfig({ DATABASE_URL: "postgres://db/x" }, { needsKeyring: true })).toThrow(/VAULT_KEYRING/);
    // such a configuration never gets a development keyring for a real database
    expect(() => loadKeyring(c, createLogger("silent"))).toThrow(StartupError);
  });

  it("the edges of the numeric ranges are accepted", () => {
    expect(loadConfig({ PORT: "0" }).port).toBe(0);
    expect(loadConfig({ PORT: "65535" }).port).toBe(65535);
    expect(loadConfig({ TRUST_PROXY: "0" }).trustProxy).toBe(0);
    expect(loadConfig({ ACCESS_TOKEN_TTL: "24h" }).accessTokenTtlS).toBe(86_400);
    expect(loadConfig({ LOG_LEVEL: "SILENT" }).logLevel).toBe("silent");
  });
});

describe("parseRatePolicy", () => {
  it.each([
    ["10/min", 10, 60_000, "10/min"],
    ["1/s", 1, 1_000, "1/s"],
    ["100/h", 100, 3_600_000, "100/h"],
    ["5/d", 5, 86_400_000, "5/d"],
    ["999999999/d", 999_999_999, 86_400_000, "999999999/d"],
    [" 10/min ", 10, 60_000, "10/min"],
    ["010/min", 10, 60_000, "10/min"],
  ])("%j → %i per %i ms", (text, limit, periodMs, canonical) => {
    expect(parseRatePolicy(text)).toEqual({ limit, periodMs, text: canonical });
  });

  it.each(["0/min", "00/s", "10/week", "10/m", "10/MIN", "10 /min", "10/ min", "-1/min", "1.5/min", "1234567890/s", "/min", "10/", "10", "", "ten/min", "10/min/s"])(
    "%j is refused",
    (text) => {
      expect(parseRatePolicy(text)).toBeUndefined();
    },
  );
});

describe("parseDuration", () => {
  it.each([
    ["15m", 900],
    ["15min", 900],
    ["30d", 2_592_000],
    ["12h", 43_200],
    ["900s", 900],
    ["900", 900],
    ["1", 1],
    [" 5m ", 300],
  ])("%j → %i s", (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds);
  });

  it.each(["0", "0s", "0m", "-5m", "1.5h", "", "15 m", "1w", "m", "15M", "1e3", "1234567890"])("%j is refused", (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });
});

describe("the key's and the global bucket under upstream's limits", () => {
  // GCRA exactly as rate_limit_decide() runs it, driven by a caller who sends whenever a call would
  // pass (the worst case: the full bucket at once, then one call every interval), with a random
  // delay before each call as well. Returns the most calls admitted in any window of `windowMs`.
  function worstWindow(p: RatePolicy, windowMs: number, seconds = 300, jitter = false): number {
    const t = p.periodMs / p.limit;
    const tol = (p.burst ?? p.limit) * t;
    let tat = 0;
    let now = 0;
    const admitted: number[] = [];
    let seed = 7;
    const rand = () => ((seed = (seed * 48271) % 2147483647) / 2147483647);
    while (now < seconds * 1000) {
      const base = Math.max(tat, now);
      if (base + t - now - tol <= 0.001) {
        tat = base + t;
        admitted.push(now);
        if (jitter) now += rand() * t * 3;
      } else {
        now = base + t - tol - 0.0009; // (nearly) the first moment the next call passes: the function admits 0.001 ms early
      }
    }
    let most = 0;
    for (let i = 0, j = 0; i < admitted.length; i++) {
      while (admitted[i]! - admitted[j]! >= windowMs) j++;
      most = Math.max(most, i - j + 1);
    }
    return most;
  }
  const policy = (text: string) => parseRatePolicy(text)!;

  it("the defaults: 100/min a key goes 19 at once, 250/min in all 46, and no minute holds more than upstream takes", () => {
    const c = loadConfig({});
    expect(worstWindow(c.rateLimits.key, 60_000)).toBeLessThanOrEqual(UPSTREAM_LIMITS.perKeyPerMinute);
    expect(worstWindow(c.rateLimits.global, 60_000)).toBeLessThanOrEqual(UPSTREAM_LIMITS.perAddressPerMinute);
    // a bucket that starts full at its whole limit would not: upstream's 429s, and a paused key
    expect(worstWindow(policy("100/min"), 60_000)).toBeGreaterThanOrEqual(199);
    expect(worstWindow(policy("250/min"), 60_000)).toBeGreaterThanOrEqual(499);
    // with the second of slack for calls bunched on their way upstream
    expect(worstWindow(c.rateLimits.key, 61_000)).toBeLessThanOrEqual(120);
    expect(worstWindow(c.rateLimits.global, 61_000)).toBeLessThanOrEqual(300);
  });

  const RATES = ["10/min", "60/min", "100/min", "118/min", "119/min", "120/min", "121/min", "1/s", "2/s", "5/s", "180/min", "240/min",
    "250/min", "295/min", "296/min", "299/min", "300/min", "301/min", "300/h", "1000/h", "1000/d", "5000/d", "200/min"];
  it.each(RATES)("%s: the burst is the most that keeps every minute under the ceiling, and never above the limit", (text) => {
    for (const ceiling of [UPSTREAM_LIMITS.perKeyPerMinute, UPSTREAM_LIMITS.perAddressPerMinute]) {
      const p = policy(text);
      const burst = burstUnder(p, ceiling);
      if (burst === undefined) {
        // its rate alone is over: even one call at a time passes the ceiling within a minute
        expect(worstWindow({ ...p, burst: 1 }, 60_000)).toBeGreaterThan(ceiling);
        continue;
      }
      expect(burst).toBeGreaterThanOrEqual(1);
      expect(burst).toBeLessThanOrEqual(p.limit);
      const cut = { ...p, burst };
      // with the second of slack when the rate leaves room for it, else the bare minute; a rate of
      // exactly upstream's (one call every 500 ms for 120/min) only by the database's 0.001 ms
      const window = worstWindow({ ...p, burst: 1 }, 61_000) <= ceiling ? 61_000 : 60_000;
      const exact = (60_000 * p.limit) / p.periodMs === ceiling;
      expect(worstWindow(cut, window)).toBeLessThanOrEqual(exact ? ceiling + 1 : ceiling);
      expect(worstWindow(cut, exact ? 60_000 - 0.01 : window)).toBeLessThanOrEqual(ceiling);
      expect(worstWindow(cut, window, 300, true)).toBeLessThanOrEqual(exact ? ceiling + 1 : ceiling);
      // and one more would not fit (unless the burst is the whole limit already)
      if (burst < p.limit) expect(worstWindow({ ...p, burst: burst + 1 }, window)).toBeGreaterThan(ceiling);
    }
  });

  it("a rate close to upstream's keeps every bare minute under it, with a burst of 1 or 2", () => {
    expect(burstUnder(policy("119/min"), 120)).toBe(1);
    expect(burstUnder(policy("120/min"), 120)).toBe(1);
    expect(burstUnder(policy("121/min"), 120)).toBeUndefined();
    expect(burstUnder(policy("300/min"), 300)).toBe(1);
    expect(burstUnder(policy("5/s"), 300)).toBe(1);
    expect(burstUnder(policy("2/s"), 120)).toBe(1);
  });

  it("METRICS_TOKEN is kept as given; HALTMAN_BASE_URL ending in /api warns (the calls carry /api themselves), another path does not", () => {
    expect(loadConfig({ METRICS_TOKEN: "a".repeat(32) }).metricsToken).toBe("a".repeat(32));
    expect(loadConfig({}).metricsToken).toBeUndefined();
    for (const base of ["https://mail.example.com/api", "https://mail.example.com/gw/api/"]) {
      const w = loadConfig({ HALTMAN_BASE_URL: base }).warnings;
      expect(w, base).toHaveLength(1);
      expect(w[0]).toMatch(/^HALTMAN_BASE_URL ends in \/api: the calls go to \/.*api\/api\/handle\/create/);
    }
    expect(loadConfig({ HALTMAN_BASE_URL: "https://gw.example.com/haltman" }).warnings).toEqual([]);
    expect(loadConfig({ HALTMAN_BASE_URL: "https://gw.example.com/apis" }).warnings).toEqual([]);
  });

  it("a small limit keeps its whole burst; one close to upstream's gets a burst of 1; a faster one is kept as written, with a warning", () => {
    const c = loadConfig({ RATE_LIMIT_KEY: "10/min", RATE_LIMIT_GLOBAL: "1000/d", RATE_LIMIT_HANDLE_CREATE: "500/min" });
    expect(c.rateLimits.key).toEqual({ limit: 10, periodMs: 60_000, text: "10/min" });
    expect(c.rateLimits.global).toEqual({ limit: 1000, periodMs: 86_400_000, text: "1000/d", burst: 300 });
    expect(c.rateLimits.handleCreate).toEqual({ limit: 500, periodMs: 60_000, text: "500/min" }); // a user's: no ceiling of its own
    expect(c.warnings).toEqual([]);
    const close = loadConfig({ RATE_LIMIT_KEY: "120/min", RATE_LIMIT_GLOBAL: "5/s" });
    expect(close.rateLimits.key).toEqual({ limit: 120, periodMs: 60_000, text: "120/min", burst: 1 });
    expect(close.rateLimits.global).toEqual({ limit: 5, periodMs: 1000, text: "5/s", burst: 1 });
    expect(close.warnings).toEqual([]);
    const over = loadConfig({ RATE_LIMIT_KEY: "121/min", RATE_LIMIT_GLOBAL: "10/s" });
    expect(over.rateLimits.key).toEqual({ limit: 121, periodMs: 60_000, text: "121/min" });
    expect(over.rateLimits.global).toEqual({ limit: 10, periodMs: 1000, text: "10/s" });
    expect(over.warnings).toEqual([
      "RATE_LIMIT_KEY=121/min is a faster rate than upstream's 120/min per key: unless upstream allows this deployment more, it will answer 429 and the service pause",
      "RATE_LIMIT_GLOBAL=10/s is a faster rate than upstream's 300/min per calling address: unless upstream allows this deployment more, it will answer 429 and the service pause",
    ]);
  });
});

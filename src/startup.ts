// What the service does before it listens, shared by the entry point, the CLI and the tests:
// open and migrate the database, load (or, embedded, generate) the keyring, make the first admin.
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Logger } from "pino";
import type { Config } from "./config.js";
import { Keyring } from "./crypto/keyring.js";
import { openPglite, openPostgres, type Database } from "./db/client.js";
import { DataDirInUseError } from "./db/data-dir-lock.js";
import { users } from "./db/schema.js";
import { migrate } from "./db/migrate.js";
import type { Deps } from "./deps.js";
import { bootstrapAdmin } from "./services/accounts.js";
import { missingKeyringEntries } from "./services/keyring-usage.js";

export class StartupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StartupError";
  }
}

export async function openDatabase(config: Config): Promise<Database> {
  if (config.databaseUrl) return openPostgres(config.databaseUrl);
  try {
    return await openPglite(config.dataDir);
  } catch (err) {
    if (err instanceof DataDirInUseError) throw new StartupError(err.message);
    throw err;
  }
}

/**
 * VAULT_KEYRING, or in embedded mode a keyring generated once into DATA_DIR/vault-keyring
 * (mode 0600). With DATABASE_URL, config.ts refuses a missing keyring unless the command needs
 * none (`migrate`); should such a configuration reach here, it is refused too, never given a
 * development keyring for a real database.
 */
export function loadKeyring(config: Config, log: Logger): Keyring {
  if (config.vaultKeyring) return Keyring.parse(config.vaultKeyring);
  if (config.databaseUrl) throw new StartupError("VAULT_KEYRING is required when DATABASE_URL is set");
  const dir = resolve(config.dataDir);
  const file = join(dir, "vault-keyring");
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // A random id: should this file be lost, the data it sealed names an entry the new one is not,
    // and the start says so clearly instead of failing to open a box.
    writeFileSync(file, Keyring.generateEntry(`dev-${randomBytes(4).toString("hex")}`) + "\n", { mode: 0o600, flag: "wx" });
    log.warn({ file }, "VAULT_KEYRING is not set: generated a development keyring; set VAULT_KEYRING (and keep a copy) for anything real");
  } else {
    log.warn({ file }, "VAULT_KEYRING is not set: using the development keyring in DATA_DIR");
  }
  chmodSync(file, 0o600);
  return Keyring.parse(readFileSync(file, "utf8").trim());
}

/** Refuses to start when sealed data needs a keyring entry that is not configured. */
export async function checkKeyring(database: Database, keyring: Keyring): Promise<void> {
  const missing = await missingKeyringEntries(database.db, keyring);
  if (missing.length > 0) {
    throw new StartupError(
      `VAULT_KEYRING lacks entr${missing.length > 1 ? "ies" : "y"} ${missing.map((m) => `"${m}"`).join(", ")}, ` +
        `which still ${missing.length > 1 ? "seal" : "seals"} stored data: add ${missing.length > 1 ? "them" : "it"} back (after the new first entry) and run \`npm run cli -- vault rotate\` before removing ${missing.length > 1 ? "them" : "it"}`,
    );
  }
}

export async function prepareDatabase(
  config: Config,
  log: Logger,
  opts: { checkKeyring?: boolean } = {},
): Promise<{ database: Database; keyring: Keyring }> {
  const keyring = loadKeyring(config, log);
  const database = await openDatabase(config);
  try {
    const { applied } = await migrate(database.db);
    if (applied > 0) log.info({ applied }, "database migrated");
    if (opts.checkKeyring ?? true) await checkKeyring(database, keyring);
  } catch (err) {
    await database.close();
    throw err;
  }
  return { database, keyring };
}

/**
 * BOOTSTRAP_ADMIN_* when set; otherwise, in embedded mode with no user at all, an `admin` with a
 * random password printed once, so a newcomer can log in after the first command.
 */
export async function ensureFirstAdmin(deps: Deps, print: (line: string) => void): Promise<void> {
  const meta = { requestId: "startup", ip: null, userAgent: null };
  const { config, log } = deps;
  if (config.bootstrapAdmin) {
    if (await bootstrapAdmin(deps, config.bootstrapAdmin, meta)) {
      log.info({ username: config.bootstrapAdmin.username }, "created the bootstrap admin");
    }
    return;
  }
  if (config.databaseUrl) {
    const [any] = await deps.db.select({ id: users.id }).from(users).limit(1);
    if (!any) {
      log.warn(
        "no user exists yet, so nobody can log in: set BOOTSTRAP_ADMIN_USERNAME and BOOTSTRAP_ADMIN_PASSWORD, or run `npm run cli -- user add --role admin <name>`",
      );
    }
    return;
  }
  const password = randomBytes(18).toString("base64url");
  if (await bootstrapAdmin(deps, { username: "admin", password }, meta)) {
    print(
      [
        "",
        "  First start: created the admin account of this embedded database.",
        "    username: admin",
        `    password: ${password}`,
        "  It is shown this once. Change it with POST /v1/auth/password; lost, set a new one with",
        "  `npm run cli -- user passwd admin` (the service stopped).",
        "",
      ].join("\n"),
    );
  }
}

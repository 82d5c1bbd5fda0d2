// Operator commands: `npm run cli -- <command>`. Same configuration (environment) as the service.
// Passwords are read from standard input, never from arguments (they would show in `ps` and
// shell history).
import { eq } from "drizzle-orm";
import { createInterface } from "node:readline";
import { ConfigError, loadConfig, normaliseUsername } from "./config.js";
import { KeyringError } from "./crypto/keyring.js";
import { users } from "./db/schema.js";
import { exitOnFault } from "./fatal.js";
import { createLogger, describeError } from "./log.js";
import { createUser } from "./services/accounts.js";
import { record } from "./services/audit.js";
import { keyringUsage } from "./services/keyring-usage.js";
import { rotateKeyring } from "./services/rotation.js";
import { PASSWORD_MAX, PASSWORD_MIN, createPasswordHasher, passwordLength } from "./services/passwords.js";
import { revokeSessions } from "./services/sessions.js";
import { PUBLISH_LEAD_MS, ROTATION_GRACE_S, WAIT_AFTER_MS, rotateSigningKey, signingKeyStates } from "./services/tokens.js";
import { StartupError, loadKeyring, openDatabase, prepareDatabase } from "./startup.js";
import { migrate } from "./db/migrate.js";
import { runOnlineSteps } from "./db/online.js";

const USAGE = `usage: npm run cli -- <command>

  migrate                              apply pending database migrations
  user add [--role admin|member] [--] <username>
                                       create a user; the password is read from standard input
  user passwd [--] <username>          set a user's password (read from standard input) and end their sessions
  vault status                         how many sealed items each keyring entry still seals
  vault rotate                         re-seal everything under the first VAULT_KEYRING entry
                                       (in batches; safe to interrupt and run again)
  signing-key status                   the access tokens' signing keys, and which one signs
  signing-key rotate [--now]           a new signing key, signing 2 minutes after it is published;
                                       the previous ones verify for the access tokens' lifetime and
                                       3 minutes more, or with --now (a key thought leaked) not at
                                       all: frontends refresh their tokens
`;

const meta = { requestId: `cli-${process.pid}`, ip: null, userAgent: "haltman-bff cli" };

async function readPassword(prompt: string): Promise<string> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: process.stdin.isTTY });
  if (process.stdin.isTTY) {
    process.stderr.write(prompt);
    // Mute the echo: readline writes what is typed through _writeToOutput.
    (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = () => {};
  }
  const line = await new Promise<string>((resolve) => rl.once("line", resolve).once("close", () => resolve("")));
  rl.close();
  if (process.stdin.isTTY) process.stderr.write("\n");
  // Only the line ending is removed: passwords are never trimmed.
  return line.replace(/\r$/, "");
}

function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

/** The commands, as typed after `npm run cli --`: the one list the usage check and the dispatch share. */
const COMMANDS = ["migrate", "user add", "user passwd", "vault status", "vault rotate", "signing-key status", "signing-key rotate"] as const;
type Command = (typeof COMMANDS)[number];
const isCommand = (s: string): s is Command => (COMMANDS as readonly string[]).includes(s);

/**
 * A command's arguments, judged before anything else is read: `user add` and `user passwd` take
 * exactly one username, `user add` also `--role X` or `--role=X` (anywhere), `signing-key rotate`
 * `--now`; the others nothing.
 * `--` ends the options, for a username that starts with "-".
 * Anything else is refused with the usage (exit 2), so that a misplaced option is never taken for
 * a name, nor ignored.
 */
function argumentsOf(command: Command, rest: string[]): { username?: string; role?: string; now?: true } {
  const names: string[] = [];
  let role: string | undefined;
  let now = false;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === "--") {
      names.push(...rest.slice(i + 1)); // the end of options: a name may start with "-"
      break;
    }
    if (command === "user add" && a === "--role" && i + 1 < rest.length) role = rest[++i];
    else if (command === "user add" && a.startsWith("--role=")) role = a.slice("--role=".length);
    else if (command === "signing-key rotate" && a === "--now") now = true;
    // Only the option's name is echoed: `--password=…` must not put a password on the terminal.
    else if (a.startsWith("-")) fail(`${command}: unknown option ${a.split("=", 1)[0]!.slice(0, 40)}\n\n${USAGE}`);
    else names.push(a);
  }
  const wanted = command === "user add" || command === "user passwd" ? 1 : 0;
  if (names.length !== wanted) fail(`${command}: expected ${wanted === 1 ? "one username" : "no arguments"}\n\n${USAGE}`);
  return { ...(wanted === 1 ? { username: names[0]! } : {}), ...(role !== undefined ? { role } : {}), ...(now ? { now } : {}) };
}

async function main(argv: string[]) {
  const [cmd, sub, ...rest] = argv;
  if (!cmd || cmd === "help" || cmd === "--help") {
    process.stdout.write(USAGE);
    return;
  }
  // An unknown command is answered with the usage before the configuration is read: a typo is
  // told as a typo, not as the configuration it would have needed.
  const command = cmd === "migrate" ? cmd : `${cmd} ${sub ?? ""}`;
  if (!isCommand(command)) fail(USAGE);
  // (`migrate` is one word: what follows it is its arguments, none of which it takes)
  const args = argumentsOf(command, command === "migrate" && sub !== undefined ? [sub, ...rest] : rest);
  const config = loadConfig(process.env, { needsKeyring: command !== "migrate" });
  const log = createLogger(config.logLevel === "info" ? "warn" : config.logLevel);
  // A fault outside main's promise (a socket's error event, a stray rejection) would otherwise get
  // Node's own report, which prints drizzle's failed-query parameters.
  exitOnFault(log);

  if (command === "migrate") {
    const database = await openDatabase(config);
    try {
      const { applied } = await migrate(database.db);
      process.stdout.write(`migrations applied: ${applied}\n`);
      // (it may take a while on a large audit log: each step says when it is done)
      const online = await runOnlineSteps(database, { info: (fields, msg) => process.stdout.write(`${msg}: ${JSON.stringify(fields)}\n`) });
      if (!online.ran) process.stdout.write("indexes and backfills: another instance is running them\n");
      else if (online.built.length > 0 || online.placed > 0) {
        process.stdout.write(`indexes built: ${online.built.join(", ") || "none"}; audit outcomes placed: ${online.placed}\n`);
      }
    } finally {
      await database.close();
    }
    return;
  }

  // `vault` commands must run with a keyring that lacks an entry: that is what they report and repair.
  const { database } = await prepareDatabase(config, log, { checkKeyring: !command.startsWith("vault ") });
  try {
    const db = database.db;
    switch (command) {
      case "user add": {
        const username = normaliseUsername(args.username!);
        if (username === undefined) fail("user add: the username must be 3 to 64 of a-z 0-9 . _ -");
        const role = args.role ?? "member";
        if (role !== "admin" && role !== "member") fail("user add: --role is admin or member");
        const password = await readPassword(`password for ${username}: `);
        const n = passwordLength(password);
        if (n < PASSWORD_MIN || n > PASSWORD_MAX) fail(`user add: the password must be ${PASSWORD_MIN} to ${PASSWORD_MAX} characters`);
        const u = await createUser({ db, passwords: createPasswordHasher() }, null, meta, { username, password, role });
        process.stdout.write(`created ${u.role} ${u.username} (${u.id})\n`);
        return;
      }
      case "user passwd": {
        const username = args.username!.toLowerCase();
        const [u] = await db.select().from(users).where(eq(users.username, username)).limit(1);
        if (!u) fail(`user passwd: no user named "${username}"`);
        const password = await readPassword(`new password for ${username}: `);
        const n = passwordLength(password);
        if (n < PASSWORD_MIN || n > PASSWORD_MAX) fail(`user passwd: the password must be ${PASSWORD_MIN} to ${PASSWORD_MAX} characters`);
        const hash = await createPasswordHasher().hash(password);
        const revoked = await db.transaction(async (tx) => {
          await tx.update(users).set({ passwordHash: hash, updatedAt: new Date() }).where(eq(users.id, u.id));
          const r = await revokeSessions(tx, { userId: u.id }, "password_reset");
          await record(tx, {
            action: "user.update",
            outcome: "success",
            actor: null,
            meta,
            subjectId: u.id,
            detail: { username: u.username, changes: { password: "reset" }, via: "cli", sessions_revoked: r },
          });
          return r;
        });
        process.stdout.write(`password of ${u.username} set; ${revoked} session(s) ended\n`);
        return;
      }
      case "vault status": {
        const usage = await keyringUsage(db);
        const keyring = loadKeyring(config, log);
        process.stdout.write(`active entry: ${keyring.activeId}\n`);
        const ids = [...new Set([...keyring.ids(), ...usage.map((u) => u.keyringId)])];
        for (const id of ids) {
          const mine = usage.filter((u) => u.keyringId === id);
          const total = mine.reduce((s, u) => s + u.count, 0);
          const where = mine.map((u) => `${u.table}: ${u.count}`).join(", ");
          const state = keyring.has(id) ? (id === keyring.activeId ? "active" : "configured") : "MISSING from VAULT_KEYRING";
          process.stdout.write(`  ${id} (${state}): ${total} sealed item(s)${where ? ` (${where})` : ""}\n`);
        }
        // (scriptable: an entry still in use and missing from VAULT_KEYRING is a failure)
        if (ids.some((id) => !keyring.has(id) && usage.some((u) => u.keyringId === id && u.count > 0))) process.exit(1);
        return;
      }
      case "vault rotate": {
        const keyring = loadKeyring(config, log);
        const report = await rotateKeyring(db, keyring, {
          onBatch: (table, n) => void process.stdout.write(`  ${table}: re-sealed ${n}\n`),
        });
        const parts = Object.entries(report.byTable).map(([t, n]) => `${t}: ${n}`).join(", ");
        process.stdout.write(`re-sealed ${report.resealed} item(s) under "${keyring.activeId}"${parts ? ` (${parts})` : ""}\n`);
        await record(db, {
          action: "keyring.rotate",
          outcome: "success",
          actor: null,
          meta,
          detail: { via: "cli", active: keyring.activeId, resealed: report.resealed, by_table: report.byTable, skipped: report.skipped },
        });
        if (report.skipped > 0) {
          process.stderr.write(`${report.skipped} item(s) could not be opened and were left as they are; see \`vault status\`\n`);
          process.exit(1);
        }
        return;
      }
      case "signing-key status": {
        const states = await signingKeyStates(db);
        if (states.length === 0) process.stdout.write("no signing key yet (the service makes one at its first start)\n");
        for (const k of states) {
          const until = k.retiredAt && k.state !== "retired" ? ` until ${k.retiredAt.toISOString()}` : "";
          const state =
            k.state === "retired"
              ? `retired ${k.retiredAt!.toISOString()}`
              : k.state === "published"
                ? `published, signing from ${k.signsFrom!.toISOString()}`
                : k.state === "signing"
                  ? `signing, verifying${until}`
                  : `verifying${until}`;
          process.stdout.write(`${k.kid}  created ${k.createdAt.toISOString()}  ${state}  (sealed under "${k.keyringId}")\n`);
        }
        return;
      }
      case "signing-key rotate": {
        const keyring = loadKeyring(config, log);
        const graceS = args.now ? 0 : config.accessTokenTtlS + ROTATION_GRACE_S;
        const r = await rotateSigningKey(db, keyring, { graceS, meta, via: "cli" });
        const from = new Date(r.createdAt.getTime() + PUBLISH_LEAD_MS).toISOString();
        process.stdout.write(
          args.now
            ? `new signing key ${r.kid}; every instance signs with it within ${WAIT_AFTER_MS / 1000} s\n`
            : `new signing key ${r.kid}: published now, every instance signs with it from ${from}\n`,
        );
        for (const k of r.retiring) {
          process.stdout.write(
            args.now
              ? `  ${k.kid} retired: the access tokens it signed are refused (within ${WAIT_AFTER_MS / 1000} s on every instance that reaches the database); frontends refresh them\n`
              : `  ${k.kid} verifies until ${k.retiresAt.toISOString()}\n`,
          );
        }
        return;
      }
      default:
        command satisfies never; // a command listed in COMMANDS and not handled here fails to compile
    }
  } finally {
    await database.close();
  }
}

main(process.argv.slice(2)).catch((err) => {
  if (err instanceof ConfigError) {
    for (const p of err.problems) process.stderr.write(`config: ${p}\n`);
    process.exit(78);
  }
  if (err instanceof StartupError || err instanceof KeyringError) fail(err.message);
  if (err && typeof err === "object" && "code" in err && (err as { code: string }).code === "conflict") fail(String((err as Error).message));
  // Never the raw message: drizzle's lists the failed query's parameters (hashes, sealed boxes).
  const d = describeError(err);
  process.stderr.write(`failed: ${d.name ?? "error"}: ${d.message ?? ""}${d.code ? ` (${d.code})` : ""}\n`);
  process.exit(1);
});

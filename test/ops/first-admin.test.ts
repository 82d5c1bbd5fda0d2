// The first start's admin (startup.ts ensureFirstAdmin): on PostgreSQL without BOOTSTRAP_ADMIN_*,
// a database without any user is told at start (nobody could log in, and nothing said why).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { Keyring } from "../../src/crypto/keyring.js";
import { users } from "../../src/db/schema.js";
import { createDeps, type Deps } from "../../src/deps.js";
import { createLogger } from "../../src/log.js";
import { createPasswordHasher } from "../../src/services/passwords.js";
import { ensureFirstAdmin } from "../../src/startup.js";
import { FAST_HASH, TEST_KEYRING, freshDatabase, type TestDatabase } from "../helpers/harness.js";

describe("a start on PostgreSQL without BOOTSTRAP_ADMIN_*", () => {
  let database: TestDatabase;
  let deps: Deps;
  const lines: Record<string, unknown>[] = [];
  beforeAll(async () => {
    database = await freshDatabase();
    // (DATABASE_URL only chooses the branch here: the test's own database is the one used)
    const config = loadConfig({ DATABASE_URL: "postgres://app@db.example/x", VAULT_KEYRING: TEST_KEYRING, LOG_LEVEL: "info" });
    const log = createLogger("info", { write: (l: string) => void lines.push(JSON.parse(l)) });
    deps = await createDeps({ config, database, keyring: Keyring.parse(TEST_KEYRING), log, passwords: createPasswordHasher({ params: FAST_HASH }) });
  });
  afterAll(() => database.drop());

  it("warns once that no user exists, naming both ways to make one; prints no password", async () => {
    const printed: string[] = [];
    await ensureFirstAdmin(deps, (l) => printed.push(l));
    expect(printed).toEqual([]);
    const warned = lines.filter((l) => l.level === "warn" && String(l.msg).startsWith("no user exists yet"));
    expect(warned).toHaveLength(1);
    expect(String(warned[0]!.msg)).toContain("BOOTSTRAP_ADMIN_USERNAME");
    expect(String(warned[0]!.msg)).toContain("npm run cli -- user add --role admin");
  });

  it("says nothing once a user exists", async () => {
    await deps.db.insert(users).values({ username: "someone", passwordHash: "x", role: "admin" });
    lines.length = 0;
    await ensureFirstAdmin(deps, () => {});
    expect(lines.filter((l) => String(l.msg).startsWith("no user exists yet"))).toEqual([]);
  });
});

// Issue 3 point 5, the operator's side of rotation: `vault status` and `vault rotate` run as a
// real subprocess against the test's database. Needs TEST_DATABASE_URL: the CLI is another
// process, and the test's PGlite lives in this one's memory.
import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eq } from "drizzle-orm";
import { loadConfig } from "../../src/config.js";
import { auditEvents } from "../../src/db/schema.js";
import { createLogger } from "../../src/log.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { StartupError, prepareDatabase } from "../../src/startup.js";
import type { Service } from "../helpers/harness.js";
import { entry, keyringIds, keyringMaterial, randomApiKey, startVaultService, storeKey, useKey } from "./common.js";

const K1 = entry("k1", 0x41);
const K2 = entry("k2", 0x42);
const MATERIAL = [keyringMaterial(0x41), keyringMaterial(0x42)];
const ON_POSTGRES = Boolean(process.env.TEST_DATABASE_URL);
const ROOT = resolve(import.meta.dirname, "../..");

type Run = { code: number; stdout: string; stderr: string };

function cli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((done) => {
    execFile(
      resolve(ROOT, "node_modules/.bin/tsx"),
      ["src/cli.ts", ...args],
      { cwd: ROOT, env: { ...process.env, LOG_LEVEL: "warn", ...env }, timeout: 60_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
        done({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

const noMaterial = (r: Run) => {
  for (const m of MATERIAL) expect(r.stdout + r.stderr).not.toContain(m);
};

describe("the vault CLI", () => {
  let sim: Simulator;
  let svc: Service | undefined;
  const keys: { id: string; plain: string }[] = [];
  let token = "";
  let url = "";

  beforeAll(async () => {
    if (!ON_POSTGRES) return;
    sim = await startSimulator();
    svc = await startVaultService(sim, { env: { VAULT_KEYRING: K1 } });
    url = svc.database.url!;
    const u = await svc.addUser(svc.admin.token, "cli-user");
    token = u.token;
    for (let i = 0; i < 2; i++) {
      const plain = randomApiKey();
      sim.addKey(plain, "cli@example.com");
      keys.push({ id: await storeKey(svc, u.token, plain, `cli ${i}`), plain });
    }
  });
  afterAll(async () => {
    await svc?.close();
    await sim?.close();
  });

  /** The service's own start sequence against the test database, with `keyring`. */
  async function start(keyring: string) {
    const { database } = await prepareDatabase(loadConfig({ DATABASE_URL: url, VAULT_KEYRING: keyring }), createLogger("silent"));
    await database.close();
  }

  it.skipIf(!ON_POSTGRES)(
    "the start (prepareDatabase) refuses a keyring that lacks k1, naming it (skipped on PGlite: needs TEST_DATABASE_URL, a DATABASE_URL for the start sequence to open)",
    async () => {
      let err: unknown;
      await start(K2).catch((e) => (err = e));
      expect(err).toBeInstanceOf(StartupError);
      expect((err as Error).message).toContain('"k1"');
      for (const m of MATERIAL) expect((err as Error).message).not.toContain(m);
      await expect(start(`${K2},${K1}`)).resolves.toBeUndefined();
      await expect(start(K1)).resolves.toBeUndefined();
    },
  );

  it.skipIf(!ON_POSTGRES)(
    "migrate runs without VAULT_KEYRING (a migration job need not hold it); a command that opens the vault still requires it (skipped on PGlite: needs TEST_DATABASE_URL)",
    async () => {
      const env = { DATABASE_URL: url, VAULT_KEYRING: "" };
      const migrate = await cli(["migrate"], env);
      expect(migrate.code, migrate.stderr).toBe(0);
      expect(migrate.stdout).toContain("migrations applied: 0\n");
      const status = await cli(["vault", "status"], env);
      expect(status.code).toBe(78);
      expect(status.stderr).toContain("config: VAULT_KEYRING: required when DATABASE_URL is set");
    },
  );

  it.skipIf(!ON_POSTGRES)(
    "vault status / vault rotate print the counts and re-seal everything (skipped on PGlite: needs TEST_DATABASE_URL, since the CLI subprocess cannot open this process's in-memory PGlite)",
    async () => {
      const counts = "4 sealed item(s) (haltman_keys: 2, signing_keys: 1, vault_secrets: 1)";

      // With k2 alone the entry k1 is reported missing (status still runs: it is what reports it).
      const missing = await cli(["vault", "status"], { DATABASE_URL: url, VAULT_KEYRING: K2 });
      expect(missing.code, "an entry in use and missing: exit 1, for scripts").toBe(1);
      expect(missing.stdout).toContain("active entry: k2\n");
      expect(missing.stdout).toContain("  k2 (active): 0 sealed item(s)\n");
      expect(missing.stdout).toContain(`  k1 (MISSING from VAULT_KEYRING): ${counts}\n`);
      noMaterial(missing);

      // Rotating without k1 cannot open anything: it says so, fails, and changes nothing.
      const blind = await cli(["vault", "rotate"], { DATABASE_URL: url, VAULT_KEYRING: K2 });
      expect(blind.code).toBe(1);
      expect(blind.stderr).toContain("4 item(s) could not be opened");
      noMaterial(blind);
      expect(await keyringIds(svc!.deps.db)).toEqual({ haltman_keys: { k1: 2 }, signing_keys: { k1: 1 }, vault_secrets: { k1: 1 } });

      const before = await cli(["vault", "status"], { DATABASE_URL: url, VAULT_KEYRING: `${K2},${K1}` });
      expect(before.code, before.stderr).toBe(0);
      expect(before.stdout).toContain(`  k1 (configured): ${counts}\n`);
      expect(before.stdout).toContain("  k2 (active): 0 sealed item(s)\n");

      const rotate = await cli(["vault", "rotate"], { DATABASE_URL: url, VAULT_KEYRING: `${K2},${K1}` });
      expect(rotate.code, rotate.stderr).toBe(0);
      expect(rotate.stdout).toContain('re-sealed 4 item(s) under "k2" (haltman_keys: 2, signing_keys: 1, vault_secrets: 1)\n');
      noMaterial(rotate);
      expect(await keyringIds(svc!.deps.db)).toEqual({ haltman_keys: { k2: 2 }, signing_keys: { k2: 1 }, vault_secrets: { k2: 1 } });
      // audited, with what it did and no material
      const events = await svc!.deps.db.select().from(auditEvents).where(eq(auditEvents.action, "keyring.rotate"));
      // (the blind one too, which opened nothing: every run of it is on record)
      expect(events.sort((a, b) => a.seq - b.seq).map((e) => [e.outcome, e.actorId, e.detail])).toEqual([
        ["success", null, { via: "cli", active: "k2", resealed: 0, by_table: { haltman_keys: 0 }, skipped: 4 }],
        ["success", null, { via: "cli", active: "k2", resealed: 4, by_table: { haltman_keys: 2, signing_keys: 1, vault_secrets: 1 }, skipped: 0 }],
      ]);

      const after = await cli(["vault", "status"], { DATABASE_URL: url, VAULT_KEYRING: K2 });
      expect(after.code, after.stderr).toBe(0);
      expect(after.stdout).toContain(`  k2 (active): ${counts}\n`);
      expect(after.stdout).not.toContain("k1");
      noMaterial(after);

      await expect(start(K2)).resolves.toBeUndefined();

      // The keys open with k2 alone, and the old tokens still verify.
      const svc2 = await startVaultService(sim, { database: svc!.database, env: { VAULT_KEYRING: K2 } });
      try {
        for (const k of keys) expect(await useKey(svc2, sim, token, k.id)).toBe(k.plain);
      } finally {
        await svc2.close();
      }
    },
  );
});

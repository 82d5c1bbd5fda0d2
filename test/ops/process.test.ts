// The entry point as an operator runs it: a real process, embedded mode, signals.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";

const ROOT = join(import.meta.dirname, "..", "..");
const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });

function cli(args: string[], env: Record<string, string>, stdin: string) {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli.ts", ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH!, HOME: process.env.HOME ?? "/tmp", ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += d));
  child.stderr!.on("data", (d) => (stderr += d));
  child.stdin!.end(stdin);
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.once("exit", (code) => resolve({ code, stdout, stderr })),
  );
}

function run(env: Record<string, string>) {
  const child = spawn(process.execPath, ["--import", "tsx", "src/index.ts"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH!, HOME: process.env.HOME ?? "/tmp", LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out = { stdout: "", stderr: "" };
  child.stdout!.on("data", (d) => (out.stdout += d));
  child.stderr!.on("data", (d) => (out.stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, out, exited };
}

async function waitReady(url: string, child: ChildProcess) {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error("the service exited");
    try {
      if ((await fetch(url + "/readyz")).ok) return;
    } catch {
      // not yet listening
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("the service did not become ready");
}

// Its processes are given their own environment, never TEST_DATABASE_URL's server: the file is the
// same in both of CI's passes, and runs in the embedded one alone (it takes 90 s).
describe.skipIf(!!process.env.TEST_DATABASE_URL)("the service process (skipped with TEST_DATABASE_URL: its processes never use it)", () => {
  it("refuses a bad configuration with one line per bad variable, exit 78, never echoing a value", async () => {
    const { out, exited } = run({ PORT: "not-a-port", RATE_LIMIT_KEY: "secretish-value/week", DATABASE_URL: "postgres://u:p@127.0.0.1:1/x" });
    expect(await exited).toBe(78);
    const lines = out.stderr.trim().split("\n");
    expect(lines.filter((l) => l.startsWith("config: "))).toHaveLength(3); // PORT, RATE_LIMIT_KEY, VAULT_KEYRING
    expect(out.stderr).toMatch(/PORT/);
    expect(out.stderr).toMatch(/RATE_LIMIT_KEY/);
    expect(out.stderr).toMatch(/VAULT_KEYRING/);
    expect(out.stderr).not.toContain("secretish-value");
  });

  it("a database it cannot reach at start: one line naming DATABASE_URL and the cause, no stack, exit 69", async () => {
    const { out, exited } = run({ DATABASE_URL: "postgres://app:Sekrit-pw@127.0.0.1:1/x", VAULT_KEYRING: `k1:${Buffer.alloc(32, 1).toString("base64")}`, PORT: "0" });
    expect(await exited).toBe(69);
    const lines = out.stderr.trim().split("\n");
    expect(lines, out.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^startup: the database of DATABASE_URL cannot be used: .*ECONNREFUSED/);
    expect(out.stderr).not.toMatch(/\bat .*\.(js|ts):\d+/);
    expect(out.stderr + out.stdout).not.toContain("Sekrit-pw");
  }, 30_000);

  describe("embedded mode, first start", () => {
    let dataDir: string;
    let sim: Simulator;
    let url: string;
    let proc: ReturnType<typeof run>;
    beforeAll(async () => {
      dataDir = mkdtempSync(join(tmpdir(), "hbff-proc-"));
      sim = await startSimulator({ keys: { ["b".repeat(64)]: "o@example.com" } });
      const port = await freePort();
      url = `http://127.0.0.1:${port}`;
      proc = run({ DATA_DIR: dataDir, PORT: String(port), HALTMAN_BASE_URL: sim.url, RATE_LIMIT_KEY: "200/min", LOG_LEVEL: "info" });
      await waitReady(url, proc.child);
    }, 60_000);
    afterAll(async () => {
      if (proc.child.exitCode === null) proc.child.kill("SIGKILL");
      await sim.close();
      rmSync(dataDir, { recursive: true, force: true });
    });

    it("prints the admin's random password once, which logs in; the generated keyring is 0600", async () => {
      const m = /username: admin\s+password: (\S+)/.exec(proc.out.stdout);
      expect(m, proc.out.stdout).not.toBeNull();
      const login = await fetch(url + "/v1/auth/login", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ username: "admin", password: m![1] }),
      });
      expect(login.status).toBe(200);
      expect(statSync(join(dataDir, "vault-keyring")).mode & 0o777).toBe(0o600);
      expect(proc.out.stdout).toMatch(/VAULT_KEYRING is not set/);
    });

    it("maintains its embedded database at start (PGlite has no autovacuum): every table analyzed once", async () => {
      const done = async () => proc.out.stdout.split("\n").filter((l) => l.includes("embedded database maintained"));
      for (let i = 0; i < 50 && (await done()).length === 0; i++) await new Promise((r) => setTimeout(r, 100));
      const [line] = await done();
      expect(line, proc.out.stdout).toBeDefined();
      const tables = (JSON.parse(line!).tables as { table: string }[]).map((t) => t.table);
      expect(tables).toEqual(expect.arrayContaining(["audit_events", "users", "rate_limit_buckets"]));
    });

    it("warns at start of a key limit that upstream's own would cut", () => {
      const warned = proc.out.stdout.split("\n").filter((l) => l.includes("RATE_LIMIT_KEY"));
      expect(warned).toHaveLength(1);
      expect(JSON.parse(warned[0]!)).toMatchObject({
        level: "warn",
        msg: "config: RATE_LIMIT_KEY=200/min is a faster rate than upstream's 120/min per key: unless upstream allows this deployment more, it will answer 429 and the service pause",
      });
    });

    it("while it runs, a CLI command (exit 2) or a second service (exit 78) on its DATA_DIR is refused, naming its pid", async () => {
      const r = await cli(["vault", "status"], { DATA_DIR: dataDir }, "");
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(`in use by process ${proc.child.pid}`);
      const second = run({ DATA_DIR: dataDir, PORT: String(await freePort()), HALTMAN_BASE_URL: sim.url });
      expect(await second.exited, second.out.stderr).toBe(78);
      expect(second.out.stderr).toContain(`in use by process ${proc.child.pid}`);
      expect((await fetch(url + "/readyz")).status).toBe(200); // the service carries on
    }, 60_000);

    it("on SIGTERM finishes the request in flight, then exits 0", async () => {
      const m = /password: (\S+)/.exec(proc.out.stdout)!;
      const { access_token } = (await (
        await fetch(url + "/v1/auth/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "admin", password: m[1] }) })
      ).json()) as { access_token: string };
      const auth = { authorization: `Bearer ${access_token}`, "content-type": "application/json" };
      expect((await fetch(url + "/v1/keys", { method: "POST", headers: auth, body: JSON.stringify({ name: "k", api_key: "b".repeat(64) }) })).status).toBe(201);
      sim.faults.push({ kind: "delay", ms: 1_000 });
      const inFlight = fetch(url + "/api/handle/create", { method: "POST", headers: auth, body: JSON.stringify({ handle: "graceful" }) });
      await new Promise((r) => setTimeout(r, 300));
      proc.child.kill("SIGTERM");
      const r = await inFlight;
      expect(r.status).toBe(200);
      const stopping = performance.now();
      expect(await proc.exited).toBe(0);
      // drained promptly: not held open by the client's idle keep-alive connection
      expect(performance.now() - stopping).toBeLessThan(5_000);
      await expect(fetch(url + "/healthz")).rejects.toThrow();
    }, 30_000);
  });

  it("the CLI answers an unknown command with its usage (exit 2) before reading the configuration", async () => {
    // DATABASE_URL without VAULT_KEYRING would be a configuration error (exit 78) for a real command
    const r = await cli(["migrat"], { DATABASE_URL: "postgres://127.0.0.1:9/x", LOG_LEVEL: "warn" }, "");
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("usage: npm run cli -- <command>");
    expect(r.stderr).not.toContain("config:");
  }, 30_000);

  it("the CLI adds a user and resets a password (read from standard input, never trimmed); the service then logs them in", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "hbff-cli-"));
    try {
      const env = { DATA_DIR: dataDir, LOG_LEVEL: "warn" };
      const add = await cli(["user", "add", "Alice", "--role", "admin"], env, " first password \n");
      expect(add.code, add.stderr).toBe(0);
      expect(add.stdout).toMatch(/created admin alice/);
      const dup = await cli(["user", "add", "alice"], env, "another password\n");
      expect(dup.code).not.toBe(0);
      // the option anywhere, in either form; never taken for the name, nor ignored
      const before = await cli(["user", "add", "--role", "admin", "bob"], env, "a long password\n");
      expect(before.stdout, before.stderr).toMatch(/created admin bob/);
      const joined = await cli(["user", "add", "carol", "--role=admin"], env, "a long password\n");
      expect(joined.stdout, joined.stderr).toMatch(/created admin carol/);
      const dashed = await cli(["user", "add", "--", "-ops"], env, "a long password\n");
      expect(dashed.stdout, dashed.stderr).toMatch(/created member -ops/);
      expect((await cli(["user", "passwd", "--", "-ops"], env, "another long password\n")).code).toBe(0);
      for (const args of [["user", "add", "dave", "--rol", "admin"], ["user", "add", "dave", "erin"], ["user", "add"], ["user", "passwd", "alice", "--force"], ["vault", "status", "now"], ["migrate", "--dry-run"], ["migrate", "extra"]]) {
        const r = await cli(args, env, "a long password\n");
        expect(r.code, args.join(" ")).toBe(2);
        expect(r.stdout, args.join(" ")).not.toMatch(/created/);
      }
      // an option's value is never echoed (it may be a password typed where it does not belong)
      const leaked = await cli(["user", "add", "frank", "--password=Hunter2-secret"], env, "a long password\n");
      expect(leaked.code).toBe(2);
      expect(leaked.stderr).toContain("unknown option --password");
      expect(leaked.stderr + leaked.stdout).not.toContain("Hunter2-secret");
      const short = await cli(["user", "passwd", "alice"], env, "short\n");
      expect(short.code, "7 characters are refused").toBe(2);
      const reset = await cli(["user", "passwd", "alice"], env, "second password\n");
      expect(reset.code, reset.stderr).toBe(0);

      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const proc = run({ DATA_DIR: dataDir, PORT: String(port) });
      try {
        await waitReady(url, proc.child);
        expect(proc.out.stdout, "a user exists: no first-run admin is made").not.toMatch(/password:/);
        const login = (password: string) =>
          fetch(url + "/v1/auth/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "alice", password }) });
        expect((await login(" first password ")).status).toBe(401);
        expect((await login("second password")).status).toBe(200);
      } finally {
        proc.child.kill("SIGTERM");
        await proc.exited;
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000); // some twenty processes, each opening the embedded database: 28 s alone, 37-60 s beside other work

  it("the CLI rotates the signing key: `--now` retires the old one, whose tokens the service then refuses; the rotation is audited; status lists the keys", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "hbff-signing-"));
    const env = { DATA_DIR: dataDir, LOG_LEVEL: "warn" };
    const password = "a long password";
    const start = async () => {
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const proc = run({ DATA_DIR: dataDir, PORT: String(port) });
      await waitReady(url, proc.child);
      return { url, proc };
    };
    const stop = async (p: { proc: ReturnType<typeof run> }) => {
      p.proc.child.kill("SIGTERM");
      await p.proc.exited;
    };
    const kidOf = (token: string) => (JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString()) as { kid: string }).kid;
    const login = async (url: string) =>
      (
        (await (
          await fetch(url + "/v1/auth/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "ops", password }) })
        ).json()) as { access_token: string }
      ).access_token;
    const me = (url: string, token: string) => fetch(url + "/v1/auth/me", { headers: { authorization: `Bearer ${token}` } });
    try {
      const none = await cli(["signing-key", "status"], env, "");
      expect(none.code, none.stderr).toBe(0);
      expect(none.stdout).toMatch(/no signing key yet/);
      expect((await cli(["user", "add", "--role", "admin", "ops"], env, `${password}\n`)).code).toBe(0);

      let svc = await start();
      const old = await login(svc.url);
      expect((await me(svc.url, old)).status).toBe(200);
      await stop(svc);

      for (const args of [["signing-key", "rotate", "--later"], ["signing-key", "rotate", "now"], ["signing-key", "status", "--now"]]) {
        const r = await cli(args, env, "");
        expect(r.code, args.join(" ")).toBe(2);
      }
      const rotated = await cli(["signing-key", "rotate", "--now"], env, "");
      expect(rotated.code, rotated.stderr).toBe(0);
      const kid2 = /new signing key ([0-9a-f-]{36})/.exec(rotated.stdout)?.[1];
      expect(kid2, rotated.stdout).toBeDefined();
      expect(rotated.stdout).toContain(`${kidOf(old)} retired`);
      const status = await cli(["signing-key", "status"], env, "");
      expect(status.stdout).toMatch(new RegExp(`^${kid2}  created \\S+  signing, verifying  `, "m"));
      expect(status.stdout).toMatch(new RegExp(`^${kidOf(old)}  created \\S+  retired `, "m"));

      svc = await start();
      try {
        expect((await me(svc.url, old)).status).toBe(401);
        const fresh = await login(svc.url);
        expect(kidOf(fresh)).toBe(kid2);
        expect((await me(svc.url, fresh)).status).toBe(200);
        const jwks = (await (await fetch(svc.url + "/.well-known/jwks.json")).json()) as { keys: { kid: string }[] };
        expect(jwks.keys.map((k) => k.kid)).toEqual([kid2]);
        const audit = (await (
          await fetch(svc.url + "/v1/audit?action=signing_key.rotate", { headers: { authorization: `Bearer ${fresh}` } })
        ).json()) as { events: { actor: unknown; outcome: string; detail: Record<string, unknown> }[] };
        expect(audit.events).toHaveLength(1);
        expect(audit.events[0]).toMatchObject({ actor: null, outcome: "success", detail: { via: "cli", kid: kid2, immediate: true } });

        // a planned rotation, the service running: published at once, signing only later
        const planned = await cli(["signing-key", "rotate"], env, "");
        expect(planned.code, planned.stderr).toBe(2); // the service holds DATA_DIR
      } finally {
        await stop(svc);
      }
      const planned = await cli(["signing-key", "rotate"], env, "");
      expect(planned.code, planned.stderr).toBe(0);
      expect(planned.stdout).toMatch(/published now, every instance signs with it from /);
      expect(planned.stdout).toMatch(new RegExp(`${kid2} verifies until `));
      const after = await cli(["signing-key", "status"], env, "");
      expect(after.stdout).toMatch(/published, signing from /);
      expect(after.stdout).toMatch(new RegExp(`^${kid2}  created \\S+  signing, verifying until `, "m"));
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 90_000);
});

// A fault nothing handled ends the process with one fatal log line that carries no secret.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = join(import.meta.dirname, "..", "..");
const SECRET = "$argon2id$v=19$m=19456,t=2,p=1$c2VjcmV0LXNhbHQ$not-a-real-hash-but-secret";

/** Runs a script in a process of its own with the service's logger and fault handler installed. */
function runWithHandler(body: string, install = true) {
  const script = `
    import { createLogger } from "./src/log.ts";
    import { exitOnFault } from "./src/fatal.ts";
    import { DrizzleQueryError } from "drizzle-orm/errors";
    const log = createLogger("info");
    ${install ? "exitOnFault(log);" : ""}
    const failed = () => new DrizzleQueryError("update users set password_hash = $1", [${JSON.stringify(SECRET)}], new Error("connection lost"));
    ${body}
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    env: { PATH: process.env.PATH!, HOME: process.env.HOME ?? "/tmp" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d) => (stdout += d));
  child.stderr!.on("data", (d) => (stderr += d));
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.once("exit", (code) => resolve({ code, stdout, stderr })),
  );
}

const fatalLines = (stdout: string) =>
  stdout
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.level === "fatal");

describe("a fault nothing handled", () => {
  it("without the handler, Node's own report quotes the failed query's parameters (why it exists)", async () => {
    const r = await runWithHandler(`setTimeout(() => { throw failed(); }, 10);`, false);
    expect(r.code).not.toBe(0);
    expect(r.stderr + r.stdout).toContain(SECRET);
  });

  it("an uncaught exception: one fatal line without the parameters, exit 1", async () => {
    const r = await runWithHandler(`setTimeout(() => { throw failed(); }, 10);`);
    expect(r.code).toBe(1);
    const lines = fatalLines(r.stdout);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ fault: "uncaught_exception", err: { name: "Error", message: "connection lost" } });
    expect(r.stdout + r.stderr).not.toContain(SECRET);
  });

  it("an unhandled rejection: the same, with its kind", async () => {
    const r = await runWithHandler(`Promise.reject(failed()); setTimeout(() => {}, 5000);`);
    expect(r.code).toBe(1);
    const lines = fatalLines(r.stdout);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ fault: "unhandled_rejection", err: { message: "connection lost" } });
    expect(r.stdout + r.stderr).not.toContain(SECRET);
  });

  it("the line is written even when the process is busy logging (pino flushes on exit)", async () => {
    const r = await runWithHandler(`for (let i = 0; i < 2000; i++) log.info({ i }, "filler"); setImmediate(() => { throw failed(); });`);
    expect(r.code).toBe(1);
    expect(fatalLines(r.stdout)).toHaveLength(1);
    expect(r.stdout.trim().split("\n").length).toBe(2001);
  });
});

/** A module loaded with --import into a real process; `trigger` calls fault() to throw outside any handler. */
function writeFaultPreload(dir: string, trigger: string): string {
  const preload = join(dir, "fault.mjs");
  writeFileSync(
    preload,
    `import { DrizzleQueryError } from ${JSON.stringify(pathToFileURL(join(ROOT, "node_modules/drizzle-orm/errors.js")).href)};
     const fault = () => { throw new DrizzleQueryError("select 1", [${JSON.stringify(SECRET)}], new Error("connection lost")); };
     ${trigger}`,
  );
  return preload;
}

describe("the CLI process", () => {
  it("installs the handler: a fault during a command ends it with the fatal line, exit 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hbff-fatal-cli-"));
    try {
      // Throws once a handler beyond those present at preload time is installed (the CLI's, right
      // after its logger; the command is then opening its database), or after 40 s if none ever
      // is: then Node's own report would print the secret.
      const preload = writeFaultPreload(
        dir,
        `const before = process.listenerCount("uncaughtException"), t0 = Date.now();
         const poll = setInterval(() => {
           if (process.listenerCount("uncaughtException") > before || Date.now() - t0 > 40_000) { clearInterval(poll); fault(); }
         }, 5);`,
      );
      const child = spawn(process.execPath, ["--import", "tsx", "--import", preload, "src/cli.ts", "user", "add", "alice"], {
        cwd: ROOT,
        env: { PATH: process.env.PATH!, HOME: process.env.HOME ?? "/tmp", LOG_LEVEL: "warn", DATA_DIR: join(dir, "data") },
        stdio: ["pipe", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout!.on("data", (d) => (stdout += d));
      child.stderr!.on("data", (d) => (stderr += d));
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
      expect(code, stderr).toBe(1);
      const lines = fatalLines(stdout.split("\n").filter((l) => l.startsWith("{")).join("\n"));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ fault: "uncaught_exception", err: { message: "connection lost" } });
      expect(stdout + stderr).not.toContain(SECRET);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("the service process", () => {
  it("installs the handler: a fault inside it ends it with the fatal line, exit 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hbff-fatal-"));
    try {
      // Loaded into the service's own process: SIGUSR2 throws there, outside any handler of ours.
      const preload = writeFaultPreload(dir, `process.on("SIGUSR2", () => setImmediate(fault));`);
      const port = await new Promise<number>((resolve) => {
        const srv = createServer().listen(0, "127.0.0.1", () => {
          const p = (srv.address() as { port: number }).port;
          srv.close(() => resolve(p));
        });
      });
      const child = spawn(process.execPath, ["--import", "tsx", "--import", preload, "src/index.ts"], {
        cwd: ROOT,
        env: { PATH: process.env.PATH!, HOME: process.env.HOME ?? "/tmp", LOG_LEVEL: "warn", DATA_DIR: join(dir, "data"), PORT: String(port), HALTMAN_BASE_URL: "http://127.0.0.1:9" },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout!.on("data", (d) => (stdout += d));
      child.stderr!.on("data", (d) => (stderr += d));
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      let ready = false;
      for (let i = 0; i < 300 && !ready && child.exitCode === null; i++) {
        ready = await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok, () => false);
        if (!ready) await new Promise((r) => setTimeout(r, 100));
      }
      expect(ready, stderr).toBe(true);
      child.kill("SIGUSR2");
      expect(await exited).toBe(1);
      const lines = fatalLines(stdout.split("\n").filter((l) => l.startsWith("{")).join("\n"));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ fault: "uncaught_exception", service: "haltman-bff" });
      expect(stdout + stderr).not.toContain(SECRET);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

// Child processes for the benchmarks: started, awaited until they listen, sampled, stopped.
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export type Child = { proc: ChildProcess; url: string; pid: number; peakRssMb(): number; stop(): Promise<void> };

/** Starts `node <args>` and waits until `url + readyPath` answers 200. */
export async function startChild(args: string[], env: Record<string, string>, url: string, readyPath = "/healthz"): Promise<Child> {
  const proc = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr!.on("data", (d) => {
    stderr = (stderr + d).slice(-4000);
    if (process.env.CHILD_STDERR) process.stderr.write(d);
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${args.join(" ")} exited ${proc.exitCode}: ${stderr}`);
    try {
      const r = await fetch(url + readyPath);
      if (r.status === 200 || (readyPath === "/" && r.status < 500)) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL"); // not left behind
      throw new Error(`${args.join(" ")} did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    proc,
    url,
    pid: proc.pid!,
    // VmHWM: the peak resident set size of the process's whole life.
    peakRssMb() {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${proc.pid}/status`, "utf8"));
      return m ? Number(m[1]) / 1024 : NaN;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null) return resolve();
        proc.once("exit", () => resolve());
        proc.kill("SIGTERM");
        setTimeout(() => proc.kill("SIGKILL"), 10_000).unref();
      }),
  };
}

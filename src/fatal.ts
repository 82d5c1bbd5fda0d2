// The last word of a process that hit a fault nothing handled. Node's own report prints the
// error's message to stderr, and some messages quote secrets: drizzle's DrizzleQueryError lists a
// failed query's parameters (password hashes, sealed boxes). Instead, one fatal log line with what
// describeError() lets through, then exit 1: the state after such a fault is unknown, and a
// supervisor (the container's restart policy) starts a clean process.
import type { Logger } from "pino";
import { describeError } from "./log.js";

export function exitOnFault(log: Logger, proc: NodeJS.Process = process): void {
  let exiting = false;
  const fault = (kind: "uncaught_exception" | "unhandled_rejection") => (err: unknown) => {
    if (exiting) return;
    exiting = true;
    try {
      log.fatal({ err: describeError(err), fault: kind }, "a fault nothing handled; exiting");
    } finally {
      // pino flushes its destination on exit
      proc.exit(1);
    }
  };
  proc.on("uncaughtException", fault("uncaught_exception"));
  proc.on("unhandledRejection", fault("unhandled_rejection"));
}

import { DrizzleQueryError } from "drizzle-orm";
import pino, { type DestinationStream, type Logger } from "pino";

/**
 * Structured JSON logs. Redaction is the second line of defence: nothing secret is passed to a
 * logger on purpose, and these paths are censored should one ever be.
 */
export const REDACT_PATHS = [
  "authorization",
  "*.authorization",
  "headers.authorization",
  "*.headers.authorization",
  'headers["x-api-key"]',
  '*.headers["x-api-key"]',
  "password",
  "*.password",
  "current_password",
  "*.current_password",
  "new_password",
  "*.new_password",
  "api_key",
  "*.api_key",
  "access_token",
  "*.access_token",
  "refresh_token",
  "*.refresh_token",
  "token",
  "*.token",
];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "haltman-bff" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/** What of an error may be logged: never a driver's message that quotes query parameters. */
export function describeError(err: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  let e: unknown = err;
  // drizzle wraps driver errors in DrizzleQueryError (whose name is plain "Error"), with a message
  // that lists the query's parameters (password hashes, sealed boxes): log the driver's error under it.
  for (let depth = 0; depth < 4 && e instanceof DrizzleQueryError && e.cause; depth++) e = e.cause;
  if (e instanceof DrizzleQueryError) {
    out.name = "DrizzleQueryError";
    out.message = "query failed";
  } else if (e instanceof Error) {
    out.name = e.name;
    out.message = e.message.slice(0, 500);
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") out.code = code;
  } else {
    out.message = typeof e;
  }
  // Frames only: the stack's first lines repeat the message.
  if (err instanceof Error && err.stack) {
    out.stack = err.stack
      .split("\n")
      .filter((l) => /^\s+at /.test(l))
      .slice(0, 8)
      .join("\n");
  }
  return out;
}

// One error class, one closed set of codes, one table from code to HTTP status.
// Services throw AppError; app.onError is the only place that turns it into a response.

export const ERROR_STATUS = {
  invalid_json: 400,
  invalid_params: 400,
  key_required: 400,
  unauthorized: 401,
  invalid_credentials: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  idempotency_key_reused: 422,
  rate_limited: 429,
  internal_error: 500,
  upstream_unavailable: 502,
  upstream_error: 502,
  upstream_key_rejected: 502,
  unavailable: 503,
  upstream_timeout: 504,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** Extra, non-secret fields that help a client: `field`, `reason`, `retry_after`, `upstream_status`. */
export type ErrorExtras = {
  field?: string;
  reason?: string;
  retry_after?: number;
  upstream_status?: number;
};

export class AppError extends Error {
  readonly status: number;
  /** response headers that belong with this error (RateLimit, Retry-After); never secret */
  headers: Record<string, string>;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly extras: ErrorExtras = {},
    options?: { cause?: unknown; headers?: Record<string, string> },
  ) {
    // No stack trace: these are answers, not faults (a 429 flood made them a tenth of the
    // service's CPU). A cause keeps its own stack for the logs.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message, options);
    Error.stackTraceLimit = limit;
    this.headers = options?.headers ?? {};
    this.name = "AppError";
    this.status = ERROR_STATUS[code];
  }
}

export const invalidParams = (field: string, message: string) => new AppError("invalid_params", message, { field });
export const notFound = (what = "resource") => new AppError("not_found", `${what} not found`);
export const conflict = (message: string) => new AppError("conflict", message);
export const forbidden = (message = "you are not allowed to do this") => new AppError("forbidden", message);
export const unauthorized = (message = "missing, invalid or expired token") => new AppError("unauthorized", message);
export const unavailable = (message = "the service's database is unavailable; nothing was changed", cause?: unknown) =>
  new AppError("unavailable", message, {}, { cause });

export function rateLimited(reason: string, retryAfterS: number, message?: string): AppError {
  const s = Math.max(1, Math.ceil(retryAfterS));
  return new AppError("rate_limited", message ?? `too many requests; retry in ${s} s`, { reason, retry_after: s });
}

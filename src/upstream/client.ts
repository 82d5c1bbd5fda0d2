// The Haltman client: one keep-alive connection pool to the upstream origin, with connect, header
// and total deadlines, a cap on the answer's size, and redirects never followed (a followed
// redirect would carry X-API-Key to another host). These POSTs are not idempotent upstream, so
// the only retry is of a connection refused before anything was sent.
import { Pool, type Dispatcher } from "undici";

export type UpstreamOperation = "handle_create" | "domain_enable";

export const UPSTREAM_PATHS: Record<UpstreamOperation, string> = {
  handle_create: "/api/handle/create",
  domain_enable: "/api/handle/domain/enable",
};

/** What came back, classified; the mapping to our answers lives in services/proxy.ts. */
export type UpstreamResult =
  | { kind: "answer"; status: number; headers: Record<string, string | string[] | undefined>; body: Buffer; json: unknown; isJson: boolean; ms: number }
  | { kind: "timeout"; ms: number }
  | {
      kind: "unavailable";
      reason: "refused" | "reset" | "redirect" | "too_large" | "not_json" | "error";
      status?: number;
      /** the transport's error code (TLS, DNS, a bad header value…), for the operator's log */
      code?: string;
      ms: number;
    };

export type UpstreamClient = {
  call(op: UpstreamOperation, input: { apiKey: string; requestId: string; body: Record<string, string> }): Promise<UpstreamResult>;
  close(): Promise<void>;
};

export const MAX_UPSTREAM_BODY = 1024 * 1024;
/** A 429's body only says whose limit it is (JSON: the key's; text: our address's). */
export const MAX_429_BODY = 64 * 1024;
/** How long a 429's body may take to arrive once its status has: past it, the body is not waited for. */
export const READ_429_BODY_MS = 1_000;

export function createUpstreamClient(opts: {
  baseUrl: URL;
  timeoutMs: number;
  connectTimeoutMs?: number;
  headersTimeoutMs?: number;
  connections?: number;
  bot?: { token: string; source: string } | undefined;
  userAgent?: string;
  /** retries of a refused connection, with 50 ms, 150 ms… between them */
  refusedRetries?: number;
}): UpstreamClient {
  const origin = opts.baseUrl.origin;
  const basePath = opts.baseUrl.pathname.replace(/\/$/, "");
  const connectTimeout = Math.min(opts.connectTimeoutMs ?? 3_000, opts.timeoutMs);
  // (the whole deadline by default: UPSTREAM_TIMEOUT_MS=20000 waits 20 s for an answer, not 10)
  const headersTimeout = Math.min(opts.headersTimeoutMs ?? opts.timeoutMs, opts.timeoutMs);
  const pool = new Pool(origin, {
    connections: opts.connections ?? 64,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    connect: { timeout: connectTimeout },
    headersTimeout,
    bodyTimeout: opts.timeoutMs,
  });
  const refusedRetries = opts.refusedRetries ?? 2;

  async function once(op: UpstreamOperation, input: Parameters<UpstreamClient["call"]>[1], signal: AbortSignal, started: number): Promise<UpstreamResult> {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      accept: "application/json",
      "x-api-key": input.apiKey,
      "x-request-id": input.requestId,
      "user-agent": opts.userAgent ?? "haltman-bff",
    };
    if (opts.bot) {
      headers["x-bot-auth-token"] = opts.bot.token;
      headers["x-bot-source"] = opts.bot.source;
    }
    const res = await pool.request({ path: basePath + UPSTREAM_PATHS[op], method: "POST", headers, body: JSON.stringify(input.body), signal });
    // A body we drop unread (a redirect, an oversized answer) errors when destroyed; unheard, that
    // error would end the process. Reading it below still sees errors through the iterator.
    res.body.on("error", () => {});
    const ms = () => performance.now() - started;
    if (res.statusCode >= 300 && res.statusCode < 400) {
      res.body.destroy();
      return { kind: "unavailable", reason: "redirect", status: res.statusCode, ms: ms() };
    }
    const answer = (body: Buffer): UpstreamResult => ({ kind: "answer", status: res.statusCode, headers: res.headers, body, ...parseJson(res.headers["content-type"], body), ms: ms() });
    // A 5xx is judged by its status alone. Its body (often a gateway's HTML page) is never read,
    // so a large or a slow one cannot make a failure of upstream's look like ours to reach it.
    if (res.statusCode >= 500) {
      res.body.destroy();
      return answer(EMPTY);
    }
    // A 429 is a pause to take, whatever its body does: a body too large or too slow to read is
    // taken as not JSON, upstream's per-address answer, which pauses every call (the safe side).
    if (res.statusCode === 429) {
      const timer = setTimeout(() => res.body.destroy(), READ_429_BODY_MS);
      try {
        const body = await readCapped(res, MAX_429_BODY);
        return answer(body ?? EMPTY);
      } catch {
        return answer(EMPTY);
      } finally {
        clearTimeout(timer);
      }
    }
    // Every other answer is passed on whole: it must arrive whole, in time and within the cap.
    const body = await readCapped(res, MAX_UPSTREAM_BODY);
    if (body === undefined) return { kind: "unavailable", reason: "too_large", status: res.statusCode, ms: ms() };
    return answer(body);
  }

  return {
    async call(op, input) {
      const started = performance.now();
      const signal = AbortSignal.timeout(opts.timeoutMs);
      for (let attempt = 0; ; attempt++) {
        try {
          return await once(op, input, signal, started);
        } catch (err) {
          const code = errorCode(err);
          const ms = performance.now() - started;
          if (signal.aborted || code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" || code === "UND_ERR_CONNECT_TIMEOUT") {
            return { kind: "timeout", ms };
          }
          if (code === "ECONNREFUSED") {
            // Nothing reached upstream: safe to try again, within the deadline.
            if (attempt < refusedRetries) {
              const wait = 50 * 3 ** attempt;
              if (ms + wait < opts.timeoutMs) {
                await new Promise((r) => setTimeout(r, wait));
                continue;
              }
            }
            return { kind: "unavailable", reason: "refused", ms };
          }
          if (code === "ECONNRESET" || code === "UND_ERR_SOCKET" || code === "EPIPE" || code === "UND_ERR_CLOSED") {
            return { kind: "unavailable", reason: "reset", ms };
          }
          return { kind: "unavailable", reason: "error", ...(code ? { code } : {}), ms };
        }
      }
    },
    close: () => pool.close(),
  };
}

const EMPTY = Buffer.alloc(0);

/** The whole body, or undefined (and the body dropped) once it is over `cap` bytes, declared or sent. */
async function readCapped({ headers, body }: Dispatcher.ResponseData, cap: number): Promise<Buffer | undefined> {
  const declared = Number(headers["content-length"]);
  if (Number.isFinite(declared) && declared > cap) {
    body.destroy();
    return undefined;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > cap) {
      body.destroy();
      return undefined;
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** JSON when it says so or looks so (its first byte past whitespace is `{`), and parses to an object. */
function parseJson(contentType: string | string[] | undefined, body: Buffer): { json: unknown; isJson: boolean } {
  let i = 0;
  while (i < body.length && (body[i] === 0x20 || body[i] === 0x09 || body[i] === 0x0a || body[i] === 0x0d)) i++;
  if (!/\bjson\b/i.test(String(contentType ?? "")) && body[i] !== 0x7b /* { */) return { json: undefined, isJson: false };
  try {
    const json: unknown = JSON.parse(body.toString("utf8"));
    return { json, isJson: json !== null && typeof json === "object" };
  } catch {
    return { json: undefined, isJson: false };
  }
}

function errorCode(err: unknown): string | undefined {
  for (let e = err, i = 0; e && i < 4; e = (e as { cause?: unknown }).cause, i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
  }
  return undefined;
}

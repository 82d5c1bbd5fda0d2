import { getConnInfo } from "@hono/node-server/conninfo";
import { randomUUID } from "node:crypto";
import { isIP } from "node:net";
import type { IncomingMessage } from "node:http";
import type { Context, MiddlewareHandler } from "hono";
import { AppError } from "../../errors.js";
import type { Deps } from "../../deps.js";
import { lazyChild } from "../../log.js";
import type { AppEnv, RequestMeta } from "../env.js";

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Sets the request id (the caller's, when it is well-formed), the client address and the
 * dependencies on the context, and the request id on the response, whatever happens after.
 */
export function requestContext(deps: Deps): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const incoming = c.req.header("x-request-id");
    const requestId = incoming && REQUEST_ID_RE.test(incoming) ? incoming : randomUUID();
    c.set("deps", deps);
    c.set("requestId", requestId);
    c.set("clientIp", clientIp(c, deps.config.trustProxy));
    c.set("log", lazyChild(deps.log, { request_id: requestId }));
    c.header("X-Request-Id", requestId);
    await next();
    // onError's response replaces the one above; set again so it is on every answer.
    c.res.headers.set("X-Request-Id", requestId);
  };
}

/**
 * An HTTP/1.1 request without Host is refused. Node's own check of this answers a bare 400 before
 * any route; the server is made without it (http/server.ts) so that the answer is ours, logged and
 * with the headers of every answer (this runs after those middlewares).
 */
export function requireHost(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const http = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
    if (http?.httpVersion === "1.1" && http.headers.host === undefined) {
      throw new AppError("invalid_params", "an HTTP/1.1 request must carry a Host header", { field: "Host" });
    }
    await next();
  };
}

/**
 * The caller's address: the socket's, or with TRUST_PROXY = n, the X-Forwarded-For entry n places
 * from the right (the one our nearest trusted proxy saw). Entries further left are the client's
 * own say and are never believed.
 */
export function clientIp(c: Context, trustProxy: number): string | null {
  let socket: string | undefined;
  try {
    socket = getConnInfo(c).remote.address;
  } catch {
    socket = undefined; // app.request() in tests has no socket
  }
  if (trustProxy === 0) return normaliseIp(socket);
  const hops = (c.req.header("x-forwarded-for") ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (hops.length === 0) return normaliseIp(socket);
  const chosen = hops[Math.max(0, hops.length - trustProxy)];
  return normaliseIp(chosen) ?? normaliseIp(socket);
}

function normaliseIp(ip: string | undefined): string | null {
  if (!ip) return null;
  const v4mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const bare = v4mapped ? v4mapped[1]! : ip.replace(/^\[(.*)\]$/, "$1");
  return isIP(bare) ? bare : null;
}

export function requestMeta(c: Context<AppEnv>): RequestMeta {
  const ua = c.req.header("user-agent");
  return { requestId: c.get("requestId"), ip: c.get("clientIp"), userAgent: ua ?? null };
}

// The HTTP server's own settings, shared by the entry point and the tests' services.
import { serve } from "@hono/node-server";
import { randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import type { Duplex } from "node:stream";

/**
 * Serves `fetch` on host:port with the settings below; `onListening` when it listens. Node's check
 * for a Host header is off: the app refuses its absence itself, with the contract's body
 * (middleware/request-context.ts).
 */
export function listen(
  fetch: (req: Request) => Response | Promise<Response>,
  at: { hostname: string; port: number },
  onListening: (info: AddressInfo) => void,
  onRefused?: (r: RefusedRequest) => void,
): Server {
  const server = serve({ fetch, hostname: at.hostname, port: at.port, serverOptions: { requireHostHeader: false } }, onListening) as Server;
  configureServer(server, onRefused);
  return server;
}

/** A request answered by the server itself (configureServer), before any route: for the log and metrics. */
export type RefusedRequest = { status: number; requestId: string | null; error: string; code: string | undefined; ip: string | undefined };

/**
 * Timeouts, and an answer of ours to a request Node's parser refuses before any route sees it (a
 * header line without a colon, a bad Content-Length, no Host): the contract's JSON body with an
 * X-Request-Id, instead of Node's bare "400 Bad Request". Node's own 431 for headers over its
 * limit is kept, the one answer the contract leaves without an id.
 */
export function configureServer(server: Server, onRefused?: (r: RefusedRequest) => void): void {
  server.keepAliveTimeout = 65_000; // longer than common load balancers' idle timeout
  server.headersTimeout = 20_000;
  server.requestTimeout = 60_000;
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Duplex) => {
    // As Node's own handler: no answer once the response in flight has sent its headers (a
    // keep-alive connection's next request does get one), nor to data sent after a request that
    // said Connection: close (the rest of a body after our 413, say).
    const inFlight = (socket as Duplex & { _httpMessage?: { _headerSent?: boolean } | null })._httpMessage;
    if (!socket.writable || inFlight?._headerSent || err.code === "HPE_CLOSED_CONNECTION") {
      socket.destroy();
      return;
    }
    const ip = (socket as Duplex & { remoteAddress?: string }).remoteAddress;
    if (err.code === "HPE_HEADER_OVERFLOW") {
      socket.end("HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n");
      onRefused?.({ status: 431, requestId: null, error: "headers_too_large", code: err.code, ip });
      return;
    }
    const timeout = err.code === "ERR_HTTP_REQUEST_TIMEOUT";
    const requestId = randomUUID();
    const body = JSON.stringify(
      timeout
        ? { error: "request_timeout", message: "the request did not arrive in time", request_id: requestId }
        : { error: "invalid_params", field: "request", message: "the request is not valid HTTP/1.1", request_id: requestId },
    );
    socket.end(
      `HTTP/1.1 ${timeout ? "408 Request Timeout" : "400 Bad Request"}\r\n` +
        `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `X-Request-Id: ${requestId}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n${body}`,
    );
    onRefused?.({ status: timeout ? 408 : 400, requestId, error: timeout ? "request_timeout" : "invalid_params", code: err.code, ip });
  });
}

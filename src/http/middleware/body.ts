import type { IncomingMessage } from "node:http";
import type { MiddlewareHandler } from "hono";
import { AppError } from "../../errors.js";
import type { AppEnv } from "../env.js";

const utf8 = new TextDecoder("utf-8"); // replaces bad sequences, drops a leading BOM (as Request.text() does)

const tooLarge = (max: number) => new AppError("payload_too_large", `request bodies are limited to ${max} bytes`);

/**
 * The first of the contract's checks: reads the request body, at most `maxBytes` counted as it
 * streams in, into c.var.bodyText, before authentication. It reads Node's IncomingMessage
 * directly: the web Request and its stream (which hono/body-limit would build for every request)
 * are never made, which was a fifth of a proxied call's CPU. Without a socket (app.request() in
 * tests), the web Request's body is read with the same limit.
 */
export function readBody(maxBytes: number): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    // Every method: a GET with a body is still a body, and the limit holds for it (else Node would
    // read and drop any amount of it).
    const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
    let bytes: Uint8Array;
    if (incoming) {
      const declared = incoming.headers["content-length"];
      if (declared !== undefined && Number(declared) > maxBytes) throw closing(tooLarge(maxBytes));
      bytes = await readIncoming(incoming, maxBytes);
    } else {
      bytes = await readWebBody(c.req.raw, maxBytes);
    }
    c.set("bodyText", bytes.length === 0 ? "" : utf8.decode(bytes));
    await next();
  };
}

/** The answer to an oversized body also closes the connection: the rest of it is never read. */
function closing(err: AppError): AppError {
  err.headers = { ...err.headers, Connection: "close" };
  return err;
}

function readIncoming(incoming: IncomingMessage, maxBytes: number): Promise<Uint8Array> {
  if (incoming.complete && incoming.readableLength === 0 && incoming.readableEnded) return Promise.resolve(new Uint8Array(0));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err?: unknown) => {
      incoming.off("data", onData);
      incoming.off("end", onEnd);
      incoming.off("error", onError);
      incoming.off("close", onClose);
      if (err) reject(err);
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        incoming.pause();
        done(closing(tooLarge(maxBytes)));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => done();
    const onError = (err: unknown) => done(new AppError("invalid_params", "the request body could not be read", { field: "body" }, { cause: err }));
    const onClose = () => {
      if (!incoming.readableEnded) onError(new Error("the client closed the connection"));
    };
    incoming.on("data", onData);
    incoming.on("end", onEnd);
    incoming.on("error", onError);
    incoming.on("close", onClose);
  });
}

async function readWebBody(request: Request, maxBytes: number): Promise<Uint8Array> {
  if (!request.body) return new Uint8Array(0);
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > maxBytes) throw tooLarge(maxBytes);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, size);
}

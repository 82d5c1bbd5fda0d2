// A raw HTTP/1.1 request with node:http: any method, header or body framing (chunked with no
// Content-Length, or a declared length). Not a test file itself.
import { request } from "node:http";

export type RawResult = { status: number; headers: Record<string, string | string[] | undefined>; text: string; json: unknown };

export function raw(
  baseUrl: string,
  opts: {
    method?: string;
    path: string;
    headers?: Record<string, string | number>;
    /** sent in one piece (with Content-Length unless the headers say otherwise) */
    body?: string | Buffer;
    /** sent as chunks with Transfer-Encoding: chunked and no Content-Length */
    chunks?: (string | Buffer)[];
  },
): Promise<RawResult> {
  const url = new URL(opts.path, baseUrl);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method: opts.method ?? "GET",
        headers: opts.headers ?? {},
        agent: false,
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on("data", (d: Buffer) => parts.push(d));
        res.on("end", () => {
          const text = Buffer.concat(parts).toString("utf8");
          let json: unknown;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
        res.on("error", reject);
      },
    );
    // The server may answer (413) and close before the whole body is written: that is fine.
    req.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE" || err.code === "ECONNRESET") return;
      reject(err);
    });
    if (opts.chunks) {
      req.setHeader("Transfer-Encoding", "chunked");
      (async () => {
        for (const c of opts.chunks!) {
          if (req.destroyed) return;
          req.write(c);
          await new Promise((r) => setImmediate(r));
        }
        req.end();
      })();
    } else if (opts.body !== undefined) {
      req.end(opts.body);
    } else {
      req.end();
    }
  });
}

/** A JSON object whose serialisation is exactly `bytes` long (padded with an ignored field). */
export function jsonOfSize(bytes: number, fields: Record<string, unknown>): string {
  const base = JSON.stringify({ ...fields, pad: "" });
  const need = bytes - Buffer.byteLength(base);
  if (need < 0) throw new Error("too small");
  const s = JSON.stringify({ ...fields, pad: "p".repeat(need) });
  if (Buffer.byteLength(s) !== bytes) throw new Error("size mismatch");
  return s;
}

export function chunksOf(s: string, size: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

// The reference: a bare pass-through proxy. node:http, no auth, no database; the same upstream
// client (undici Pool) as the service, with one fixed key.
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { createUpstreamClient, type UpstreamOperation } from "../src/upstream/client.js";

const upstream = createUpstreamClient({ baseUrl: new URL(process.env.UPSTREAM!), timeoutMs: 10_000 });
const apiKey = process.env.API_KEY!;
const ops: Record<string, UpstreamOperation> = { "/api/handle/create": "handle_create", "/api/handle/domain/enable": "domain_enable" };

createServer(async (req, res) => {
  if (req.url === "/healthz") return res.end("ok");
  const op = ops[req.url ?? ""];
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  if (!op) {
    res.writeHead(404).end();
    return;
  }
  let body: Record<string, string> = {};
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    // forwarded as {}
  }
  const r = await upstream.call(op, { apiKey, requestId: randomUUID(), body });
  if (r.kind !== "answer") {
    res.writeHead(502).end();
    return;
  }
  res.writeHead(r.status, { "content-type": "application/json" });
  res.end(r.body);
}).listen(Number(process.env.PORT), "127.0.0.1");

// A clean exit on SIGTERM (how the bench stops it), so that node's --cpu-prof writes its profile.
process.on("SIGTERM", () => process.exit(0));

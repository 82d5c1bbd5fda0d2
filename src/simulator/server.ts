// A Haltman stand-in: a real HTTP server on loopback that behaves as upstream's source does
// (docs/UPSTREAM.md in the design notes): key check, validation, handle reservation, ownership,
// bans, the per-address and per-key limits, x-request-id echo. It can be told to misbehave, for
// tests and for frontend developers working without a real key (`npm run sandbox`).
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

import { bodyKind, parseForm } from "./body.js";
import { DOMAIN_RE, HANDLE_RE } from "./patterns.js";

export type Fault =
  | { kind: "delay"; ms: number }
  | { kind: "hang" }
  | { kind: "reset" }
  | { kind: "status"; status: number; body?: string; contentType?: string; headers?: Record<string, string> }
  | { kind: "non_json" }
  | { kind: "redirect"; location?: string }
  /** an answer of `bytes` and more (200 JSON unless told) */
  | { kind: "oversized"; bytes: number; status?: number; contentType?: string; headers?: Record<string, string> }
  /** the status line and headers at once, then a body that starts and never ends */
  | { kind: "stalled_body"; status: number; contentType?: string; headers?: Record<string, string> };

export type ReceivedRequest = {
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  at: number;
};

export type SimulatorOptions = {
  /** api key -> owner's e-mail (the handle's `goto`) */
  keys?: Record<string, string>;
  perAddressLimit?: number;
  perKeyLimit?: number;
  /** names, owners' e-mails or domains that are banned */
  bannedNames?: string[];
  bannedIps?: string[];
  botTokens?: Record<string, string>;
  /** skip limits and bookkeeping (every valid create answers 200), for benchmarks */
  fast?: boolean;
  now?: () => number;
};

export type Simulator = {
  url: string;
  port: number;
  received: ReceivedRequest[];
  /** faults applied to the next calls, in order; `always` applies one to every call */
  faults: Fault[];
  always: Fault | undefined;
  addKey(apiKey: string, ownerEmail: string): void;
  revokeKey(apiKey: string): void;
  /** every handle ever created: name -> owner key */
  handles: Map<string, { owner: string; active: boolean; disabledDomains: Set<string> }>;
  /** the connections now open (to see that the service releases its sockets) */
  openSockets(): number;
  reset(): void;
  close(): Promise<void>;
};

export async function startSimulator(opts: SimulatorOptions = {}, listen: { host?: string; port?: number } = {}): Promise<Simulator> {
  const now = opts.now ?? Date.now;
  const keys = new Map(Object.entries(opts.keys ?? {}));
  const handles: Simulator["handles"] = new Map();
  const received: ReceivedRequest[] = [];
  const windows = new Map<string, { start: number; count: number }>();
  const sockets = new Set<Socket>();
  const bannedNames = new Set((opts.bannedNames ?? []).map((s) => s.toLowerCase()));
  const bannedIps = new Set(opts.bannedIps ?? []);
  const botTokens = new Map(Object.entries(opts.botTokens ?? {}));
  const perAddress = opts.perAddressLimit ?? 300;
  const perKey = opts.perKeyLimit ?? 120;

  const sim: Simulator = {
    url: "",
    port: 0,
    received,
    faults: [],
    always: undefined,
    addKey: (k, email) => void keys.set(k, email),
    revokeKey: (k) => void keys.delete(k),
    handles,
    openSockets: () => sockets.size,
    reset() {
      received.length = 0;
      sim.faults.length = 0;
      sim.always = undefined;
      windows.clear();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };

  /** Fixed one-minute windows, as upstream counts. */
  function hit(bucket: string, limit: number): number | undefined {
    const t = now();
    const start = Math.floor(t / 60_000) * 60_000;
    let w = windows.get(bucket);
    if (!w || w.start !== start) {
      w = { start, count: 0 };
      windows.set(bucket, w);
    }
    w.count++;
    return w.count > limit ? Math.max(1, Math.ceil((start + 60_000 - t) / 1000)) : undefined;
  }

  function send(res: ServerResponse, status: number, body: unknown, requestId?: string, extra: Record<string, string> = {}) {
    const text = typeof body === "string" ? body : JSON.stringify(body);
    res.writeHead(status, {
      "content-type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json; charset=utf-8",
      "content-length": Buffer.byteLength(text),
      ...(requestId ? { "x-request-id": requestId } : {}),
      ...extra,
    });
    res.end(text);
  }

  async function applyFault(fault: Fault, req: IncomingMessage, res: ServerResponse, requestId: string): Promise<boolean> {
    switch (fault.kind) {
      case "delay":
        await new Promise((r) => setTimeout(r, fault.ms));
        return false;
      case "hang":
        return true; // never answer; the socket stays open until the client gives up
      case "reset":
        req.socket.destroy();
        return true;
      case "status":
        res.writeHead(fault.status, { "content-type": fault.contentType ?? "application/json", "x-request-id": requestId, ...(fault.headers ?? {}) });
        res.end(fault.body ?? JSON.stringify({ error: "internal_error" }));
        return true;
      case "non_json":
        res.writeHead(200, { "content-type": "text/html", "x-request-id": requestId });
        res.end("<html><body>maintenance</body></html>");
        return true;
      case "redirect":
        res.writeHead(302, { location: fault.location ?? "http://127.0.0.1:1/elsewhere", "x-request-id": requestId });
        res.end();
        return true;
      case "oversized": {
        res.writeHead(fault.status ?? 200, { "content-type": fault.contentType ?? "application/json", "x-request-id": requestId, ...(fault.headers ?? {}) });
        const chunk = Buffer.alloc(64 * 1024, 0x20);
        let sent = 0;
        res.write("{");
        const pump = () => {
          while (sent < fault.bytes) {
            sent += chunk.length;
            if (!res.write(chunk)) return void res.once("drain", pump);
          }
          res.end('"x":1}');
        };
        res.on("error", () => {});
        pump();
        return true;
      }
      case "stalled_body":
        res.writeHead(fault.status, { "content-type": fault.contentType ?? "application/json", "content-length": "100", "x-request-id": requestId, ...(fault.headers ?? {}) });
        res.write("{");
        return true; // the rest never comes; the socket stays open until the client gives up
    }
  }

  async function handle(req: IncomingMessage, res: ServerResponse) {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size <= 64 * 1024) chunks.push(c as Buffer);
    }
    const raw = Buffer.concat(chunks).toString("utf8");
    const incomingId = req.headers["x-request-id"];
    const requestId = typeof incomingId === "string" && incomingId ? incomingId : randomUUID();
    if (!opts.fast) received.push({ path: req.url ?? "", headers: { ...req.headers }, body: raw, at: now() });

    const path = (req.url ?? "").split("?")[0]!;
    // The sandbox's own control: queue a fault for the next call (loopback only, never upstream's).
    if (req.method === "POST" && path === "/__sim/fault") {
      try {
        const fault = JSON.parse(raw) as Fault;
        if (!["delay", "hang", "reset", "status", "non_json", "redirect", "oversized", "stalled_body"].includes(fault.kind)) throw new Error("kind");
        sim.faults.push(fault);
        return send(res, 200, { ok: true, queued: sim.faults.length });
      } catch {
        return send(res, 400, { error: "invalid_fault" });
      }
    }
    const fault = sim.faults.shift() ?? sim.always;
    if (fault && (await applyFault(fault, req, res, requestId))) return;

    const ops = ["/api/handle/create", "/api/handle/domain/enable", "/api/handle/domain/disable", "/api/handle/delete"];
    if (req.method !== "POST" || !ops.includes(path)) {
      return send(res, 404, { message: `Cannot ${req.method} ${path}`, error: "Not Found", statusCode: 404 });
    }
    if (size > 32 * 1024) return send(res, 500, { error: "internal_error" }, requestId);
    let body: Record<string, unknown> = {};
    const kind = bodyKind(req.headers["content-type"]);
    if (kind === "form") body = parseForm(raw);
    if (kind === "json") {
      try {
        const parsed = JSON.parse(raw || "{}");
        if (parsed === null) throw new Error("null");
        body = typeof parsed === "object" ? parsed : {};
      } catch {
        return send(res, 400, { message: "Unexpected token in JSON", error: "Bad Request", statusCode: 400 });
      }
    }
    const ip = req.socket.remoteAddress ?? "";
    if (bannedIps.has(ip)) return send(res, 403, { error: "banned", ban: { ban_type: "ip", ban_value: ip, reason: "test", banned_at: new Date(0).toISOString() } }, requestId);

    const apiKeyRaw = req.headers["x-api-key"];
    const apiKey = typeof apiKeyRaw === "string" ? apiKeyRaw.trim().toLowerCase() : "";
    if (!opts.fast) {
      const botToken = req.headers["x-bot-auth-token"];
      const botSource = req.headers["x-bot-source"];
      const source = typeof botToken === "string" && typeof botSource === "string" && botTokens.get(botToken) === botSource ? `bot:${botSource}` : `ip:${ip}`;
      if (hit(`addr:${source}`, perAddress) !== undefined) return send(res, 429, "Too many requests, please try again later.");
      const where = path === "/api/handle/create" || path === "/api/handle/delete" ? "handle_create" : "handle_domain";
      if (apiKey) {
        const retry = hit(`key:${apiKey}:${where}`, perKey);
        if (retry !== undefined) {
          return send(res, 429, { error: "rate_limited", where, reason: "too_many_requests_key" }, requestId, { "retry-after": String(retry) });
        }
      }
    }
    if (!apiKeyRaw) return send(res, 401, { error: "missing_api_key" }, requestId);
    if (!/^[a-z0-9]{64}$/.test(apiKey)) return send(res, 401, { error: "invalid_api_key_format" }, requestId);
    const owner = keys.get(apiKey);
    if (!owner) return send(res, 401, { error: "invalid_or_expired_api_key" }, requestId);

    const handleName = (typeof body.handle === "string" ? body.handle : "").trim().toLowerCase();
    if (handleName.length < 1 || handleName.length > 64 || !HANDLE_RE.test(handleName)) {
      return send(res, 400, { error: "invalid_params", field: "handle" }, requestId);
    }
    if (path === "/api/handle/create") {
      const ownerDomain = owner.split("@")[1] ?? "";
      if (bannedNames.has(handleName) || bannedNames.has(owner) || bannedNames.has(ownerDomain)) {
        return send(res, 403, { error: "banned", ban: { ban_type: "name", ban_value: handleName, reason: "test", banned_at: new Date(0).toISOString() } }, requestId);
      }
      if (opts.fast) return send(res, 200, { ok: true, created: true, handle: handleName, goto: owner }, requestId);
      if (handles.has(handleName)) return send(res, 409, { ok: false, error: "alias_taken" }, requestId);
      handles.set(handleName, { owner: apiKey, active: true, disabledDomains: new Set() });
      return send(res, 200, { ok: true, created: true, handle: handleName, goto: owner }, requestId);
    }
    if (path === "/api/handle/delete") {
      const h = handles.get(handleName);
      if (!h || !h.active) return send(res, 404, { error: "handle_not_found" }, requestId);
      if (h.owner !== apiKey) return send(res, 403, { error: "forbidden" }, requestId);
      h.active = false;
      return send(res, 200, { ok: true, updated: true, handle: handleName, active: false }, requestId);
    }
    const domain = (typeof body.domain === "string" ? body.domain : "").trim().toLowerCase();
    if (!DOMAIN_RE.test(domain)) return send(res, 400, { error: "invalid_params", field: "domain" }, requestId);
    const h = handles.get(handleName);
    if (!h || !h.active) return send(res, 404, { error: "handle_not_found" }, requestId);
    if (h.owner !== apiKey) return send(res, 403, { error: "forbidden" }, requestId);
    const disable = path.endsWith("/disable");
    if (disable) h.disabledDomains.add(domain);
    else h.disabledDomains.delete(domain);
    return send(res, 200, { ok: true, updated: true, handle: handleName, domain, disabled: disable }, requestId);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) send(res, 500, { error: "internal_error" });
      else res.destroy();
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(listen.port ?? 0, listen.host ?? "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  sim.port = port;
  sim.url = `http://127.0.0.1:${port}`;
  return sim;
}

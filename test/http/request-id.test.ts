// X-Request-Id on every answer (kept when well-formed, else replaced), the unknown-route 404, and
// the request id carried into the audit record.
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { raw } from "./raw.js";

const ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

let svc: Service;
beforeAll(async () => {
  svc = await startService();
});
afterAll(() => svc.close());

describe("X-Request-Id", () => {
  it("is on a success, a 4xx, an unknown route, a 413 and a preflight-less OPTIONS", async () => {
    const answers = [
      await svc.call("GET", "/healthz"),
      await svc.call("GET", "/v1/auth/me", { token: svc.admin.token }),
      await svc.call("GET", "/v1/auth/me"),
      await svc.call("POST", "/v1/auth/login", { body: "{nope", headers: { "content-type": "application/json" } }),
      await svc.call("GET", "/no/such/route"),
      await svc.call("DELETE", "/v1/admin/users"),
      await svc.call("POST", "/v1/auth/login", { body: "x".repeat(40_000), headers: { "content-type": "application/json" } }),
      await svc.call("OPTIONS", "/v1/auth/login"),
    ];
    expect(answers.map((a) => a.status)).toEqual([200, 200, 401, 400, 404, 404, 413, 404]);
    const seen = new Set<string>();
    for (const a of answers) {
      const id = a.headers.get("x-request-id");
      expect(id, `status ${a.status}`).toMatch(ID_RE);
      seen.add(id!);
      if (a.status >= 400) expect(a.json?.request_id).toBe(id);
    }
    expect(seen.size).toBe(answers.length); // a fresh one each time
  });

  it.each([
    ["a simple one", "abc-123"],
    ["every allowed character", "AZaz09._:-"],
    ["a UUID", "6f1c9a9e-3f53-4c1e-9b49-2d3c1c7f0a11"],
    ["1 character", "x"],
    ["128 characters", "r".repeat(128)],
  ])("keeps an incoming id: %s", async (_, id) => {
    const ok = await svc.call("GET", "/healthz", { headers: { "x-request-id": id } });
    expect(ok.headers.get("x-request-id")).toBe(id);
    const err = await svc.call("GET", "/v1/auth/me", { headers: { "x-request-id": id } });
    expect(err.headers.get("x-request-id")).toBe(id);
    expect(err.json.request_id).toBe(id);
  });

  it.each([
    ["129 characters", "r".repeat(129)],
    ["a space", "abc def"],
    ["a slash", "abc/def"],
    ["a semicolon", "abc;def"],
    ["a quote", 'abc"def'],
    ["non-ASCII", "abcé"],
  ])("replaces an incoming id with %s by a fresh one", async (_, id) => {
    const r = await raw(svc.url, { path: "/v1/auth/me", headers: { "x-request-id": Buffer.from(id, "utf8").toString("latin1") } });
    expect(r.status).toBe(401);
    const got = r.headers["x-request-id"] as string;
    expect(got).toMatch(ID_RE);
    expect(got).not.toBe(id);
    expect((r.json as { request_id: string }).request_id).toBe(got);
  });

  it("an empty incoming id is replaced", async () => {
    const r = await raw(svc.url, { path: "/healthz", headers: { "x-request-id": "" } });
    expect(r.headers["x-request-id"]).toMatch(ID_RE);
  });

  it("is stored in the audit record of the request", async () => {
    const id = "trace:login.0001";
    const r = await svc.call("POST", "/v1/auth/login", { json: { username: "root", password: "root-password-1" }, headers: { "x-request-id": id } });
    expect(r.status).toBe(200);
    const events = await svc.call("GET", "/v1/audit?action=auth.login&limit=500", { token: svc.admin.token });
    expect(events.json.events.filter((e: { request_id: string }) => e.request_id === id)).toHaveLength(1);
    // and a replaced one is stored as the replacement
    const bad = await svc.call("POST", "/v1/auth/login", {
      json: { username: "root", password: "root-password-1" },
      headers: { "x-request-id": "bad id" },
    });
    const fresh = bad.headers.get("x-request-id")!;
    const again = await svc.call("GET", "/v1/audit?action=auth.login&limit=500", { token: svc.admin.token });
    const ids = again.json.events.map((e: { request_id: string }) => e.request_id);
    expect(ids).toContain(fresh);
    expect(ids).not.toContain("bad id");
  });
});

describe("unknown routes", () => {
  it.each([
    ["GET", "/nope"],
    ["POST", "/v1/nothing"],
    ["GET", "/v1/admin/users/extra/segments"],
    ["PUT", "/v1/admin/users"],
  ])("%s %s is 404 JSON not_found", async (method, path) => {
    const r = await svc.call(method, path, { token: svc.admin.token });
    expectErrorBody(r, 404, "not_found");
    expect(r.headers.get("content-type")).toMatch(/^application\/json/);
  });
});

describe("a request Node's parser refuses before any route", () => {
  /** Writes `bytes` on a fresh socket and reads until the server closes it. */
  const onSocket = (bytes: string) =>
    new Promise<string>((resolve, reject) => {
      const { port } = new URL(svc.url);
      const socket = connect(Number(port), "127.0.0.1", () => socket.end(bytes));
      const parts: Buffer[] = [];
      socket.on("data", (d: Buffer) => parts.push(d));
      socket.on("close", () => resolve(Buffer.concat(parts).toString("utf8")));
      socket.on("error", reject);
    });

  it.each([
    ["a header line without a colon", "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header y\r\n\r\n"],
    ["a Content-Length that is not a number", "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"],
    ["no Host header (HTTP/1.1 requires one)", "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", "Host"],
  ])("%s: 400 with the contract's JSON body and an X-Request-Id", async (_, bytes, field = "request") => {
    const answer = await onSocket(bytes);
    const [head, body] = answer.split("\r\n\r\n");
    expect(head).toMatch(/^HTTP\/1\.1 400 /);
    const id = /\r\nx-request-id: ([^\r]+)/i.exec(head!)?.[1];
    expect(id).toMatch(ID_RE);
    expect(head).toMatch(/\r\ncontent-type: application\/json/i);
    expect(JSON.parse(body!)).toEqual({ error: "invalid_params", field, message: expect.any(String), request_id: id });
    expect(head).toMatch(/\r\nx-content-type-options: nosniff\r\n/i);
    expect(head).toMatch(/\r\ncache-control: no-store\r\n/i);
    if (field === "Host") expect(head).toMatch(/\r\nreferrer-policy: no-referrer\r\n/i); // the app's answer: every answer's headers
    // its request id is in the log, as every request's is, and it is counted
    const line = svc.logs.find((l) => l.request_id === id);
    expect(line, "a log line with its X-Request-Id").toMatchObject({ msg: "request", status: 400 });
  });

  it("is counted in http_requests_total{route=\"unparsed\"}, its log line naming the parser's code and no header of it", async () => {
    await onSocket("GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header sekrit-value-123\r\n\r\n");
    const metrics = await svc.call("GET", "/metrics", { token: svc.admin.token });
    expect(metrics.text).toMatch(/^http_requests_total\{route="unparsed",method="unknown",status="400"\} [1-9]/m);
    const lines = svc.logs.filter((l) => l.route === "unparsed");
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.at(-1)).toMatchObject({ status: 400, error: "invalid_params", parser_code: expect.stringMatching(/^HPE_/), ip: "127.0.0.1" });
    expect(svc.rawLogs.join("")).not.toContain("sekrit-value-123");
  });

  it("on a keep-alive connection that has served a request already, too", async () => {
    const { port } = new URL(svc.url);
    const answer = await new Promise<string>((resolve, reject) => {
      const s = connect(Number(port), "127.0.0.1", () => {
        s.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        setTimeout(() => s.write("GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header y\r\n\r\n"), 300);
      });
      const parts: Buffer[] = [];
      s.on("data", (d: Buffer) => parts.push(d));
      s.on("close", () => resolve(Buffer.concat(parts).toString("utf8")));
      s.on("error", reject);
    });
    expect(answer).toMatch(/^HTTP\/1\.1 200 /);
    expect(answer).toMatch(/\}HTTP\/1\.1 400 [^]*"field":"request"/); // right after the 200's body
  });

  it("headers over Node's limit keep Node's own 431 (the one answer without an id)", async () => {
    const answer = await onSocket(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
    expect(answer.toLowerCase()).not.toContain("x-request-id");
    expect(svc.logs.filter((l) => l.route === "unparsed" && l.status === 431)).not.toHaveLength(0);
  });
});

// GET /v1/audit/export: NDJSON and CSV streams of every matching event (past the export's
// internal page of 1000), CSV header, escaping and formula defusing, attachment headers.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CSV_COLUMNS } from "../../src/services/audit.js";
import { expectErrorBody, startService, type Service } from "../helpers/harness.js";
import { insertEvents, parseCsv } from "./common.js";

const HEADER = ["id", "at", "request_id", "actor_id", "actor_username", "action", "outcome", "key_id", "subject_id", "handle", "domain", "upstream_status", "ip", "user_agent"];
const BULK = 1_234;

let svc: Service;
let bulkIds: string[];
let member: { id: string; token: string };
beforeAll(async () => {
  svc = await startService();
  member = await svc.addUser(svc.admin.token, "exporter");
  bulkIds = await insertEvents(
    svc,
    Array.from({ length: BULK }, (_, i) => ({
      action: "handle.create" as const,
      handle: "bulk",
      outcome: i % 2 === 0 ? ("success" as const) : ("upstream_refused" as const),
      actor: i % 10 === 0 ? { id: member.id, username: "exporter" } : null,
    })),
  );
});
afterAll(() => svc.close());

const exportOf = (query: string, token = svc.admin.token) => svc.call("GET", `/v1/audit/export?${query}`, { token });

describe("ndjson", () => {
  it("streams every matching event, newest first, as an attachment", async () => {
    const r = await exportOf("handle=bulk");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^application\/x-ndjson/);
    expect(r.headers.get("content-disposition")).toMatch(/^attachment; filename="[^"/\\]+\.ndjson"$/);
    expect(r.text.endsWith("\n")).toBe(true);
    const lines = r.text.split("\n").filter(Boolean);
    expect(lines).toHaveLength(BULK);
    const events = lines.map((l) => JSON.parse(l));
    expect(events.map((x) => x.id)).toEqual([...bulkIds].reverse());
    expect(events[0]).toMatchObject({ action: "handle.create", handle: "bulk", ip: "192.0.2.1" });
  });

  it("is the default format", async () => {
    const r = await exportOf("handle=bulk&outcome=success");
    expect(r.headers.get("content-type")).toMatch(/^application\/x-ndjson/);
    const events = r.text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    expect(events).toHaveLength(Math.ceil(BULK / 2));
    for (const x of events) expect(x.outcome).toBe("success");
  });

  it("applies the same visibility as the list: a member gets only their own events", async () => {
    const r = await exportOf("handle=bulk", member.token);
    expect(r.status).toBe(200);
    const events = r.text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    expect(events).toHaveLength(Math.ceil(BULK / 10));
    for (const x of events) expect(x.actor?.id).toBe(member.id);
    // and everything they may see, beyond the bulk too (their login)
    const all = (await exportOf("", member.token)).text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    expect(all.some((x) => x.action === "auth.login")).toBe(true);
    for (const x of all) expect(x.actor?.id).toBe(member.id);
  });

  it("an empty result is an empty body, not an error", async () => {
    const r = await exportOf("handle=nothing-here");
    expect(r.status).toBe(200);
    expect(r.text).toBe("");
  });

  it("needs a token", async () => {
    expectErrorBody(await svc.call("GET", "/v1/audit/export"), 401, "unauthorized");
  });
});

describe("csv", () => {
  it("streams a header row and one record per event, as an attachment", async () => {
    expect([...CSV_COLUMNS]).toEqual(HEADER);
    const r = await exportOf("handle=bulk&format=csv");
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toMatch(/^text\/csv/);
    expect(r.headers.get("content-disposition")).toMatch(/^attachment; filename="[^"/\\]+\.csv"$/);
    const records = parseCsv(r.text);
    expect(records[0]).toEqual(HEADER);
    expect(records).toHaveLength(BULK + 1);
    for (const rec of records) expect(rec).toHaveLength(HEADER.length);
    expect(records.slice(1).map((x) => x[0])).toEqual([...bulkIds].reverse());
    const withActor = records.find((x) => x[3] === member.id)!;
    expect(withActor[4]).toBe("exporter");
    expect(withActor[9]).toBe("bulk");
  });

  it("an empty result is the header row alone", async () => {
    const r = await exportOf("handle=nothing-here&format=csv");
    expect(r.status).toBe(200);
    expect(parseCsv(r.text)).toEqual([HEADER]);
  });

  it("escapes commas, quotes and newlines", async () => {
    const nasty = [
      'Mozilla/5.0 (X11, Linux) "quoted"',
      "line one\nline two",
      "crlf\r\ninside",
      'just "quotes"',
      "comma,only",
    ];
    const ids = await insertEvents(svc, nasty.map((ua) => ({ handle: "csv-escape", userAgent: ua, domain: "a,b.example" })));
    const r = await exportOf("handle=csv-escape&format=csv");
    const records = parseCsv(r.text);
    expect(records).toHaveLength(nasty.length + 1);
    for (const [i, id] of ids.entries()) {
      const rec = records.find((x) => x[0] === id)!;
      expect(rec, id).toBeDefined();
      expect(rec[13]).toBe(nasty[i]);
      expect(rec[10]).toBe("a,b.example");
    }
  });

  it("defuses cells a spreadsheet would run as a formula (leading quote)", async () => {
    const formulas = ['=HYPERLINK("http://x","y")', "+1+1", "-1+2", "@SUM(A1)", "\tTAB"];
    const ids = await insertEvents(svc, formulas.map((ua) => ({ handle: "csv-formula", userAgent: ua })));
    const records = parseCsv((await exportOf("handle=csv-formula&format=csv")).text);
    for (const [i, id] of ids.entries()) {
      const rec = records.find((x) => x[0] === id)!;
      expect(rec[13]).toBe(`'${formulas[i]}`);
    }
    // the NDJSON keeps the value as it was
    const nd = (await exportOf("handle=csv-formula")).text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
    expect(nd.map((x) => x.user_agent).sort()).toEqual([...formulas].sort());
  });

  it("a User-Agent starting with '=' sent over HTTP comes out defused", async () => {
    const ua = "=cmd|' /C calc'!A0";
    const r = await svc.call("POST", "/v1/auth/login", {
      json: { username: "exporter", password: "wrong-password" },
      headers: { "user-agent": ua, "x-request-id": "csv-formula-login" },
    });
    expect(r.status).toBe(401);
    const records = parseCsv((await exportOf(`actor=${member.id}&action=auth.login_failed&format=csv`)).text);
    const rec = records.find((x) => x[2] === "csv-formula-login")!;
    expect(rec).toBeDefined();
    expect(rec[13]).toBe(`'${ua}`);
    expect(rec[6]).toBe("invalid");
  });
});

// GET /v1/audit/export: NDJSON and CSV streams of every matching event (past the export's
// internal page of 1000), CSV header, escaping and formula defusing, attachment headers.
import { request as httpRequest } from "node:http";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rowsOf } from "../../src/db/client.js";
import { CSV_COLUMNS } from "../../src/services/audit.js";
import { expectErrorBody, sleep, startService, type Service } from "../helpers/harness.js";
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

  it("refuses bad filters as the list does, a date past year 9999 in UTC included (was a 500)", async () => {
    const r = await exportOf("since=9999-12-31T23:00:00-02:00");
    expectErrorBody(r, 400, "invalid_params");
    expect(r.json.field).toBe("since");
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

  it("a formula after a ';' stays inside its cell: every text cell is quoted (a ';' list separator cannot split it)", async () => {
    const ua = "Mozilla/5.0;=cmd|' /C calc'!A0";
    const [id] = await insertEvents(svc, [{ handle: "csv-semicolon", userAgent: ua, upstreamStatus: 409 }]);
    const line = (await exportOf("handle=csv-semicolon&format=csv")).text.split("\r\n")[1]!;
    const cells = line.split(","); // no cell of this line holds a comma
    expect(cells[0]).toBe(`"${id}"`);
    expect(cells[9]).toBe('"csv-semicolon"');
    expect(cells[11]).toBe("409"); // numbers stay bare
    expect(cells[13]).toBe(`"${ua.replace(/"/g, '""')}"`);
    expect(cells[10]).toBe(""); // no domain: an empty cell
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

// PGlite only: the service and this test share its one backend, so the table's statistics count
// every row the export read, at once. On a server each connection reports them on its own time.
describe.skipIf(!!process.env.TEST_DATABASE_URL)("a client that goes away (PGlite: its statistics are the service's own)", () => {
  const EVENTS = 5_000; // five of the export's pages, each event ~8 KB: 40 MB in all
  const rowsRead = async () => {
    await rowsOf(svc.deps.db, sql`select pg_stat_force_next_flush()`);
    const [r] = await rowsOf<{ n: number }>(
      svc.deps.db,
      sql`select pg_stat_clear_snapshot(), (coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0))::bigint as n from pg_stat_user_tables where relname = 'audit_events'`,
    );
    return Number(r!.n);
  };

  it("is not exported to: the export stops reading pages for it", async () => {
    for (let i = 0; i < EVENTS; i += 1_000) {
      await insertEvents(svc, Array.from({ length: 1_000 }, () => ({ handle: "abandoned", detail: { pad: "x".repeat(8_000) } })));
    }
    const t0 = await rowsRead();
    const whole = await exportOf("handle=abandoned");
    expect(whole.text.split("\n").filter(Boolean)).toHaveLength(EVENTS);
    const wholeRead = (await rowsRead()) - t0;

    const before = await rowsRead();
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(`${svc.url}/v1/audit/export?handle=abandoned`, { headers: { authorization: `Bearer ${svc.admin.token}` } }, (res) => {
        res.once("data", () => {
          req.destroy(); // gone after its first chunk
          resolve();
        });
      });
      req.on("error", () => {});
      req.on("close", () => resolve());
      setTimeout(() => reject(new Error("no answer")), 20_000).unref();
      req.end();
    });
    // Wait until the service reads no more (a second without a row read).
    let last = await rowsRead();
    for (let i = 0; i < 30; i++) {
      await sleep(1_000);
      const n = await rowsRead();
      if (n === last) break;
      last = n;
    }
    // It read its first page (or two, ahead of the socket), not the whole log for nobody.
    expect(last - before).toBeLessThan(wholeRead / 2);
  }, 120_000);
});

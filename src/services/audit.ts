// The audit log. `record` is called inside the transaction of the change it describes, so a change
// whose record cannot be written does not happen (fail closed). Nothing secret goes in: callers
// pass ids and names, never a password, token or key.
import { randomUUID } from "node:crypto";
import { and, desc, eq, gte, isNotNull, isNull, or, sql, type SQL } from "drizzle-orm";
import { pgArray } from "../db/arrays.js";
import type { Database, Db, Executor } from "../db/client.js";
import { auditEventOutcomes, auditEvents } from "../db/schema.js";
import { isRealInstant } from "../time.js";
import { batched, type BatchOptions } from "./batch.js";

export type AuditAction =
  | "auth.login"
  | "auth.login_failed"
  | "auth.logout"
  | "auth.refresh_reused"
  | "auth.password_change"
  | "user.create"
  | "user.update"
  | "key.create"
  | "key.delete"
  | "grant.create"
  | "grant.revoke"
  | "handle.create"
  | "domain.enable"
  | "signing_key.rotate"
  | "keyring.rotate";

export const AUDIT_OUTCOMES = ["success", "invalid", "denied", "rate_limited", "upstream_refused", "upstream_error", "unknown"] as const;
export type AuditOutcome = (typeof AUDIT_OUTCOMES)[number];

/** Where a request came from: carried by every service call that may be audited. */
export type RequestMeta = { requestId: string; ip: string | null; userAgent: string | null };

export type Actor = { id: string; username: string };

export type AuditInput = {
  action: AuditAction;
  /** null: a proxied call recorded before it goes upstream; its outcome follows in `recordOutcome` */
  outcome: AuditOutcome | null;
  actor: Actor | null;
  meta: RequestMeta;
  keyId?: string | null;
  keyOwnerId?: string | null;
  subjectId?: string | null;
  handle?: string | null;
  domain?: string | null;
  upstreamStatus?: number | null;
  detail?: Record<string, unknown> | null;
};

const MAX_USER_AGENT = 512;

export function auditRow(e: AuditInput, id: string = randomUUID()): typeof auditEvents.$inferInsert {
  return {
    id,
    requestId: e.meta.requestId,
    actorId: e.actor?.id ?? null,
    actorUsername: e.actor?.username ?? null,
    action: e.action,
    outcome: e.outcome,
    keyId: e.keyId ?? null,
    keyOwnerId: e.keyOwnerId ?? null,
    subjectId: e.subjectId ?? null,
    handle: e.handle ?? null,
    domain: e.domain ?? null,
    upstreamStatus: e.upstreamStatus ?? null,
    ip: e.meta.ip,
    userAgent: e.meta.userAgent?.slice(0, MAX_USER_AGENT) ?? null,
    detail: e.detail ?? null,
  };
}

/** Appends one event; returns its id. Call it with the transaction of the change it records. */
export async function record(ex: Executor, e: AuditInput): Promise<string> {
  const row = auditRow(e);
  await ex.insert(auditEvents).values(row);
  return row.id!;
}

/** The outcome of an event recorded with `outcome: null` (a call that went upstream). */
export async function recordOutcome(
  ex: Executor,
  eventId: string,
  outcome: AuditOutcome,
  upstreamStatus: number | null,
  detail?: Record<string, unknown>,
): Promise<void> {
  await ex.insert(auditEventOutcomes).values({ eventId, outcome, upstreamStatus, detail: detail ?? null });
}

/** What upstream's answer says of the key: when it was last used, and whether upstream accepted it. */
export type KeyUse = { keyId: string; status: "ok" | "rejected" | "unchanged"; reason: string | null };

/**
 * The audit writes of the proxied calls, grouped (batch.ts) into one multi-row statement per
 * group. Each caller's promise settles when the statement holding its row has committed: the
 * record is durable before the caller goes on (upstream is called only after its attempt is on
 * record, and answered only after its outcome is).
 */
export type AuditWriter = {
  record(e: AuditInput): Promise<string>;
  /**
   * The outcome of a call that went upstream, and in the same statement the key's use: its
   * last_used_at, kept to the minute (rewriting a row that every call of a team shares would
   * serialise them on its lock), and its status, written whenever upstream's answer changes it.
   */
  recordOutcome(eventId: string, outcome: AuditOutcome, upstreamStatus: number | null, detail?: Record<string, unknown>, keyUse?: KeyUse): Promise<void>;
};

const INSERT_EVENTS = `insert into audit_events (id, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id,
    subject_id, handle, domain, upstream_status, ip, user_agent, detail)
  select id, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id, subject_id, handle, domain,
    upstream_status, ip, user_agent, detail::jsonb
  from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::uuid[], $8::uuid[], $9::uuid[],
    $10::text[], $11::text[], $12::smallint[], $13::text[], $14::text[], $15::text[])
    as t(id, request_id, actor_id, actor_username, action, outcome, key_id, key_owner_id, subject_id, handle, domain,
      upstream_status, ip, user_agent, detail)`;

const EVENT_COLUMNS = [
  "id", "requestId", "actorId", "actorUsername", "action", "outcome", "keyId", "keyOwnerId", "subjectId", "handle", "domain",
  "upstreamStatus", "ip", "userAgent",
] as const;

// One mark a key (the writer dedupes), updated in key order, so two groups in flight at once cannot
// deadlock on each other. An event keeps its first outcome: one already on record (an outcome
// tried again after a commit whose answer was lost) is skipped, not an error that would fail
// every other outcome of its group.
const INSERT_OUTCOMES = `with o as (
    insert into audit_event_outcomes (event_id, outcome, upstream_status, detail)
    select event_id, outcome, upstream_status, detail::jsonb
    from unnest($1::uuid[], $2::text[], $3::smallint[], $4::text[]) as t(event_id, outcome, upstream_status, detail)
    on conflict (event_id) do nothing
  ),
  m as (
    update haltman_keys k set last_used_at = now(),
      status = case when v.status = 'unchanged' then k.status else v.status end,
      status_reason = case when v.status = 'unchanged' then k.status_reason else v.reason end
    from (select * from unnest($5::uuid[], $6::text[], $7::text[]) as u(id, status, reason) order by id) as v
    where k.id = v.id
      and (k.last_used_at is null or k.last_used_at < now() - interval '1 minute'
           or (v.status <> 'unchanged' and (k.status <> v.status or k.status_reason is distinct from v.reason)))
  )
  select 1`;

/** The audit writer's statements run on `database` (or, split, on a connection set of their own each). */
export function createAuditWriter(
  database: Pick<Database, "query"> | { events: Pick<Database, "query">; outcomes: Pick<Database, "query"> },
  opts: { events?: BatchOptions; outcomes?: BatchOptions } = {},
): AuditWriter {
  const on = "events" in database ? database : { events: database, outcomes: database };
  const events = batched<typeof auditEvents.$inferInsert, string>(async (rows) => {
    await on.events.query(INSERT_EVENTS, [
      ...EVENT_COLUMNS.map((k) => pgArray(rows.map((r) => (r[k] ?? null) as string | number | null))),
      pgArray(rows.map((r) => (r.detail ? JSON.stringify(r.detail) : null))),
    ]);
    return rows.map((r) => r.id!);
  }, opts.events);
  type Outcome = { eventId: string; outcome: AuditOutcome; upstreamStatus: number | null; detail: Record<string, unknown> | null; keyUse: KeyUse | undefined };
  const outcomes = batched<Outcome, void>(async (rows) => {
    // One mark a key: the last status upstream's answers set within the group (an answer that
    // says nothing of the key does not undo one that did).
    const byKey = new Map<string, KeyUse>();
    for (const r of rows) {
      if (!r.keyUse) continue;
      const seen = byKey.get(r.keyUse.keyId);
      if (!seen || r.keyUse.status !== "unchanged") byKey.set(r.keyUse.keyId, r.keyUse);
    }
    const uses = [...byKey.values()].sort((a, b) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : 0));
    await on.outcomes.query(INSERT_OUTCOMES, [
      pgArray(rows.map((r) => r.eventId)),
      pgArray(rows.map((r) => r.outcome)),
      pgArray(rows.map((r) => r.upstreamStatus)),
      pgArray(rows.map((r) => (r.detail ? JSON.stringify(r.detail) : null))),
      pgArray(uses.map((u) => u.keyId)),
      pgArray(uses.map((u) => u.status)),
      pgArray(uses.map((u) => u.reason)),
    ]);
    return rows.map(() => undefined);
  }, opts.outcomes);
  return {
    record: (e) => events(auditRow(e)),
    recordOutcome: (eventId, outcome, upstreamStatus, detail, keyUse) => outcomes({ eventId, outcome, upstreamStatus, detail: detail ?? null, keyUse }),
  };
}

// ---- reading ----------------------------------------------------------------------------------

export type AuditViewer = { id: string; role: "admin" | "member" };

export type AuditFilters = {
  actor?: string;
  action?: string;
  handle?: string;
  domain?: string;
  keyId?: string;
  outcome?: AuditOutcome;
  since?: Date;
  until?: Date;
};

export type AuditEventView = {
  id: string;
  at: string;
  request_id: string;
  actor: Actor | null;
  action: string;
  outcome: AuditOutcome;
  key_id: string | null;
  subject_id: string | null;
  handle: string | null;
  domain: string | null;
  upstream_status: number | null;
  ip: string | null;
  user_agent: string | null;
  detail: Record<string, unknown> | null;
};

const outcomeExpr = sql<AuditOutcome>`coalesce(${auditEventOutcomes.outcome}, ${auditEvents.outcome}, 'unknown')`;

/** Where a page ends: the last event's time (to the microsecond, as text) and sequence number. */
export type AuditPosition = { at: string; seq: number };

/**
 * Where a page of events is read from. An outcome filter reads ordered index scans, merged: the
 * events whose outcome is their own (`own`) and the proxied calls whose outcome row has it
 * (`later`, ordered by the event's position copied into that row), and, until db/online.ts has
 * placed them, the outcome rows written before migration 0010 (`unplaced`, by the event's own
 * position). Every other query, and `outcome=unknown` (no outcome anywhere), reads the events.
 */
type Source = "events" | "own" | "later" | "unplaced";

function whereFor(viewer: AuditViewer, f: AuditFilters, before: AuditPosition | undefined, source: Source): SQL | undefined {
  const [at, seq] = positionColumns(source);
  return and(
    // A member sees what they did and what was done with keys they own.
    viewer.role === "admin" ? undefined : or(eq(auditEvents.actorId, viewer.id), eq(auditEvents.keyOwnerId, viewer.id)),
    f.actor ? eq(auditEvents.actorId, f.actor) : undefined,
    f.action ? eq(auditEvents.action, f.action) : undefined,
    f.handle ? eq(auditEvents.handle, f.handle) : undefined,
    f.domain ? eq(auditEvents.domain, f.domain) : undefined,
    f.keyId ? eq(auditEvents.keyId, f.keyId) : undefined,
    f.outcome === undefined ? undefined : outcomeIs(f.outcome, source),
    f.since ? gte(at, f.since) : undefined,
    // `at` is stored to the microsecond and shown to the millisecond: `until` takes in the whole
    // millisecond it names, so an event's own `at`, as shown, finds it.
    f.until ? sql`${at} < ${f.until.toISOString()}::timestamptz + interval '1 millisecond'` : undefined,
    before !== undefined ? sql`(${at}, ${seq}) < (${before.at}::timestamptz, ${before.seq})` : undefined,
  );
}

const pageFields = {
  seq: auditEvents.seq,
  atExact: sql<string>`to_char(${auditEvents.at} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`,
  id: auditEvents.id,
  at: auditEvents.at,
  requestId: auditEvents.requestId,
  actorId: auditEvents.actorId,
  actorUsername: auditEvents.actorUsername,
  action: auditEvents.action,
  outcome: outcomeExpr,
  keyId: auditEvents.keyId,
  subjectId: auditEvents.subjectId,
  handle: auditEvents.handle,
  domain: auditEvents.domain,
  upstreamStatus: sql<number | null>`coalesce(${auditEventOutcomes.upstreamStatus}, ${auditEvents.upstreamStatus})`,
  ip: auditEvents.ip,
  userAgent: auditEvents.userAgent,
  detail: auditEvents.detail,
  outcomeDetail: auditEventOutcomes.detail,
};

function outcomeIs(outcome: AuditOutcome, source: Source): SQL | undefined {
  switch (source) {
    case "own":
      return and(eq(auditEvents.outcome, outcome), isNull(auditEventOutcomes.eventId));
    case "later":
      return and(eq(auditEventOutcomes.outcome, outcome), isNotNull(auditEventOutcomes.eventAt));
    case "unplaced":
      return and(eq(auditEventOutcomes.outcome, outcome), isNull(auditEventOutcomes.eventAt));
    case "events":
      return sql`${outcomeExpr} = ${outcome}`;
  }
}

/** The position a page of `source` is ordered by: the event's own, or its copy in the outcome row. */
const positionColumns = (source: Source) =>
  source === "later" ? ([auditEventOutcomes.eventAt, auditEventOutcomes.eventSeq] as const) : ([auditEvents.at, auditEvents.seq] as const);

function pageFrom(ex: Executor, viewer: AuditViewer, f: AuditFilters, limit: number, before: AuditPosition | undefined, source: Source) {
  const [at, seq] = positionColumns(source);
  const rows =
    source === "later" || source === "unplaced"
      ? ex.select(pageFields).from(auditEventOutcomes).innerJoin(auditEvents, eq(auditEvents.id, auditEventOutcomes.eventId)).$dynamic()
      : ex.select(pageFields).from(auditEvents).leftJoin(auditEventOutcomes, eq(auditEventOutcomes.eventId, auditEvents.id)).$dynamic();
  return rows.where(whereFor(viewer, f, before, source)).orderBy(desc(at), desc(seq)).limit(limit);
}

async function page(db: Db, viewer: AuditViewer, f: AuditFilters, limit: number, before?: AuditPosition) {
  if (f.outcome === undefined || f.outcome === "unknown") return pageFrom(db, viewer, f, limit, before, "events");
  // In one snapshot: a row placed (db/online.ts) between two of these reads would be in both, or
  // in neither.
  const parts = await db.transaction(
    async (tx) => {
      const read: PageRow[][] = [];
      for (const source of ["own", "later", "unplaced"] as const) read.push(await pageFrom(tx, viewer, f, limit, before, source));
      return read;
    },
    { isolationLevel: "repeatable read", accessMode: "read only" },
  );
  // Each newest first by (at, seq), and no event in two of them: the first `limit` of them all.
  // `atExact` is fixed-width, so it orders as the instants do.
  return parts
    .flat()
    .sort((a, b) => (a.atExact !== b.atExact ? (a.atExact > b.atExact ? -1 : 1) : Number(b.seq) - Number(a.seq)))
    .slice(0, limit);
}

type PageRow = Awaited<ReturnType<typeof pageFrom>>[number];

function toView(r: PageRow): AuditEventView {
  const detail = r.detail || r.outcomeDetail ? { ...(r.detail ?? {}), ...(r.outcomeDetail ?? {}) } : null;
  return {
    id: r.id,
    at: new Date(r.at).toISOString(),
    request_id: r.requestId,
    actor: r.actorId ? { id: r.actorId, username: r.actorUsername ?? "" } : null,
    action: r.action,
    outcome: r.outcome,
    key_id: r.keyId,
    subject_id: r.subjectId,
    handle: r.handle,
    domain: r.domain,
    upstream_status: r.upstreamStatus === null ? null : Number(r.upstreamStatus),
    ip: r.ip,
    user_agent: r.userAgent,
    detail,
  };
}

/** Cursors are opaque to clients: the position of the last event of the page. */
export const encodeCursor = (p: AuditPosition) => Buffer.from(`v2|${p.at}|${p.seq}`).toString("base64url");
export function decodeCursor(cursor: string): AuditPosition | undefined {
  const m = /^v2\|(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)\|(\d{1,16})$/.exec(Buffer.from(cursor, "base64url").toString("utf8"));
  return m && isRealInstant(m[1]!) ? { at: m[1]!, seq: Number(m[2]) } : undefined;
}

const positionOf = (r: { atExact: string; seq: number }): AuditPosition => ({ at: r.atExact, seq: Number(r.seq) });

export async function listAuditEvents(
  db: Db,
  viewer: AuditViewer,
  f: AuditFilters,
  limit: number,
  before?: AuditPosition,
): Promise<{ events: AuditEventView[]; nextCursor: string | null }> {
  const rows = await page(db, viewer, f, limit + 1, before);
  const more = rows.length > limit;
  const shown = more ? rows.slice(0, limit) : rows;
  return { events: shown.map(toView), nextCursor: more ? encodeCursor(positionOf(shown[shown.length - 1]!)) : null };
}

/** Every matching event, newest first, a page at a time (the export streams it). */
export async function* allAuditEvents(db: Db, viewer: AuditViewer, f: AuditFilters, pageSize = 1_000) {
  let before: AuditPosition | undefined;
  for (;;) {
    const rows = await page(db, viewer, f, pageSize, before);
    for (const r of rows) yield toView(r);
    if (rows.length < pageSize) return;
    before = positionOf(rows[rows.length - 1]!);
  }
}

export const CSV_COLUMNS = [
  "id", "at", "request_id", "actor_id", "actor_username", "action", "outcome", "key_id", "subject_id",
  "handle", "domain", "upstream_status", "ip", "user_agent",
] as const;

/**
 * One CSV line, as OWASP's guidance on CSV injection has it: every text cell quoted (a spreadsheet
 * whose list separator is `;` would otherwise split "a;=cmd…" and run its second half), and a cell
 * a spreadsheet would run as a formula defused with a leading quote.
 */
export function csvLine(e: AuditEventView): string {
  const cells: Record<(typeof CSV_COLUMNS)[number], string | number | null> = {
    id: e.id, at: e.at, request_id: e.request_id, actor_id: e.actor?.id ?? null, actor_username: e.actor?.username ?? null,
    action: e.action, outcome: e.outcome, key_id: e.key_id, subject_id: e.subject_id, handle: e.handle, domain: e.domain,
    upstream_status: e.upstream_status, ip: e.ip, user_agent: e.user_agent,
  };
  return CSV_COLUMNS.map((c) => csvCell(cells[c])).join(",") + "\r\n";
}

function csvCell(v: string | number | null): string {
  if (v === null) return "";
  if (typeof v === "number") return String(v);
  const s = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return `"${s.replace(/"/g, '""')}"`;
}

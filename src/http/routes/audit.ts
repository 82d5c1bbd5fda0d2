import type { OpenAPIRegistry } from "@asteasolutions/zod-to-openapi";
import { z } from "@hono/zod-openapi";
import { Hono } from "hono";
import { stream } from "hono/streaming";
import { invalidParams } from "../../errors.js";
import {
  AUDIT_OUTCOMES,
  CSV_COLUMNS,
  allAuditEvents,
  csvLine,
  decodeCursor,
  listAuditEvents,
  type AuditFilters,
  type AuditPosition,
} from "../../services/audit.js";
import type { AppEnv } from "../env.js";
import { defineRoute } from "../route.js";
import { Instant, Uuid } from "../schemas.js";

/**
 * Compared trimmed and lower-cased, as stored. Only spaces is refused: it is not "unset" (only a
 * parameter sent empty is), and a filter that quietly matched every event would export them all.
 */
const textFilter = (what: string) =>
  z
    .string()
    .max(256)
    .transform((s) => s.trim().toLowerCase())
    .refine((s) => s !== "", { error: `expected ${what}, not only spaces` })
    .optional();

const filterShape = {
  actor: Uuid.optional().openapi({ description: "user id of the actor" }),
  action: z.string().max(64).optional().openapi({ example: "handle.create" }),
  handle: textFilter("a handle"),
  domain: textFilter("a domain"),
  key_id: Uuid.optional(),
  outcome: z.enum(AUDIT_OUTCOMES, { error: `expected one of ${AUDIT_OUTCOMES.join(", ")}` }).optional(),
  since: Instant.optional(),
  until: Instant.optional(),
};

type FilterQuery = { [K in keyof typeof filterShape]?: z.infer<(typeof filterShape)[K]> };

const toFilters = (q: FilterQuery): AuditFilters => ({
  ...(q.actor ? { actor: q.actor } : {}),
  ...(q.action ? { action: q.action } : {}),
  ...(q.handle ? { handle: q.handle } : {}),
  ...(q.domain ? { domain: q.domain } : {}),
  ...(q.key_id ? { keyId: q.key_id } : {}),
  ...(q.outcome ? { outcome: q.outcome } : {}),
  ...(q.since ? { since: q.since } : {}),
  ...(q.until ? { until: q.until } : {}),
});

const AuditEvent = z
  .object({
    id: z.string(),
    at: z.string(),
    request_id: z.string(),
    actor: z.object({ id: z.string(), username: z.string() }).nullable(),
    action: z.string(),
    outcome: z.enum(AUDIT_OUTCOMES),
    key_id: z.string().nullable(),
    subject_id: z.string().nullable().openapi({ description: "the user acted on (user.*, grant.*)" }),
    handle: z.string().nullable(),
    domain: z.string().nullable(),
    upstream_status: z.number().int().nullable(),
    ip: z.string().nullable(),
    user_agent: z.string().nullable(),
    detail: z.record(z.string(), z.unknown()).nullable(),
  })
  .openapi("AuditEvent");

export function auditRoutes(registry: OpenAPIRegistry) {
  const app = new Hono<AppEnv>();
  const tags = ["Audit"];
  const visibility = "An admin sees every event; a member sees the events they are the actor of and those on keys they own.";

  defineRoute(
    app,
    registry,
    {
      method: "get",
      path: "/v1/audit",
      summary: "Audit events, newest first",
      description: `${visibility} Pages with \`limit\` (1 to 500, default 50) and the opaque \`cursor\` from \`next_cursor\`.`,
      tags,
      access: "user",
      query: z.object({
        ...filterShape,
        limit: z
          .string()
          .regex(/^\d{1,3}$/, { error: "expected a whole number from 1 to 500" })
          .transform(Number)
          .refine((n) => n >= 1 && n <= 500, { error: "expected a whole number from 1 to 500" })
          .optional(),
        // Empty is refused, not unset: a client that sends `cursor=${next_cursor ?? ""}` and missed
        // that null ends the pages would otherwise start again from the first one, for ever.
        cursor: z
          .string()
          .min(1, { error: "empty; leave it out for the first page (a null next_cursor means there is no next page)" })
          .max(128)
          .optional(),
      }),
      emptyIsAValue: ["cursor"],
      responses: { 200: { description: "a page", schema: z.object({ events: z.array(AuditEvent), next_cursor: z.string().nullable() }) } },
    },
    async (c, { query }) => {
      let before: AuditPosition | undefined;
      if (query.cursor !== undefined) {
        before = decodeCursor(query.cursor);
        if (before === undefined) throw invalidParams("cursor", "cursor: not one this service gave out");
      }
      const { events, nextCursor } = await listAuditEvents(c.get("deps").db, c.get("user"), toFilters(query), query.limit ?? 50, before);
      return c.json({ events, next_cursor: nextCursor });
    },
  );

  defineRoute(
    app,
    registry,
    {
      method: "get",
      path: "/v1/audit/export",
      summary: "Every matching audit event, streamed as NDJSON or CSV",
      description: `${visibility} Same filters as /v1/audit; \`format\` is ndjson (default) or csv.`,
      tags,
      access: "user",
      query: z.object({ ...filterShape, format: z.enum(["ndjson", "csv"], { error: "expected ndjson or csv" }).optional() }),
      responses: {
        200: { description: "the events: NDJSON (format=ndjson) or CSV (format=csv)", schema: z.string(), contentType: ["application/x-ndjson", "text/csv"] },
      },
    },
    async (c, { query }) => {
      const format = query.format ?? "ndjson";
      const events = allAuditEvents(c.get("deps").db, c.get("user"), toFilters(query));
      // The first page is read before the status line goes out, so a database that is down
      // still answers 503, not a 200 with an empty file.
      const first = await events.next();
      const stamp = new Date().toISOString().replace(/[:.]/g, "-");
      c.header("Content-Type", format === "csv" ? "text/csv; charset=utf-8" : "application/x-ndjson; charset=utf-8");
      c.header("Content-Disposition", `attachment; filename="audit-${stamp}.${format}"`);
      return stream(c, async (s) => {
        if (format === "csv") await s.write(CSV_COLUMNS.join(",") + "\r\n");
        try {
          if (!first.done) await s.write(format === "csv" ? csvLine(first.value) : JSON.stringify(first.value) + "\n");
          // A client that has gone is not written to (Hono drops those writes without a word): the
          // loop stops, and leaving it ends the generator, so no further page is read for nobody.
          for await (const e of events) {
            if (s.aborted) break;
            await s.write(format === "csv" ? csvLine(e) : JSON.stringify(e) + "\n");
          }
        } catch (err) {
          // Headers are gone already: the only honest signal left is a cut-off stream.
          c.get("log").error({ err: (err as Error).name }, "audit export failed mid-stream");
          s.abort();
        }
      });
    },
  );

  return app;
}

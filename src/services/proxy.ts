// The two proxied calls. In the contract's order: body parsing and validation (upstream's own
// rules), key choice, idempotency, rate limits (and upstream's pauses), the audit record of the
// attempt, the upstream call with the key opened for it alone, then the audit record of the
// outcome. Every refusal on the way is audited too, and carries the RateLimit headers.
import { AppError, rateLimited, type ErrorCode } from "../errors.js";
import type { Deps } from "../deps.js";
import { describeError, type RequestLog } from "../log.js";
import type { UpstreamOperation, UpstreamResult } from "../upstream/client.js";
import { normaliseDomain, normaliseHandle } from "../upstream/validation.js";
import { bodyKind, parseForm } from "../simulator/body.js";
import { randomUUID } from "node:crypto";
import { auditRow, type AuditAction, type AuditOutcome, type RequestMeta } from "./audit.js";
import { claim, complete, release, requestHash, MAX_IDEMPOTENCY_KEY } from "./idempotency.js";
import { callBuckets, pauseScopes, rateLimitHeaders } from "./limits.js";
import type { Admission } from "./admission.js";
import { pauseUpstream, peekStates } from "./rate-limit.js";
import { openApiKey } from "../crypto/envelope.js";
import { isDatabaseUnavailable } from "../db/unavailable.js";
import { userLimitOverrides, type Caller, type ChosenKey } from "./vault.js";

export type ProxyDeps = Pick<Deps, "db" | "config" | "metrics" | "admit" | "upstream" | "chooseKey" | "auditWriter" | "vault" | "refusals">;

export type ProxyRequest = {
  user: Caller;
  meta: RequestMeta;
  /** the body as received, and its Content-Type */
  text: string;
  contentType: string;
  keyIdHeader: string | undefined;
  idempotencyKey: string | undefined;
  /** the request's logger (it carries the request id) */
  log: RequestLog;
};

export type ProxyAnswer = { status: number; body: string; headers: Record<string, string> };

const ACTION: Record<UpstreamOperation, AuditAction> = { handle_create: "handle.create", domain_enable: "domain.enable" };

/** Upstream's answer for the caller, and what it means for the audit and the key. */
type Mapped = {
  answer: ProxyAnswer | AppError;
  outcome: AuditOutcome;
  upstreamStatus: number | null;
  keyRejected?: string;
  /** upstream judged the call past its key check (200, 400, 404, 409, a 403 that is not an IP ban) */
  keyAccepted?: boolean;
  pause?: { scope: string; seconds: number };
  /** an answer worth replaying to an idempotent repeat */
  keep: boolean;
};

export async function proxyCall(deps: ProxyDeps, op: UpstreamOperation, req: ProxyRequest): Promise<ProxyAnswer> {
  const { user, meta } = req;
  const action = ACTION[op];
  let handle: string | null = null;
  let domain: string | null = null;
  let key: ChosenKey | undefined;

  /** Audits a refusal made before upstream, and throws it with the RateLimit headers. */
  const refuse = async (err: AppError, outcome: AuditOutcome, detail: Record<string, unknown> = {}): Promise<never> => {
    await deps.auditWriter.record({
      action,
      outcome,
      actor: user,
      meta,
      keyId: key?.id ?? null,
      keyOwnerId: key?.ownerId ?? null,
      handle,
      domain,
      detail: { error: err.code, ...(err.extras.field ? { field: err.extras.field } : {}), ...detail },
    });
    if (Object.keys(err.headers).length === 0) {
      try {
        // Key choice reads the caller's overrides; before it, they are read for the headers.
        const overrides = key ? key.userLimits : await userLimitOverrides(deps.db, user.id);
        err.headers = rateLimitHeaders(await peekStates(deps.db, callBuckets(deps.config, op, user.id, overrides, key?.id)));
      } catch {
        // the refusal stands without its headers
      }
    }
    throw err;
  };

  // 1. Body and validation, exactly as upstream would judge it.
  let body: Record<string, unknown>;
  try {
    body = parseBody(req.text, req.contentType);
  } catch (err) {
    return refuse(err as AppError, "invalid");
  }
  // What the refusal's record shows of an invalid value: bounded, and without NUL (which
  // PostgreSQL cannot store; upstream's patterns refuse it anyway).
  const shown = (v: unknown, max: number) => (typeof v === "string" ? v.replace(/\0/g, "").trim().toLowerCase().slice(0, max) : null);
  handle = shown(body.handle, 128);
  domain = op === "domain_enable" ? shown(body.domain, 255) : null;
  const upstreamBody: Record<string, string> = {};
  try {
    upstreamBody.handle = handle = normaliseHandle(body.handle);
    if (op === "domain_enable") upstreamBody.domain = domain = normaliseDomain(body.domain);
  } catch (err) {
    return refuse(err as AppError, "invalid");
  }

  const idemKey = op === "handle_create" ? req.idempotencyKey : undefined;
  if (idemKey !== undefined && (idemKey.length < 1 || idemKey.length > MAX_IDEMPOTENCY_KEY || /[^\x21-\x7e]/.test(idemKey))) {
    return refuse(
      new AppError("invalid_params", `Idempotency-Key must be 1 to ${MAX_IDEMPOTENCY_KEY} visible ASCII characters`, { field: "Idempotency-Key" }),
      "invalid",
    );
  }

  // 2. Which key: this instance's last choice for the caller (checked by the admission below), or
  // a fresh one. A call with an Idempotency-Key always chooses afresh: its claim names the key.
  const chooseKey = async (fresh: boolean): Promise<ChosenKey> => {
    try {
      return await deps.chooseKey.choose(user, req.keyIdHeader, { fresh });
    } catch (err) {
      if (err instanceof AppError) return refuse(err, err.code === "key_required" ? "invalid" : "denied");
      throw err;
    }
  };
  let chosen = await chooseKey(idemKey !== undefined);
  key = chosen;

  // A caller the database has just refused for their own limit is refused here, until the
  // database said their next call could pass (at most a second: services/refusals.ts). Audited
  // like every refusal; the RateLimit states are those the database answered.
  const local = idemKey === undefined ? deps.refusals.check(user.id, op) : undefined;
  if (local) {
    const waitMs = Math.max(0, local.nextAllowed - performance.now());
    const err = rateLimited("user", Math.max(1, Math.ceil(waitMs / 1000)));
    err.headers = rateLimitHeaders(local.states.map((st) => (st.name === "user" ? { ...st, remaining: 0, resetS: Math.max(st.resetS, Math.ceil(waitMs / 1000)) } : st)));
    deps.metrics.rateLimitRefusals.inc({ reason: "user" });
    return refuse(err, "rate_limited", { reason: "user" });
  }

  // 3. Idempotency (create only): a replay never reaches the limits or upstream.
  let claimToken: string | undefined;
  let claimedFor: string | undefined;
  // Settles the claim once: released (the client may retry) unless completed with an answer kept
  // for repeats; with afterUpstream()'s retries, which matter once upstream has acted (before, a
  // release they save only spares the client a minute of 409s).
  const settleClaim = (keep?: { status: number; body: string }) => {
    const t = claimToken;
    claimToken = claimedFor = undefined;
    if (idemKey === undefined || !t) return Promise.resolve();
    return afterUpstream(() => (keep ? complete(deps.db, user.id, idemKey, t, keep.status, keep.body) : release(deps.db, user.id, idemKey, t)));
  };
  const releaseClaim = () => settleClaim();
  const claimFor = async (k: ChosenKey): Promise<ProxyAnswer | undefined> => {
    if (idemKey === undefined || claimedFor === k.id) return undefined;
    await releaseClaim(); // the claim made for another key, if any
    const c = await claim(deps.db, user.id, idemKey, requestHash({ op, key: k.id, body: upstreamBody }), deps.config.upstreamTimeoutMs / 1000 + 60);
    if (c.kind === "mismatch") {
      return refuse(new AppError("idempotency_key_reused", "this Idempotency-Key was used with another request (another body, or another key by X-Key-Id)"), "invalid");
    }
    if (c.kind === "in_flight") {
      return refuse(new AppError("conflict", "a request with this Idempotency-Key is still in flight"), "invalid", { reason: "idempotency_in_flight" });
    }
    if (c.kind === "replay") {
      const states = await peekStates(deps.db, callBuckets(deps.config, op, user.id, k.userLimits, k.id));
      return { status: c.status, body: c.body, headers: { ...jsonHeaders, "Idempotent-Replayed": "true", ...rateLimitHeaders(states) } };
    }
    claimToken = c.token;
    claimedFor = k.id;
    return undefined;
  };

  try {
    // 4. The admission, in one statement: the choice checked, the attempt recorded (no record, no
    // call), the rate limits and upstream's pauses decided, a refusal recorded. A choice the
    // database no longer agrees with is made again, fresh, and asked again.
    const eventId = randomUUID();
    let admission: Admission | undefined;
    let askedAt = 0;
    for (let round = 0; round < 3; round++) {
      const replay = await claimFor(chosen);
      if (replay) return replay;
      askedAt = performance.now();
      admission = await deps.admit({
        caller: user,
        key: chosen,
        buckets: callBuckets(deps.config, op, user.id, chosen.userLimits, chosen.id),
        pauses: pauseScopes(op, chosen.id),
        attempt: { eventId, action, handle, domain, meta },
      });
      if (admission.verified || round === 2) break;
      deps.chooseKey.forget(user, req.keyIdHeader);
      key = undefined;
      chosen = await chooseKey(true);
      key = chosen;
    }
    if (!admission || !admission.verified) throw new AppError("unavailable", "the key to use kept changing while this call was decided; nothing was sent upstream");
    const { decision } = admission;
    const limitHeaders = rateLimitHeaders(decision.states);
    if (!decision.allowed) {
      const reason = decision.refusedBy ?? "global";
      if (reason === "user" && idemKey === undefined) deps.refusals.note(user.id, op, askedAt, decision.retryAfterMs, decision.states);
      deps.metrics.rateLimitRefusals.inc({ reason });
      const err = rateLimited(reason, decision.retryAfterS);
      err.headers = limitHeaders;
      await releaseClaim();
      throw err;
    }

    // 5. Upstream, with the key opened for this call only.
    let apiKey: string;
    try {
      if (!admission.key) throw new Error("admitted without the key's material");
      apiKey = openApiKey(deps.vault.keyring, admission.key);
    } catch (err) {
      // Tampered, moved, or sealed under an entry we lack: nothing is sent. Logged without material.
      req.log.error({ err: describeError(err), key_id: chosen.id }, "stored key failed to open; nothing sent upstream");
      await deps.auditWriter.recordOutcome(eventId, "upstream_error", null, { error: "internal_error", reason: "key_unsealable" }).catch(() => {});
      const e = new AppError("internal_error", "the stored key could not be opened; nothing was sent upstream");
      e.headers = limitHeaders;
      throw e;
    }
    const result: UpstreamResult = await deps.upstream.call(op, { apiKey, requestId: meta.requestId, body: upstreamBody });
    const mapped = mapResult(result, op, chosen.id);
    deps.metrics.upstreamRequests.inc({ operation: op, result: result.kind === "answer" ? String(result.status) : result.kind === "timeout" ? "timeout" : result.reason });
    deps.metrics.upstreamDuration.observe({ operation: op }, result.ms / 1000);
    if (mapped.outcome === "upstream_error") {
      req.log.warn(
        {
          operation: op,
          key_id: chosen.id,
          result: result.kind,
          ...(result.kind === "unavailable" ? { reason: result.reason, ...(result.code ? { code: result.code } : {}) } : {}),
          upstream_status: mapped.upstreamStatus,
          ms: Math.round(result.ms),
        },
        "upstream call failed",
      );
    }

    // 7. The outcome. Upstream has acted by now: a failure to record it is logged, and the call
    // stays in the audit log as `unknown`, but the caller still gets upstream's answer.
    const answerBody = mapped.answer instanceof AppError ? undefined : mapped.answer.body;
    const after = await Promise.allSettled([
      afterUpstream(() => deps.auditWriter.recordOutcome(
        eventId,
        mapped.outcome,
        mapped.upstreamStatus,
        mapped.answer instanceof AppError ? { error: mapped.answer.code, ...(mapped.answer.extras.reason ? { reason: mapped.answer.extras.reason } : {}) } : undefined,
        // What upstream's answer says of the key (nothing, when no answer came).
        result.kind === "answer"
          ? mapped.keyRejected
            ? { keyId: chosen.id, status: "rejected", reason: mapped.keyRejected }
            : { keyId: chosen.id, status: mapped.keyAccepted ? "ok" : "unchanged", reason: null }
          : undefined,
      )),
      mapped.pause ? afterUpstream(() => pauseUpstream(deps.db, mapped.pause!.scope, mapped.pause!.seconds)) : Promise.resolve(),
      settleClaim(mapped.keep && answerBody !== undefined && !(mapped.answer instanceof AppError) ? { status: mapped.answer.status, body: answerBody } : undefined),
    ]);
    for (const r of after) {
      if (r.status === "rejected") req.log.error({ err: describeError(r.reason), event_id: eventId }, "recording a proxied call's outcome failed");
    }
    if (mapped.pause) deps.metrics.rateLimitRefusals.inc({ reason: "upstream" });

    if (mapped.answer instanceof AppError) {
      mapped.answer.headers = { ...limitHeaders, ...mapped.answer.headers };
      throw mapped.answer;
    }
    return { ...mapped.answer, headers: { ...mapped.answer.headers, ...limitHeaders } };
  } catch (err) {
    // Whatever stopped the call, a claim still held is given back (a no-op once settled).
    await releaseClaim().catch(() => {});
    throw err;
  }
}

/** The waits before a write made after upstream has acted is tried again. */
const AFTER_UPSTREAM_RETRIES_MS = [100, 400];
/** A write is tried again only this soon after its first try. */
const AFTER_UPSTREAM_RETRY_WITHIN_MS = 1_000;

/**
 * A write made after upstream has acted (the outcome, a pause, the answer kept for repeats): its
 * failure cannot undo upstream's act, so the caller gets upstream's answer anyway. A database
 * that is briefly unavailable (a dropped connection, a failover, a serialization failure) is
 * given two more tries within the first second, before the write is given up and logged. One
 * that failed slowly (a statement or connect timeout) is not tried again: the caller, who waits
 * for these writes, would wait as long again for each try.
 */
async function afterUpstream(write: () => Promise<void>): Promise<void> {
  const started = performance.now();
  for (const wait of AFTER_UPSTREAM_RETRIES_MS) {
    try {
      return await write();
    } catch (err) {
      if (!isDatabaseUnavailable(err) || performance.now() - started + wait > AFTER_UPSTREAM_RETRY_WITHIN_MS) throw err;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  return write();
}

const jsonHeaders = { "Content-Type": "application/json; charset=utf-8" };

function parseBody(text: string, contentType: string): Record<string, unknown> {
  // Like upstream: JSON and forms are parsed, any other body is not (the handle is then missing).
  const kind = bodyKind(contentType);
  if (kind === "form") return parseForm(text);
  if (kind !== "json" || text.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AppError("invalid_json", "the request body is not valid JSON");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new AppError("invalid_params", "the request body must be a JSON object", { field: "body" });
  }
  return value as Record<string, unknown>;
}

/** The contract's table: upstream's answer -> ours. */
export function mapResult(result: UpstreamResult, op: UpstreamOperation, keyId: string): Mapped {
  const fail = (code: ErrorCode, message: string, outcome: AuditOutcome, status: number | null, extras: AppError["extras"] = {}): Mapped => ({
    answer: new AppError(code, message, extras),
    outcome,
    upstreamStatus: status,
    keep: false,
  });
  if (result.kind === "timeout") return fail("upstream_timeout", "Haltman did not answer in time", "upstream_error", null);
  if (result.kind === "unavailable") {
    const why = {
      refused: "Haltman refused the connection",
      reset: "the connection to Haltman was reset",
      redirect: "Haltman answered with a redirect, which is never followed",
      too_large: "Haltman's answer was larger than 1 MiB",
      not_json: "Haltman's answer was not JSON",
      error: "the call to Haltman failed",
    }[result.reason];
    return fail("upstream_unavailable", why, "upstream_error", result.status ?? null);
  }
  const { status } = result;
  if (status >= 500) {
    return fail("upstream_error", `Haltman answered ${status}`, "upstream_error", status, { upstream_status: status });
  }
  if (status === 429) {
    const retry = retryAfterSeconds(result.headers["retry-after"]);
    if (result.isJson) {
      // Upstream's per-key limit: this key's bucket is paused until then.
      const scope = pauseScopes(op, keyId)[1]!;
      return { ...fail("rate_limited", `Haltman's limit for this key is reached; retry in ${retry} s`, "rate_limited", 429, { reason: "upstream", retry_after: retry }), pause: { scope, seconds: retry } };
    }
    // Upstream's per-address limit: every call leaves from our address, so everyone pauses.
    return { ...fail("rate_limited", `Haltman's limit for this service is reached; retry in ${retry} s`, "rate_limited", 429, { reason: "upstream", retry_after: retry }), pause: { scope: "global", seconds: retry } };
  }
  if (!result.isJson) return fail("upstream_unavailable", "Haltman's answer was not JSON", "upstream_error", status);
  if (status === 401) {
    const code = (result.json as { error?: unknown }).error;
    const reason = typeof code === "string" && /^[a-z_]{1,64}$/.test(code) ? code : "unauthorized";
    return { ...fail("upstream_key_rejected", "Haltman refused the stored key; its owner must replace it", "upstream_error", 401, { reason }), keyRejected: reason };
  }
  if (status === 200 || status === 400 || status === 403 || status === 404 || status === 409) {
    const ipBan = status === 403 && (result.json as { ban?: { ban_type?: unknown } }).ban?.ban_type === "ip";
    // The web framework's own answer (`{"message","error","statusCode"}`: an unknown route, a body
    // it could not parse) comes before upstream's key check: passed on, but it says nothing of the
    // key, and is not kept for repeats (a wrong HALTMAN_BASE_URL, fixed, must not replay it).
    const framework = typeof (result.json as { statusCode?: unknown }).statusCode === "number";
    return {
      answer: { status, body: result.body.toString("utf8"), headers: jsonHeaders },
      outcome: status === 200 ? "success" : "upstream_refused",
      upstreamStatus: status,
      keep: !framework,
      keyAccepted: !ipBan && !framework,
    };
  }
  return fail("upstream_error", `Haltman answered an unexpected ${status}`, "upstream_error", status, { upstream_status: status });
}

/** The longest pause we take from upstream's word: a bogus Retry-After must not stop us for days. */
export const MAX_UPSTREAM_PAUSE_S = 300;

function retryAfterSeconds(header: string | string[] | undefined): number {
  return Math.min(MAX_UPSTREAM_PAUSE_S, parseRetryAfter(header));
}

function parseRetryAfter(header: string | string[] | undefined): number {
  const v = Array.isArray(header) ? header[0] : header;
  const n = v !== undefined && /^\d{1,6}$/.test(v.trim()) ? Number(v.trim()) : NaN;
  if (Number.isFinite(n)) return Math.max(1, n);
  const date = v ? Date.parse(v) : NaN;
  if (Number.isFinite(date)) return Math.max(1, Math.ceil((date - Date.now()) / 1000));
  return 60; // upstream counts in one-minute windows
}

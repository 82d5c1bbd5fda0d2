// The policies a proxied call must pass, and how their state is told in RateLimit headers
// (draft-ietf-httpapi-ratelimit-headers-10: structured-field lists keyed by policy name).
import { parseRatePolicy, type Config, type RatePolicy } from "../config.js";
import type { UserRateLimits } from "../db/schema.js";
import type { UpstreamOperation } from "../upstream/client.js";
import type { Bucket, BucketState } from "./rate-limit.js";

/** Upstream keeps one per-key bucket for create and one shared by domain enable and disable. */
export const UPSTREAM_BUCKET: Record<UpstreamOperation, "create" | "domain"> = {
  handle_create: "create",
  domain_enable: "domain",
};

export function userPolicy(config: Config, op: UpstreamOperation, overrides: UserRateLimits | null | undefined): RatePolicy {
  const fallback = op === "handle_create" ? config.rateLimits.handleCreate : config.rateLimits.domainEnable;
  const override = op === "handle_create" ? overrides?.handle_create : overrides?.domain_enable;
  return (override && parseRatePolicy(override)) || fallback;
}

/** The three buckets of a call: the user's for this action, the key's upstream bucket, everyone's. */
export function callBuckets(
  config: Config,
  op: UpstreamOperation,
  userId: string,
  overrides: UserRateLimits | null | undefined,
  keyId: string | undefined,
): Bucket[] {
  const buckets: Bucket[] = [{ name: "user", key: `user:${userId}:${op}`, policy: userPolicy(config, op, overrides) }];
  if (keyId) buckets.push({ name: "key", key: `key:${keyId}:${UPSTREAM_BUCKET[op]}`, policy: config.rateLimits.key });
  buckets.push({ name: "global", key: "global", policy: config.rateLimits.global });
  return buckets;
}

/** Scopes of upstream_pauses that hold a call back: everyone's, and this key's upstream bucket. */
export function pauseScopes(op: UpstreamOperation, keyId: string | undefined): string[] {
  return keyId ? ["global", `key:${keyId}:${UPSTREAM_BUCKET[op]}`] : ["global"];
}

export function rateLimitHeaders(states: BucketState[]): Record<string, string> {
  if (states.length === 0) return {};
  return {
    "RateLimit-Policy": states.map((s) => `"${s.name}";q=${s.policy.limit};w=${Math.round(s.policy.periodMs / 1000)}`).join(", "),
    RateLimit: states.map((s) => `"${s.name}";r=${s.remaining};t=${s.resetS}`).join(", "),
  };
}

// A reusable suite of attacks on the bearer-token check of one protected route. Every case that
// forges a token also shows that the same forging code with good claims is accepted by the route,
// so no case can pass because the forger (or the route) is simply broken.
//
//   describeTokenAttacks(() => svc, { method: "GET", path: "/v1/auth/me", as: "member" });
//
// The suite needs the real signing key to forge validly-signed tokens with bad claims: it reads the
// sealed private JWK from `signing_keys` and opens it with the service's keyring, the way
// src/services/tokens.ts does. Sessions for the cases are created straight in the database
// (createSession + the service's own token signer: exactly what a login hands out) so the suite
// spends no login throttle and no password hash per case.
import { randomBytes, randomUUID } from "node:crypto";
import { desc, isNull } from "drizzle-orm";
import { SignJWT, exportJWK, exportSPKI, generateKeyPair, importJWK, type CryptoKey, type JWK, type JWTPayload } from "jose";
import { beforeAll, describe, expect, it } from "vitest";
import { signingKeys } from "../../src/db/schema.js";
import { createSession } from "../../src/services/sessions.js";
import { expectErrorBody, type CallResult, type Service } from "../helpers/harness.js";

export type Caller = { id: string; username: string; password: string; role: "admin" | "member" };

/** What a route's path and body may depend on. */
export type RouteContext = {
  svc: Service;
  /** the user whose tokens the case uses */
  caller: Caller;
  /** a member that routes acting on a user (PATCH /v1/admin/users/:id) can act on */
  target: { id: string; username: string };
};

export type ProtectedRoute = {
  /** how the route shows in test names; default "METHOD path" */
  name?: string;
  method: "GET" | "POST" | "PATCH" | "DELETE";
  path: string | ((ctx: RouteContext) => string);
  /** a JSON body the route accepts; a function is called anew for every request */
  body?: Record<string, unknown> | ((ctx: RouteContext) => Record<string, unknown>);
  /** the role of the caller; default "member" */
  as?: "admin" | "member";
  /** the status a good token gets (the control of every case); default 200 */
  ok?: number;
  /** the good request ends the caller's session (logout) */
  endsSession?: boolean;
  /** extra headers sent with every request (e.g. X-Key-Id) */
  headers?: Record<string, string>;
  /** extra per-route preparation, run once after the caller and target exist */
  setup?: (ctx: RouteContext) => Promise<void>;
};

export const routeLabel = (r: ProtectedRoute) => r.name ?? `${r.method} ${typeof r.path === "string" ? r.path : "(computed path)"}`;

type Session = { userId: string; sessionId: string; token: string };

type SigningKey = { kid: string; alg: string; privateKey: CryptoKey | Uint8Array; publicJwk: JWK; publicPem: string };

const SIGNING_BINDING = (kid: string) => ({ purpose: "jwt-signing-key", table: "signing_keys", id: kid });

/** The service's current signing key, private half opened with its keyring. */
export async function loadSigningKey(svc: Service): Promise<SigningKey> {
  const [row] = await svc.deps.db
    .select()
    .from(signingKeys)
    .where(isNull(signingKeys.retiredAt))
    .orderBy(desc(signingKeys.createdAt))
    .limit(1);
  if (!row) throw new Error("no signing key in signing_keys");
  const jwk = JSON.parse(
    svc.deps.keyring.open({ keyringId: row.keyringId, box: row.privateSealed }, SIGNING_BINDING(row.kid)).toString("utf8"),
  ) as JWK;
  const publicKey = await importJWK(row.publicJwk as JWK, row.alg);
  return {
    kid: row.kid,
    alg: row.alg,
    privateKey: await importJWK(jwk, row.alg),
    publicJwk: row.publicJwk as JWK,
    publicPem: await exportSPKI(publicKey as CryptoKey),
  };
}

const nowS = () => Math.floor(Date.now() / 1000);
const b64url = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

export type Claims = Record<string, unknown>;

/** Removes the named claims (a claim set to undefined is dropped too). */
export function without(claims: Claims, ...names: string[]): Claims {
  const out: Claims = {};
  for (const [k, v] of Object.entries(claims)) if (!names.includes(k) && v !== undefined) out[k] = v;
  return out;
}

/** Flips one bit of the signature's byte at `at` (negative: from the end). */
export function flipSignatureBit(token: string, at: number): string {
  const [h, p, s] = token.split(".");
  const sig = Buffer.from(s!, "base64url");
  const i = at < 0 ? sig.length + at : at;
  sig[i] = sig[i]! ^ 0x01;
  return `${h}.${p}.${sig.toString("base64url")}`;
}

/** An unsigned token (`alg: none` and its spellings), with or without the trailing dot. */
export function unsignedToken(claims: Claims, header: Record<string, unknown>, trailingDot = true): string {
  return `${b64url(header)}.${b64url(claims)}${trailingDot ? "." : ""}`;
}

/**
 * Registers one `describe` with every attack case on `route`. `getSvc` is read when the cases run
 * (the service is started in the caller's beforeAll).
 */
export function describeTokenAttacks(getSvc: () => Service, route: ProtectedRoute) {
  describe(`token attacks on ${routeLabel(route)}`, () => {
    let svc: Service;
    let key: SigningKey;
    let ctx: RouteContext;
    const okStatus = route.ok ?? 200;
    const role = route.as ?? "member";

    async function newUser(r: "admin" | "member"): Promise<Caller> {
      const username = `ta-${randomBytes(5).toString("hex")}`;
      const password = `pw ${randomBytes(6).toString("hex")} long`;
      const res = await svc.call("POST", "/v1/admin/users", { token: svc.admin.token, json: { username, password, role: r } });
      if (res.status !== 201) throw new Error(`creating ${username}: ${res.status} ${res.text}`);
      return { id: res.json.id, username, password, role: r };
    }

    /** A new live session of `user`, with the access token the service itself signs for it. */
    async function freshSession(user: Caller = ctx.caller): Promise<Session> {
      const { sessionId } = await createSession(svc.deps.db, {
        userId: user.id,
        refreshTtlS: svc.config.refreshTokenTtlS,
        ip: null,
        userAgent: "token-attacks",
      });
      const { token } = await svc.deps.tokens.sign(user.id, sessionId);
      return { userId: user.id, sessionId, token };
    }

    /** The claims our service puts in an access token, for session `s`, at time `at`. */
    function goodClaims(s: Session, at = nowS()): Claims {
      return {
        iss: svc.config.jwtIssuer,
        aud: svc.config.jwtAudience,
        sub: s.userId,
        sid: s.sessionId,
        jti: randomBytes(12).toString("base64url"),
        iat: at,
        exp: at + svc.config.accessTokenTtlS,
      };
    }

    /** Signs `claims` with the service's real key (or another one), as the service would. */
    async function forge(
      claims: Claims,
      opts: { header?: Record<string, unknown>; key?: CryptoKey | Uint8Array; alg?: string } = {},
    ): Promise<string> {
      const alg = opts.alg ?? key.alg;
      return new SignJWT(claims as JWTPayload)
        .setProtectedHeader({ alg, kid: key.kid, typ: "JWT", ...(opts.header ?? {}) })
        .sign(opts.key ?? key.privateKey);
    }

    async function send(opts: { token?: string; authorization?: string; rawBody?: string; as?: RouteContext } = {}): Promise<CallResult> {
      const c = opts.as ?? ctx;
      const path = typeof route.path === "function" ? route.path(c) : route.path;
      const body = typeof route.body === "function" ? route.body(c) : route.body;
      const headers: Record<string, string> = { ...(route.headers ?? {}) };
      if (opts.authorization !== undefined) headers.authorization = opts.authorization;
      if (opts.rawBody !== undefined) {
        headers["content-type"] = "application/json";
        return svc.call(route.method, path, { ...(opts.token ? { token: opts.token } : {}), headers, body: opts.rawBody });
      }
      return svc.call(route.method, path, {
        ...(opts.token ? { token: opts.token } : {}),
        headers,
        ...(body !== undefined ? { json: body } : {}),
      });
    }

    function expectRefused(r: CallResult, what: string) {
      try {
        expectErrorBody(r, 401, "unauthorized");
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`);
      }
    }
    function expectAccepted(r: CallResult, what = "control (good token)") {
      expect(r.status, `${what}: ${r.text.slice(0, 300)}`).toBe(okStatus);
    }

    /** The session for one more accepted call: `s` again, or a new one when the good request ends it. */
    const again = async (s: Session) => (route.endsSession ? freshSession() : s);

    /** Sends each attack token (all must be 401), then the good-claims token forged the same way (must pass). */
    async function attackThenControl(attacks: Array<[string, string]>, control: string) {
      for (const [what, token] of attacks) expectRefused(await send({ token }), what);
      expectAccepted(await send({ token: control }));
    }

    beforeAll(async () => {
      svc = getSvc();
      key = await loadSigningKey(svc);
      expect(key.kid).toBe(svc.deps.tokens.kid);
      const caller = await newUser(role);
      const target = await newUser("member");
      ctx = { svc, caller, target: { id: target.id, username: target.username } };
      await route.setup?.(ctx);
    });

    // ---- the header itself ---------------------------------------------------------------------

    it("refuses a request without a token", async () => {
      expectRefused(await send(), "no Authorization header");
      const s = await freshSession();
      expectAccepted(await send({ token: s.token }));
    });

    it("refuses malformed Authorization headers", async () => {
      const s = await freshSession();
      const malformed: Array<[string, string]> = [
        ["Basic", `Basic ${Buffer.from(`${ctx.caller.username}:${ctx.caller.password}`).toString("base64")}`],
        ["Bearer alone", "Bearer"],
        ["Bearer and spaces", "Bearer    "],
        ["the token without a scheme", s.token],
        ["another scheme", `Token ${s.token}`],
        ["a second word after the token", `Bearer ${s.token} extra`],
        ["two tokens", `Bearer ${s.token}, Bearer ${s.token}`],
        ["a non-base64url character", `Bearer ${s.token.slice(0, 20)}!${s.token.slice(21)}`],
      ];
      for (const [what, authorization] of malformed) expectRefused(await send({ authorization }), what);
      expectAccepted(await send({ authorization: `Bearer ${s.token}` }));
    });

    it("refuses an oversized Authorization header (~10 KB, under Node's 16 KB limit)", async () => {
      const s = await freshSession();
      const junk = randomBytes(7_500).toString("base64url"); // 10,000 characters
      expect(junk.length).toBe(10_000);
      expectRefused(await send({ authorization: `Bearer ${junk}` }), "10 KB of junk");
      expectRefused(await send({ authorization: `Bearer ${s.token}${junk}` }), "a real token with 10 KB appended");
      expectRefused(await send({ authorization: `Bearer ${s.token}.${junk}` }), "a real token with a 10 KB fourth part");
      expectAccepted(await send({ token: s.token }));
    });

    if (route.method !== "GET") {
      it("checks the token before it parses the body (401 for a bad body and no token)", async () => {
        const s = await freshSession();
        expectRefused(await send({ rawBody: "{not json" }), "no token, unparseable body");
        expectRefused(await send({ rawBody: "{not json", token: flipSignatureBit(s.token, 5) }), "bad token, unparseable body");
        const r = await send({ rawBody: "{not json", token: s.token });
        // with a good token, the body is what fails (routes that read no body ignore it)
        if (route.body !== undefined) expectErrorBody(r, 400, "invalid_json");
        else expectAccepted(r);
      });
    }

    // ---- signatures and algorithms ---------------------------------------------------------------

    it("refuses alg:none tokens", async () => {
      const s = await freshSession();
      const claims = goodClaims(s);
      await attackThenControl(
        [
          ["alg none", unsignedToken(claims, { alg: "none", kid: key.kid, typ: "JWT" })],
          ["alg None", unsignedToken(claims, { alg: "None", kid: key.kid, typ: "JWT" })],
          ["alg NONE", unsignedToken(claims, { alg: "NONE", typ: "JWT" })],
          ["alg none with the real signature kept", `${unsignedToken(claims, { alg: "none", kid: key.kid })}${(await forge(claims)).split(".")[2]}`],
        ],
        await forge(claims),
      );
    });

    it("refuses HS256 tokens keyed with the public key (algorithm confusion)", async () => {
      const s = await freshSession();
      const claims = goodClaims(s);
      const secrets: Array<[string, Uint8Array]> = [
        ["HS256 keyed with the PEM of the public key", new TextEncoder().encode(key.publicPem)],
        ["HS256 keyed with the JSON of the public JWK", new TextEncoder().encode(JSON.stringify(key.publicJwk))],
        ["HS256 keyed with the JWKS answer", new TextEncoder().encode((await svc.call("GET", "/.well-known/jwks.json")).text)],
      ];
      const attacks: Array<[string, string]> = [];
      for (const [what, secret] of secrets) attacks.push([what, await forge(claims, { alg: "HS256", key: secret })]);
      attacks.push(["HS512 keyed with the PEM", await forge(claims, { alg: "HS512", key: new TextEncoder().encode(key.publicPem) })]);
      await attackThenControl(attacks, await forge(claims));
    });

    it("refuses tokens signed with a key of their own (EdDSA, ES384, ES256), even naming our kid", async () => {
      const s = await freshSession();
      const claims = goodClaims(s);
      const ed = await generateKeyPair("EdDSA", { crv: "Ed25519" });
      const es384 = await generateKeyPair("ES384");
      const es256 = await generateKeyPair("ES256");
      const attackerJwk = await exportJWK(es256.publicKey);
      await attackThenControl(
        [
          ["EdDSA with its own key", await forge(claims, { alg: "EdDSA", key: ed.privateKey })],
          ["ES384 with its own key", await forge(claims, { alg: "ES384", key: es384.privateKey })],
          ["ES256 with another key", await forge(claims, { alg: "ES256", key: es256.privateKey })],
          ["ES256 with its own key embedded in the header", await forge(claims, { alg: "ES256", key: es256.privateKey, header: { jwk: attackerJwk } })],
          ["ES256 with its own key and an unknown kid", await forge(claims, { alg: "ES256", key: es256.privateKey, header: { kid: randomUUID() } })],
          ["ES256 with a jku pointing elsewhere", await forge(claims, { alg: "ES256", key: es256.privateKey, header: { jku: "http://127.0.0.1:9/jwks.json" } })],
        ],
        await forge(claims),
      );
    });

    it("refuses a token with a bit flipped in its signature or payload", async () => {
      const s = await freshSession();
      const good = await forge(goodClaims(s));
      const [h, , sig] = good.split(".");
      const tampered = b64url({ ...goodClaims(s), sub: svc.admin.id });
      await attackThenControl(
        [
          ["first signature byte", flipSignatureBit(good, 0)],
          ["middle signature byte", flipSignatureBit(good, 32)],
          ["last signature byte", flipSignatureBit(good, -1)],
          ["signature cut short", good.slice(0, -4)],
          ["payload swapped, signature kept", `${h}.${tampered}.${sig}`],
        ],
        good,
      );
    });

    // ---- claims, validly signed with the real key -------------------------------------------------

    it("refuses a token expired beyond the 30 s tolerance (and accepts one within it)", async () => {
      const s = await freshSession();
      const t = nowS();
      expectRefused(await send({ token: await forge({ ...goodClaims(s, t - 120), exp: t - 45 }) }), "expired 45 s ago");
      expectRefused(await send({ token: await forge({ ...goodClaims(s, t - 3600), exp: t - 3000 }) }), "expired an hour ago");
      expectAccepted(await send({ token: await forge({ ...goodClaims(s, t - 120), exp: t - 10 }) }), "expired 10 s ago (within tolerance)");
      expectAccepted(await send({ token: await forge(goodClaims(await again(s))) }));
    });

    it("refuses a future nbf beyond the tolerance (and accepts one within it)", async () => {
      const s = await freshSession();
      const t = nowS();
      expectRefused(await send({ token: await forge({ ...goodClaims(s, t), nbf: t + 60 }) }), "nbf in 60 s");
      expectRefused(await send({ token: await forge({ ...goodClaims(s, t), nbf: t + 86_400 }) }), "nbf tomorrow");
      expectAccepted(await send({ token: await forge({ ...goodClaims(s, t), nbf: t + 10 }) }), "nbf in 10 s (within tolerance)");
      expectAccepted(await send({ token: await forge({ ...goodClaims(await again(s), t), nbf: t - 1 }) }), "nbf now");
    });

    it("refuses a future iat beyond the tolerance (and accepts one within it)", async () => {
      const s = await freshSession();
      const t = nowS();
      expectRefused(await send({ token: await forge(goodClaims(s, t + 60)) }), "iat in 60 s");
      expectRefused(await send({ token: await forge(goodClaims(s, t + 86_400)) }), "iat tomorrow");
      expectAccepted(await send({ token: await forge(goodClaims(s, t + 10)) }), "iat in 10 s (within tolerance)");
      expectAccepted(await send({ token: await forge(goodClaims(await again(s), t)) }));
    });

    it("refuses a wrong or missing issuer", async () => {
      const s = await freshSession();
      await attackThenControl(
        [
          ["another issuer", await forge({ ...goodClaims(s), iss: "https://evil.example" })],
          ["issuer differing in case", await forge({ ...goodClaims(s), iss: svc.config.jwtIssuer.toUpperCase() })],
          ["no issuer", await forge(without(goodClaims(s), "iss"))],
        ],
        await forge(goodClaims(s)),
      );
    });

    it("refuses a wrong or missing audience", async () => {
      const s = await freshSession();
      await attackThenControl(
        [
          ["another audience", await forge({ ...goodClaims(s), aud: "some-other-service" })],
          ["an audience list without ours", await forge({ ...goodClaims(s), aud: ["a", "b"] })],
          ["no audience", await forge(without(goodClaims(s), "aud"))],
        ],
        await forge(goodClaims(s)),
      );
    });

    it("refuses a token without exp", async () => {
      const s = await freshSession();
      await attackThenControl([["no exp", await forge(without(goodClaims(s), "exp"))]], await forge(goodClaims(s)));
    });

    it("refuses a token without jti", async () => {
      const s = await freshSession();
      await attackThenControl([["no jti", await forge(without(goodClaims(s), "jti"))]], await forge(goodClaims(s)));
    });

    it("refuses a token that names no session or user, or a session that is not the user's", async () => {
      const s = await freshSession();
      const other = await newUser("member");
      const otherSession = await freshSession(other);
      await attackThenControl(
        [
          ["no sid", await forge(without(goodClaims(s), "sid"))],
          ["no sub", await forge(without(goodClaims(s), "sub"))],
          ["an unknown session", await forge({ ...goodClaims(s), sid: randomUUID() })],
          ["sub of the admin, session of the caller", await forge({ ...goodClaims(s), sub: svc.admin.id })],
          ["sub of the caller, session of another user", await forge({ ...goodClaims(s), sid: otherSession.sessionId })],
        ],
        await forge(goodClaims(s)),
      );
    });

    it("refuses (401, not 500) a validly signed token whose sid or sub is not a UUID", async () => {
      const s = await freshSession();
      await attackThenControl(
        [
          ["a sid that is not a UUID", await forge({ ...goodClaims(s), sid: "1 or 1=1" })],
          ["a sid that is a number", await forge({ ...goodClaims(s), sid: 12 })],
          ["a sub that is not a UUID", await forge({ ...goodClaims(s), sub: "root" })],
        ],
        await forge(goodClaims(s)),
      );
    });

    // ---- sessions that ended ------------------------------------------------------------------------

    it("refuses the token of a session that logged out", async () => {
      const s = await freshSession();
      expectAccepted(await send({ token: s.token }), "before logout");
      if (!route.endsSession) expect((await svc.call("POST", "/v1/auth/logout", { token: s.token })).status).toBe(204);
      expectRefused(await send({ token: s.token }), "after logout");
      expectRefused(await send({ token: await forge(goodClaims(s)) }), "a new token forged for the revoked session");
    });

    it("refuses the token of a user disabled by an admin", async () => {
      const victim = await newUser(role);
      const vctx: RouteContext = { ...ctx, caller: victim };
      const s = await freshSession(victim);
      // for a route that ends the session, the control uses a second session of the same user
      const control = route.endsSession ? await freshSession(victim) : s;
      expect((await svc.call("GET", "/v1/auth/me", { token: s.token })).status).toBe(200);
      expectAccepted(await send({ token: control.token, as: vctx }), "before disabling");
      const patch = await svc.call("PATCH", `/v1/admin/users/${victim.id}`, { token: svc.admin.token, json: { disabled: true } });
      expect(patch.status, patch.text).toBe(200);
      expectRefused(await send({ token: s.token, as: vctx }), "after disabling");
      expectRefused(await send({ token: await forge(goodClaims(s)), as: vctx }), "a new token forged for the disabled user");
      // not only through the revocation: a session of the disabled user that was never revoked
      const late = await freshSession(victim);
      expectRefused(await send({ token: late.token, as: vctx }), "a session of the disabled user that was not revoked");
    });
  });
}

import type { Deps } from "../deps.js";
import type { RequestLog } from "../log.js";
import type { UserRole } from "../db/schema.js";
import type { RequestMeta } from "../services/audit.js";

/** The authenticated caller, from a verified token and a live session. */
export type AuthUser = { id: string; username: string; role: UserRole; sessionId: string };

/** The one context type of every router and middleware. */
export type AppEnv = {
  Variables: {
    deps: Deps;
    requestId: string;
    log: RequestLog;
    clientIp: string | null;
    user: AuthUser;
    /** the request body as text (empty when there is none), read by readBody() */
    bodyText: string | undefined;
    /** the validated JSON body, set by jsonBody() */
    body: unknown;
  };
};

export type { RequestMeta };

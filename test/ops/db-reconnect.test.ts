// The hot path's statements run on connections of their own (db/client.ts lanes). When the
// database drops every connection of the service (a restart, a failover, an operator's
// pg_terminate_backend), calls in that moment fail closed (503, nothing sent upstream), and the
// service then serves again on new connections, without a restart of its own. A statement held
// up elsewhere times out into a 503; the lanes plan generically, the pool does not.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openPostgres } from "../../src/db/client.js";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { startService, type Service } from "../helpers/harness.js";
import { CREATE, HIGH_LIMITS, newApiKey } from "../proxy/common.js";

describe.skipIf(!process.env.TEST_DATABASE_URL)("the hot path's own connections (needs TEST_DATABASE_URL: PGlite is one connection)", () => {
  let sim: Simulator;
  let svc: Service;
  let token: string;
  beforeAll(async () => {
    sim = await startSimulator({});
    svc = await startService({ env: { HALTMAN_BASE_URL: sim.url, ...HIGH_LIMITS } });
    const u = await svc.addUser(svc.admin.token, "reconnect");
    token = u.token;
    const apiKey = newApiKey();
    sim.addKey(apiKey, "r@example.com");
    expect((await svc.call("POST", "/v1/keys", { token, json: { name: "k", api_key: apiKey } })).status).toBe(201);
  });
  afterAll(async () => {
    await svc?.close();
    await sim?.close();
  });

  // the service's error lines, for a failure's message (what a 503 hid)
  const errorsLogged = () => JSON.stringify(svc.logs.filter((l) => l.level === "warn" || l.level === "error").slice(-6));

  let n = 0;
  const create = () => svc.call("POST", CREATE, { token, json: { handle: `reconnect-${process.pid}-${++n}` } });

  it("calls in the outage are 503 or served, never 500; then the service serves again", async () => {
    expect((await create()).status).toBe(200);
    const admin = await openPostgres(svc.database.url!, { max: 1 });
    try {
      const [{ db }] = (await admin.query<{ db: string }>("select current_database() as db", [])) as [{ db: string }];
      await admin.db.execute(sql`select pg_terminate_backend(pid) from pg_stat_activity
        where datname = ${db} and pid <> pg_backend_pid() and application_name like 'haltman-bff:%'`);
    } finally {
      await admin.close();
    }
    const statuses: number[] = [];
    const deadline = Date.now() + 10_000;
    let served = false;
    while (!served && Date.now() < deadline) {
      const r = await create();
      statuses.push(r.status);
      expect([200, 503], `${r.status} ${r.text}`).toContain(r.status);
      served = r.status === 200;
      if (!served) await new Promise((res) => setTimeout(res, 100));
    }
    expect(served, `statuses after the drop: ${statuses.join(",")}; the service said: ${errorsLogged()}`).toBe(true);
    // and it keeps serving: several in a row, concurrently
    const again = await Promise.all(Array.from({ length: 5 }, () => create()));
    expect(again.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
  });

  it("a hot-path statement held up by a lock elsewhere fails after its 5 s timeout: 503, nothing upstream; then 200", async () => {
    expect((await create()).status, errorsLogged()).toBe(200); // the global bucket's row exists
    const admin = await openPostgres(svc.database.url!, { max: 1 });
    try {
      const sent = sim.received.length;
      const started = Date.now();
      await admin.db.transaction(async (tx) => {
        await tx.execute(sql`select key from rate_limit_buckets where key = 'global' for update`);
        const r = await create();
        expect(r.status, r.text).toBe(503);
        expect(r.json.error).toBe("unavailable");
      });
      expect(Date.now() - started).toBeGreaterThanOrEqual(4_500);
      expect(sim.received.length).toBe(sent);
    } finally {
      await admin.close();
    }
    expect((await create()).status).toBe(200);
  });

  it("generic plans on the hot path's connections only: the pool's ad hoc queries keep theirs", async () => {
    const setting = async (q: (text: string, params: []) => Promise<{ m: string }[]>) => (await q("select current_setting('plan_cache_mode') as m", []))[0]!.m;
    expect(await setting(svc.database.query)).toBe("auto");
    expect(await setting(svc.database.lane("proxy_admit"))).toBe("force_generic_plan");
  });
});

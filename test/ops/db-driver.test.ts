// postgres.js 3.4.9 mishandles a socket that closes with bytes not yet written (they wait for a
// setImmediate flush of its write buffer): the connection never writes again, so every reconnect
// hangs until CONNECT_TIMEOUT, and a transaction's rollback, written after the close, throws a
// TypeError from a timer that ends the process. patches/postgres+3.4.9.patch (applied by
// patch-package at install) fixes both; these tests fail on the unpatched driver. The race is made
// deterministic by closing the socket ourselves (postgres.js's `socket` option hands it to us) in
// the same turn of the event loop as the write: the close is handled before the flush.
import { readFileSync } from "node:fs";
import net from "node:net";
import { createRequire } from "node:module";
import postgres from "postgres";
import { afterEach, describe, expect, it } from "vitest";

const url = process.env.TEST_DATABASE_URL;

describe("the PostgreSQL driver's patch is in place", () => {
  it("in both of its builds that Node loads (ESM, which the service uses, and CommonJS; cf/ is for Cloudflare Workers)", () => {
    const require = createRequire(import.meta.url);
    const cjs = require.resolve("postgres"); // .../cjs/src/index.js
    for (const file of [cjs.replace(/index\.js$/, "connection.js"), cjs.replace(/cjs\/src\/index\.js$/, "src/connection.js")]) {
      expect(readFileSync(file, "utf8").match(/patched \(haltman-bff\)/g)?.length, file).toBe(3);
    }
  });
});

describe.skipIf(!url)("a connection whose socket closes before its bytes are written (needs TEST_DATABASE_URL)", () => {
  let sql: postgres.Sql | undefined;
  const sockets: net.Socket[] = [];
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  const open = () => {
    const u = new URL(url!);
    const options = {
      max: 1,
      connect_timeout: 3,
      onnotice: () => {},
      // a socket factory: an option of postgres.js that its type definitions leave out
      socket: () => {
        const s = net.connect(Number(u.port || 5432), u.hostname);
        sockets.push(s);
        return s;
      },
    };
    sql = postgres(url!, options as postgres.Options<Record<string, never>>);
    return sql;
  };
  // Runs `fn` in the check phase: an immediate scheduled there (the driver's flush) waits for the
  // next turn, while a socket destroyed there is closed in this turn's close phase, before it.
  const inCheckPhase = <T>(fn: () => Promise<T>) => new Promise<T>((resolve, reject) => setImmediate(() => fn().then(resolve, reject)));
  const elapsed = async <T>(p: Promise<T>) => {
    const t = performance.now();
    await p;
    return performance.now() - t;
  };

  afterEach(async () => {
    process.off("uncaughtException", onUncaught);
    uncaught.length = 0;
    sockets.length = 0;
    await sql?.end({ timeout: 1 });
  });

  it("fails the query caught in the close, then serves the next one on a new connection at once", async () => {
    const db = open();
    expect(await db`select 1 as n`).toEqual([{ n: 1 }]);
    const caught = await inCheckPhase(async () => {
      sockets.at(-1)!.destroy();
      return db`select 2 as n`.then(() => "served", (e: { code?: string }) => e.code);
    });
    expect(caught).toBe("CONNECTION_CLOSED");
    // unpatched: the startup message is never flushed, and this waits for CONNECT_TIMEOUT (3 s)
    const ms = await elapsed(db`select 3 as n`.then((rows) => expect(rows).toEqual([{ n: 3 }])));
    expect(ms).toBeLessThan(2_000);
    expect(sockets).toHaveLength(2);
  });

  it("fails a transaction whose connection closes under it, without an uncaught error, and serves on", async () => {
    process.on("uncaughtException", onUncaught);
    const db = open();
    expect(await db`select 1 as n`).toEqual([{ n: 1 }]);
    const outcome = await db
      .begin(async (tx) => {
        await tx`select 1`;
        sockets.at(-1)!.destroy();
        await tx`select 2`;
      })
      .then(() => "committed", (e: { code?: string }) => e.code);
    expect(outcome).toBe("CONNECTION_CLOSED");
    // the rollback's write happens after the close: unpatched, a TypeError thrown from an immediate
    await new Promise((res) => setTimeout(res, 50));
    expect(uncaught.map(String)).toEqual([]);
    const ms = await elapsed(db`select 4 as n`.then((rows) => expect(rows).toEqual([{ n: 4 }])));
    expect(ms).toBeLessThan(2_000);
  });

  it("a query waiting for that connection is served on the new one, not failed with the transaction", async () => {
    const db = open(); // one connection: the query below waits for the transaction's
    expect(await db`select 1 as n`).toEqual([{ n: 1 }]);
    let waiting: Promise<unknown> | undefined;
    const outcome = await db
      .begin(async (tx) => {
        await tx`select 1`;
        waiting = db`select 5 as n`.then((rows) => rows, (e: { code?: string }) => e.code);
        sockets.at(-1)!.destroy();
        await tx`select 2`;
      })
      .then(() => "committed", (e: { code?: string }) => e.code);
    expect(outcome).toBe("CONNECTION_CLOSED");
    expect(await waiting).toEqual([{ n: 5 }]);
  });
});

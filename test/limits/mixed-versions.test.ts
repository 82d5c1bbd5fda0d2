// A rolling upgrade across 0008: instances of the previous version decide with the 7-argument
// rate_limit_decide() of 0004, the new ones with 0008's, on the same bucket rows. Both must lock
// them in one order (migration 0009), or an old and a new decision on one user's
// buckets deadlock (40P01, a 503 after a second): whether every bucket exists already, or the
// key's is new (the old function's upsert locked the rows it made before those that existed).
// Needs PostgreSQL: PGlite has one connection.
import postgres from "postgres";
import { afterAll, beforeAll, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "../helpers/harness.js";

let database: TestDatabase;
beforeAll(async () => {
  database = await freshDatabase();
});
afterAll(() => database.drop());

it.runIf(!!process.env.TEST_DATABASE_URL).each([
  { case: "every bucket exists", keyExists: true },
  { case: "the key's bucket is new (its first call)", keyExists: false },
])("an old (0004) and a new (0008) decision on the same buckets at once, $case: no deadlock (skipped on PGlite: needs TEST_DATABASE_URL)", async ({ keyExists }) => {
  const url = database.url!;
  const holder = postgres(url, { max: 1, onnotice: () => {} });
  const oldInstance = postgres(url, { max: 1, onnotice: () => {} });
  const newInstance = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const user = "user:00000000-0000-4000-8000-000000000001:handle_create";
    const key = `key:00000000-0000-4000-8000-00000000000${keyExists ? 2 : 3}:create`;
    if (keyExists) await holder`insert into rate_limit_buckets (key, tat) values (${user}, now()), (${key}, now()), ('global', now())`;
    else await holder`insert into rate_limit_buckets (key, tat) values (${user}, now()), ('global', now()) on conflict do nothing`;
    const T = 6000;
    // A third session holds a row for a moment, so that both decisions are under way together:
    // the key's (the new decision holds user:… and waits for it, the old one held global), or, when
    // the key's is new, the user's (the old one made and held key:… before waiting for user:…).
    const reserved = await holder.reserve();
    await reserved`begin`;
    await reserved`select 1 from rate_limit_buckets where key = ${keyExists ? key : user} for update`;

    const newCall = newInstance.unsafe(
      `select o_allowed from rate_limit_decide($1::text[], $2::int[], $3::int[], $4::float8[], $5::float8[], $6::float8[], $7::int[], $8::text[])`,
      [`{"${user}","${key}",global}`, "{0,0,0}", "{1,2,3}", `{${T},${T},${T}}`, `{${10 * T},${10 * T},${10 * T}}`, "{1,1,1}", "{}", "{}"],
    ).execute(); // postgres.js runs a query only once asked to
    await new Promise((r) => setTimeout(r, 300));
    const oldCall = oldInstance.unsafe(
      `select o_allowed from rate_limit_decide($1::int[], $2::text[], $3::float8[], $4::float8[], $5::float8[], $6::int[], $7::text[])`,
      ["{1,1,1}", `{global,"${key}","${user}"}`, `{${T},${T},${T}}`, `{${10 * T},${10 * T},${10 * T}}`, "{1,1,1}", "{}", "{}"],
    ).execute();
    await new Promise((r) => setTimeout(r, 300));
    await reserved`commit`;
    reserved.release();

    const results = await Promise.allSettled([newCall, oldCall]);
    const errors = results.flatMap((r) => (r.status === "rejected" ? [`${(r.reason as { code?: string }).code} ${(r.reason as Error).message}`] : []));
    expect(errors, "a decision failed").toEqual([]);
  } finally {
    await Promise.all([holder.end(), oldInstance.end(), newInstance.end()]);
  }
}, 20_000);

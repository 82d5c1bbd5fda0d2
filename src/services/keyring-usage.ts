// Which keyring entries still seal something. The start refuses a keyring that lacks one of them,
// and `vault status` prints the counts.
import { sql } from "drizzle-orm";
import type { Keyring } from "../crypto/keyring.js";
import { rowsOf, type Executor } from "../db/client.js";

/** Every table that holds sealed material, with its keyring-id column. */
export const SEALED_TABLES = [
  { table: "haltman_keys", what: "data keys of stored Haltman keys" },
  { table: "signing_keys", what: "token-signing keys" },
  { table: "vault_secrets", what: "vault secrets" },
] as const;

export type KeyringUsage = { keyringId: string; table: string; count: number }[];

export async function keyringUsage(ex: Executor): Promise<KeyringUsage> {
  const out: KeyringUsage = [];
  for (const t of SEALED_TABLES) {
    const rows = await rowsOf<{ keyring_id: string; n: number }>(
      ex,
      sql`select keyring_id, count(*)::int as n from ${sql.identifier(t.table)} group by keyring_id order by keyring_id`,
    );
    for (const r of rows) out.push({ keyringId: r.keyring_id, table: t.table, count: Number(r.n) });
  }
  return out;
}

/** The entry ids in use that the keyring cannot open (named, never their material). */
export async function missingKeyringEntries(ex: Executor, keyring: Keyring): Promise<string[]> {
  const used = new Set((await keyringUsage(ex)).map((u) => u.keyringId));
  return [...used].filter((id) => !keyring.has(id)).sort();
}

// Master-key rotation: re-seal everything under the keyring's active entry, a batch at a time.
// Each row is swapped with a compare-and-set on its old box, so a rotation can be killed and run
// again at any point, and a row changed or deleted meanwhile by a request is never overwritten.
import { and, eq, ne } from "drizzle-orm";
import { rewrapDek } from "../crypto/envelope.js";
import type { Binding, Keyring, Sealed } from "../crypto/keyring.js";
import type { Db } from "../db/client.js";
import { haltmanKeys, signingKeys, vaultSecrets } from "../db/schema.js";
import { signingBinding } from "./tokens.js";
import { secretBinding } from "./vault.js";

export type RotationReport = { resealed: number; skipped: number; byTable: Record<string, number> };

export async function rotateKeyring(
  db: Db,
  keyring: Keyring,
  opts: { batchSize?: number; onBatch?: (table: string, n: number) => void | Promise<void> } = {},
): Promise<RotationReport> {
  const batch = opts.batchSize ?? 100;
  const active = keyring.activeId;
  const report: RotationReport = { resealed: 0, skipped: 0, byTable: {} };
  const count = (table: string, n: number) => {
    report.resealed += n;
    report.byTable[table] = (report.byTable[table] ?? 0) + n;
  };
  // Rows whose swap lost a race are retried in the next pass; rows that fail to open are skipped
  // (and reported) rather than stopping the rest.
  const failed = new Set<string>();

  for (;;) {
    const rows = await db
      .select({ id: haltmanKeys.id, ownerId: haltmanKeys.ownerId, wrappedDek: haltmanKeys.wrappedDek, keyringId: haltmanKeys.keyringId })
      .from(haltmanKeys)
      .where(ne(haltmanKeys.keyringId, active))
      .limit(batch + failed.size);
    const todo = rows.filter((r) => !failed.has(r.id)).slice(0, batch);
    if (todo.length === 0) break;
    let n = 0;
    for (const r of todo) {
      let next;
      try {
        next = rewrapDek(keyring, r);
      } catch {
        failed.add(r.id);
        continue;
      }
      const swapped = await db
        .update(haltmanKeys)
        .set(next)
        .where(and(eq(haltmanKeys.id, r.id), eq(haltmanKeys.keyringId, r.keyringId), eq(haltmanKeys.wrappedDek, r.wrappedDek)))
        .returning({ id: haltmanKeys.id });
      n += swapped.length;
    }
    count("haltman_keys", n);
    await opts.onBatch?.("haltman_keys", n);
  }

  // The service's own sealed items: few rows, sealed directly by the keyring.
  const signing = await db.select().from(signingKeys).where(ne(signingKeys.keyringId, active));
  for (const r of signing) {
    const resealed = reseal(keyring, { keyringId: r.keyringId, box: r.privateSealed }, signingBinding(r.kid));
    if (!resealed) {
      failed.add(`signing_keys:${r.kid}`);
      continue;
    }
    const swapped = await db
      .update(signingKeys)
      .set({ privateSealed: resealed.box, keyringId: resealed.keyringId })
      .where(and(eq(signingKeys.kid, r.kid), eq(signingKeys.keyringId, r.keyringId)))
      .returning({ kid: signingKeys.kid });
    count("signing_keys", swapped.length);
  }
  const secrets = await db.select().from(vaultSecrets).where(ne(vaultSecrets.keyringId, active));
  for (const r of secrets) {
    const resealed = reseal(keyring, { keyringId: r.keyringId, box: r.sealed }, secretBinding(r.name));
    if (!resealed) {
      failed.add(`vault_secrets:${r.name}`);
      continue;
    }
    const swapped = await db
      .update(vaultSecrets)
      .set({ sealed: resealed.box, keyringId: resealed.keyringId })
      .where(and(eq(vaultSecrets.name, r.name), eq(vaultSecrets.keyringId, r.keyringId)))
      .returning({ name: vaultSecrets.name });
    count("vault_secrets", swapped.length);
  }
  report.skipped = failed.size;
  return report;
}

function reseal(keyring: Keyring, sealed: Sealed, binding: Binding): Sealed | undefined {
  try {
    const plain = keyring.open(sealed, binding);
    const next = keyring.seal(plain, binding);
    plain.fill(0);
    return next;
  } catch {
    return undefined;
  }
}

// Envelope encryption of stored Haltman keys: a fresh random data key (DEK) per stored key seals
// the key; the keyring's active entry seals (wraps) the DEK. Both boxes are bound to the row's id
// and owner, so neither can be moved to another row, nor one used in place of the other.
import { createHmac, randomBytes } from "node:crypto";
import { openWith, sealWith, type Keyring } from "./keyring.js";

export type KeyEnvelope = { sealedKey: Buffer; wrappedDek: Buffer; keyringId: string };
export type KeyRowRef = { id: string; ownerId: string };

const keyBinding = (r: KeyRowRef) => ({ purpose: "haltman-api-key", table: "haltman_keys", id: r.id, owner: r.ownerId });
export const dekBinding = (r: KeyRowRef) => ({ purpose: "haltman-key-dek", table: "haltman_keys", id: r.id, owner: r.ownerId });

export function sealApiKey(keyring: Keyring, row: KeyRowRef, apiKey: string): KeyEnvelope {
  const dek = randomBytes(32);
  const plaintext = Buffer.from(apiKey, "utf8");
  try {
    const sealedKey = sealWith(dek, plaintext, keyBinding(row));
    const wrapped = keyring.seal(dek, dekBinding(row));
    return { sealedKey, wrappedDek: wrapped.box, keyringId: wrapped.keyringId };
  } finally {
    dek.fill(0);
    plaintext.fill(0);
  }
}

/**
 * Opens a stored key for the one upstream call that needs it. Throws OpenError (never with
 * material) when either box was tampered with, moved, or sealed under an entry we lack.
 */
export function openApiKey(keyring: Keyring, row: KeyRowRef & KeyEnvelope): string {
  const dek = keyring.open({ keyringId: row.keyringId, box: row.wrappedDek }, dekBinding(row));
  try {
    const plain = openWith(dek, row.sealedKey, keyBinding(row));
    const key = plain.toString("utf8");
    plain.fill(0);
    return key;
  } finally {
    dek.fill(0);
  }
}

/** Re-wraps a DEK under the keyring's active entry (rotation); the key's own box is untouched. */
export function rewrapDek(keyring: Keyring, row: KeyRowRef & { wrappedDek: Buffer; keyringId: string }): { wrappedDek: Buffer; keyringId: string } {
  const dek = keyring.open({ keyringId: row.keyringId, box: row.wrappedDek }, dekBinding(row));
  try {
    const w = keyring.seal(dek, dekBinding(row));
    return { wrappedDek: w.box, keyringId: w.keyringId };
  } finally {
    dek.fill(0);
  }
}

/** A keyed fingerprint: equal keys give equal fingerprints; without the secret it reveals nothing. */
export function fingerprint(secret: Buffer, apiKey: string): Buffer {
  return createHmac("sha256", secret).update(apiKey, "utf8").digest();
}

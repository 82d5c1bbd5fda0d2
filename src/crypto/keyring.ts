// The master keyring (VAULT_KEYRING): AES-256-GCM entries `id:base64-of-32-bytes`, the first
// seals, all open. A sealed box records which entry sealed it, so rotation is a data migration
// (re-seal under the new first entry), never an outage.
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";

const NONCE_BYTES = 12; // 96-bit random nonce: the size GCM is defined for
const TAG_BYTES = 16; // 128-bit tag, enforced on open (setAuthTag alone would accept a short one)
const VERSION = 1;

export type Sealed = {
  /** the keyring entry that sealed it */
  keyringId: string;
  /** version byte | nonce | ciphertext | tag */
  box: Buffer;
};

/**
 * What binds a box to where it lives: a ciphertext copied into another row, or used for another
 * purpose, fails to open. Kept as fields so a call site cannot forget a part.
 */
export type Binding = { purpose: string; table: string; id: string; owner?: string };

export function aad(b: Binding): Buffer {
  // Length-prefixed, so that no two different bindings encode to the same bytes. One buffer,
  // written in place: this runs twice on every proxied call (a key's box and its DEK's).
  const parts = [b.purpose, b.table, b.id, b.owner ?? ""];
  let size = 0;
  for (const p of parts) size += 4 + Buffer.byteLength(p, "utf8");
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (const p of parts) {
    const n = out.write(p, at + 4, "utf8");
    out.writeUInt32BE(n, at);
    at += 4 + n;
  }
  return out;
}

export class OpenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OpenError";
  }
}

export function sealWith(key: Buffer, plaintext: Buffer, binding: Binding): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad(binding));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([VERSION]), nonce, body, cipher.getAuthTag()]);
}

export function openWith(key: Buffer, box: Buffer, binding: Binding): Buffer {
  if (box.length < 1 + NONCE_BYTES + TAG_BYTES || box[0] !== VERSION) throw new OpenError("sealed box is malformed");
  const nonce = box.subarray(1, 1 + NONCE_BYTES);
  const tag = box.subarray(box.length - TAG_BYTES);
  const body = box.subarray(1 + NONCE_BYTES, box.length - TAG_BYTES);
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(aad(binding));
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    // Never the cause: it says nothing useful and must not carry material.
    throw new OpenError("sealed box failed to open (tampered, moved, or sealed under another key)");
  }
}

export class Keyring {
  readonly activeId: string;
  readonly #entries: Map<string, Buffer>;

  private constructor(entries: Map<string, Buffer>, activeId: string) {
    this.#entries = entries;
    this.activeId = activeId;
  }

  /**
   * Parses `id:base64,...`. Problems name the entry by position and id only; the material is
   * never part of a message.
   */
  static parse(text: string): Keyring {
    const entries = new Map<string, Buffer>();
    let activeId: string | undefined;
    const problems: string[] = [];
    text.split(",").forEach((raw, i) => {
      const entry = raw.trim();
      const colon = entry.indexOf(":");
      const id = colon > 0 ? entry.slice(0, colon) : "";
      if (!/^[A-Za-z0-9._-]{1,32}$/.test(id)) {
        problems.push(`entry ${i + 1}: expected id:base64-of-32-bytes with an id of 1 to 32 of A-Z a-z 0-9 . _ -`);
        return;
      }
      const b64 = entry.slice(colon + 1);
      const key = /^[A-Za-z0-9+/_-]+={0,2}$/.test(b64) ? Buffer.from(b64, "base64") : Buffer.alloc(0);
      if (key.length !== 32) {
        problems.push(`entry ${i + 1} (id "${id}"): the key must be base64 of exactly 32 bytes`);
        return;
      }
      if (entries.has(id)) {
        problems.push(`entry ${i + 1}: id "${id}" appears twice`);
        return;
      }
      entries.set(id, key);
      activeId ??= id;
    });
    if (problems.length > 0 || activeId === undefined) {
      throw new KeyringError(problems.length > 0 ? problems : ["no entries"]);
    }
    return new Keyring(entries, activeId);
  }

  static generateEntry(id = "k1"): string {
    return `${id}:${randomBytes(32).toString("base64")}`;
  }

  ids(): string[] {
    return [...this.#entries.keys()];
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  seal(plaintext: Buffer, binding: Binding): Sealed {
    return { keyringId: this.activeId, box: sealWith(this.#entries.get(this.activeId)!, plaintext, binding) };
  }

  open(sealed: Sealed, binding: Binding): Buffer {
    const key = this.#entries.get(sealed.keyringId);
    if (!key) throw new OpenError(`keyring entry "${sealed.keyringId}" is not in VAULT_KEYRING`);
    return openWith(key, sealed.box, binding);
  }

  /** Never let the material reach a log through util.inspect or JSON.stringify. */
  toJSON() {
    return { activeId: this.activeId, ids: this.ids() };
  }
  [Symbol.for("nodejs.util.inspect.custom")]() {
    return `Keyring(${this.ids().join(",")})`;
  }
}

export class KeyringError extends Error {
  constructor(readonly problems: string[]) {
    super(`VAULT_KEYRING: ${problems.join("; ")}`);
    this.name = "KeyringError";
  }
}

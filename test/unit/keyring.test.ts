// crypto/keyring.ts: AES-256-GCM seal/open, tamper detection, bindings, rotation, parse errors,
// and that no material leaks through JSON.stringify or util.inspect.
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { Keyring, KeyringError, OpenError, aad, openWith, sealWith, type Binding } from "../../src/crypto/keyring.js";

const KEY_A = Buffer.alloc(32, 0xa1);
const KEY_B = Buffer.alloc(32, 0xb2);
const B64_A = KEY_A.toString("base64");
const B64_B = KEY_B.toString("base64");
const ringA = Keyring.parse(`a:${B64_A}`);
const ringBA = Keyring.parse(`b:${B64_B},a:${B64_A}`);
const binding: Binding = { purpose: "haltman-api-key", table: "keys", id: "6f1c9a9e-3f53-4c1e-9b49-2d3c1c7f0a11", owner: "u-1" };
const plaintext = Buffer.from("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");

function openFails(ring: Keyring, sealed: { keyringId: string; box: Buffer }, b: Binding) {
  expect(() => ring.open(sealed, b)).toThrow(OpenError);
}

describe("seal and open", () => {
  it("round-trips", () => {
    const sealed = ringA.seal(plaintext, binding);
    expect(sealed.keyringId).toBe("a");
    expect(ringA.open(sealed, binding).equals(plaintext)).toBe(true);
    // empty plaintext too
    expect(ringA.open(ringA.seal(Buffer.alloc(0), binding), binding).length).toBe(0);
  });

  it("the box is version | 12-byte nonce | ciphertext | 16-byte tag, and never holds the plaintext", () => {
    const sealed = ringA.seal(plaintext, binding);
    expect(sealed.box.length).toBe(1 + 12 + plaintext.length + 16);
    expect(sealed.box.includes(plaintext.subarray(0, 16))).toBe(false);
  });

  it("uses a fresh nonce each time", () => {
    const x = ringA.seal(plaintext, binding).box;
    const y = ringA.seal(plaintext, binding).box;
    expect(x.equals(y)).toBe(false);
    expect(x.subarray(1, 13).equals(y.subarray(1, 13))).toBe(false);
  });

  it("flipping any single bit of the box (version, nonce, ciphertext or tag) fails to open", () => {
    const sealed = ringA.seal(plaintext, binding);
    let tried = 0;
    for (let byte = 0; byte < sealed.box.length; byte++) {
      for (let bit = 0; bit < 8; bit++) {
        const box = Buffer.from(sealed.box);
        box[byte]! ^= 1 << bit;
        openFails(ringA, { keyringId: "a", box }, binding);
        tried++;
      }
    }
    expect(tried).toBe(sealed.box.length * 8);
    // the untouched box still opens (the loop did not damage it)
    expect(ringA.open(sealed, binding).equals(plaintext)).toBe(true);
  });

  it("a truncated tag fails to open (by 1 byte, by 4 bytes, and all of it)", () => {
    const sealed = ringA.seal(plaintext, binding);
    for (const cut of [1, 4, 8, 16, 17, sealed.box.length - 1]) {
      openFails(ringA, { keyringId: "a", box: sealed.box.subarray(0, sealed.box.length - cut) }, binding);
    }
    openFails(ringA, { keyringId: "a", box: Buffer.alloc(0) }, binding);
  });

  it("appending bytes fails to open", () => {
    const sealed = ringA.seal(plaintext, binding);
    openFails(ringA, { keyringId: "a", box: Buffer.concat([sealed.box, Buffer.from([0])]) }, binding);
  });

  it("a different binding fails to open: other id, purpose, table or owner", () => {
    const sealed = ringA.seal(plaintext, binding);
    openFails(ringA, sealed, { ...binding, id: "6f1c9a9e-3f53-4c1e-9b49-2d3c1c7f0a12" });
    openFails(ringA, sealed, { ...binding, purpose: "jwt-signing-key" });
    openFails(ringA, sealed, { ...binding, table: "signing_keys" });
    openFails(ringA, sealed, { ...binding, owner: "u-2" });
    const { owner: _owner, ...noOwner } = binding;
    openFails(ringA, sealed, noOwner);
    // the same binding, as a new object, opens
    expect(ringA.open(sealed, { ...binding }).equals(plaintext)).toBe(true);
  });

  it("bindings are encoded unambiguously (moving bytes between fields changes the AAD)", () => {
    const x = aad({ purpose: "ab", table: "c", id: "d" });
    const y = aad({ purpose: "a", table: "bc", id: "d" });
    expect(x.equals(y)).toBe(false);
    const sealed = sealWith(KEY_A, plaintext, { purpose: "ab", table: "c", id: "d" });
    expect(() => openWith(KEY_A, sealed, { purpose: "a", table: "bc", id: "d" })).toThrow(OpenError);
  });

  it("the AAD's bytes are fixed: boxes sealed by earlier versions still open", () => {
    // Each field as a 4-byte big-endian length (of its UTF-8 bytes) and the bytes; owner last, empty when absent.
    expect(aad({ purpose: "ab", table: "c", id: "d" }).toString("hex")).toBe("00000002616200000001630000000164" + "00000000");
    expect(aad({ purpose: "p", table: "t", id: "é", owner: "o" }).toString("hex")).toBe("0000000170" + "0000000174" + "00000002c3a9" + "000000016f");
  });

  it("another key fails to open, even under the same entry id", () => {
    const sealed = ringA.seal(plaintext, binding);
    openFails(Keyring.parse(`a:${B64_B}`), sealed, binding);
  });

  it("an OpenError carries no material and no cause", () => {
    const sealed = ringA.seal(plaintext, binding);
    const box = Buffer.from(sealed.box);
    box[20]! ^= 1;
    try {
      ringA.open({ keyringId: "a", box }, binding);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(OpenError);
      const text = `${(err as Error).message} ${(err as Error).stack} ${inspect(err)}`;
      expect(text).not.toContain(B64_A);
      expect(text).not.toContain(KEY_A.toString("hex"));
      expect((err as Error).cause).toBeUndefined();
    }
  });
});

describe("rotation", () => {
  it("a box sealed under entry a opens with keyring b:…,a:…, and new seals use b", () => {
    const old = ringA.seal(plaintext, binding);
    expect(old.keyringId).toBe("a");
    expect(ringBA.activeId).toBe("b");
    expect(ringBA.ids()).toEqual(["b", "a"]);
    expect(ringBA.open(old, binding).equals(plaintext)).toBe(true);
    const fresh = ringBA.seal(plaintext, binding);
    expect(fresh.keyringId).toBe("b");
    expect(ringBA.open(fresh, binding).equals(plaintext)).toBe(true);
    // a keyring without b cannot open it, and says which entry is missing
    expect(() => ringA.open(fresh, binding)).toThrow(OpenError);
    expect(() => ringA.open(fresh, binding)).toThrow(/"b"/);
  });

  it("a box claiming the wrong entry fails", () => {
    const old = ringA.seal(plaintext, binding);
    openFails(ringBA, { keyringId: "b", box: old.box }, binding);
  });
});

describe("parse", () => {
  const MATERIAL31 = Buffer.alloc(31, 0x5c).toString("base64"); // distinctive, and 31 bytes
  const MATERIAL33 = Buffer.alloc(33, 0x3e).toString("base64");

  function problems(text: string): string[] {
    try {
      Keyring.parse(text);
    } catch (err) {
      expect(err).toBeInstanceOf(KeyringError);
      for (const secret of [MATERIAL31, MATERIAL33, B64_A, B64_B]) {
        expect((err as Error).message).not.toContain(secret);
        expect(String((err as Error).stack)).not.toContain(secret);
      }
      return (err as KeyringError).problems;
    }
    throw new Error(`parsed: ${text}`);
  }

  it("names the entry index and id for a key of the wrong size, never the material", () => {
    const p = problems(`a:${B64_A},short:${MATERIAL31}`);
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/entry 2/);
    expect(p[0]).toContain('"short"');
    expect(p[0]).not.toContain(MATERIAL31);
    const q = problems(`long:${MATERIAL33}`);
    expect(q[0]).toMatch(/entry 1/);
    expect(q[0]).toContain('"long"');
  });

  it("names the entry for bad base64, a bad id, a duplicate id, a missing colon", () => {
    expect(problems(`k1:${B64_A.slice(0, 20)}!!${B64_A.slice(22)}`)[0]).toMatch(/entry 1 \(id "k1"\)/);
    expect(problems(`bad id!:${B64_A}`)[0]).toMatch(/entry 1/);
    expect(problems(`a:${B64_A},a:${B64_B}`)[0]).toMatch(/entry 2.*"a"/);
    // no colon: the whole entry may be material; it must not be echoed as an "id"
    const noColon = problems(`a:${B64_A},${B64_B}`);
    expect(noColon[0]).toMatch(/entry 2/);
    expect(noColon[0]).not.toContain(B64_B.slice(0, 10));
    expect(problems(`:${B64_A}`)[0]).toMatch(/entry 1/);
  });

  it("reports every bad entry, one problem each", () => {
    const p = problems(`x:${MATERIAL31},y:${B64_A},z:${MATERIAL33}`);
    expect(p).toHaveLength(2);
    expect(p[0]).toMatch(/entry 1/);
    expect(p[1]).toMatch(/entry 3/);
  });

  it("refuses an empty keyring", () => {
    expect(problems("").length).toBeGreaterThan(0);
  });

  it("accepts spaces around entries, and url-safe base64", () => {
    expect(Keyring.parse(` a:${B64_A} , b:${B64_B} `).ids()).toEqual(["a", "b"]);
    const urlSafe = Buffer.alloc(32, 0xfb).toString("base64url");
    expect(Keyring.parse(`u:${urlSafe}`).ids()).toEqual(["u"]);
  });

  it("generateEntry makes a parsable entry with 32 random bytes", () => {
    const e1 = Keyring.generateEntry("g1");
    const e2 = Keyring.generateEntry("g1");
    expect(e1).not.toBe(e2);
    expect(Keyring.parse(e1).ids()).toEqual(["g1"]);
  });
});

describe("no material leaks", () => {
  it("JSON.stringify and util.inspect of a Keyring show ids only", () => {
    const outputs = [
      JSON.stringify(ringBA),
      JSON.stringify({ nested: { ringBA } }),
      inspect(ringBA),
      inspect(ringBA, { showHidden: true, depth: Infinity }),
      inspect({ nested: [ringBA] }, { depth: Infinity }),
      String(ringBA),
      `${Object.keys(ringBA)} ${Object.getOwnPropertyNames(ringBA)} ${JSON.stringify({ ...ringBA })}`,
    ];
    for (const out of outputs) {
      for (const secret of [B64_A, B64_B, KEY_A.toString("hex"), KEY_B.toString("hex"), KEY_A.toString("base64url")]) {
        expect(out).not.toContain(secret);
      }
      expect(out).not.toMatch(/<Buffer|\ba1 a1 a1\b|161, 161/);
    }
    expect(JSON.parse(JSON.stringify(ringBA))).toEqual({ activeId: "b", ids: ["b", "a"] });
    expect(inspect(ringBA)).toContain("b");
  });
});

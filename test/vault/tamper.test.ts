// Issue 3, tampering: a stored key whose boxes were changed or moved in the database fails
// closed: 500 internal_error, nothing sent upstream, an error logged without material. Restoring
// the row makes it work again (the control that the failure came from the tampering).
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../../src/simulator/server.js";
import { expectErrorBody, type Service } from "../helpers/harness.js";
import { keyRow, leakForms, leaksIn, proxyCreate, randomApiKey, startVaultService, storeKey, useKey, type KeyRow } from "./common.js";

let sim: Simulator;
let svc: Service;
let ann: { id: string; token: string };
let ben: { id: string; token: string };
const plain = { a: randomApiKey(), b: randomApiKey(), c: randomApiKey() };
const ids = { a: "", b: "", c: "" };
const token = () => ({ a: ann.token, b: ann.token, c: ben.token });

beforeAll(async () => {
  sim = await startSimulator();
  svc = await startVaultService(sim);
  ann = await svc.addUser(svc.admin.token, "ann");
  ben = await svc.addUser(svc.admin.token, "ben");
  for (const k of ["a", "b", "c"] as const) sim.addKey(plain[k], `${k}@example.com`);
  ids.a = await storeKey(svc, ann.token, plain.a, "ann's first");
  ids.b = await storeKey(svc, ann.token, plain.b, "ann's second");
  ids.c = await storeKey(svc, ben.token, plain.c, "ben's");
});
afterAll(async () => {
  await svc?.close();
  await sim?.close();
});

const flipBit = (hex: string, byte: number, bit = 0) => {
  const b = Buffer.from(hex, "hex");
  b[byte] = b[byte]! ^ (1 << bit);
  return b.toString("hex");
};

async function setBoxes(id: string, boxes: { sealed_key?: string; wrapped_dek?: string; keyring_id?: string }) {
  const cur = await keyRow(svc.deps.db, id);
  const next = { ...cur, ...boxes };
  await svc.deps.db.execute(
    sql`update haltman_keys set sealed_key = decode(${next.sealed_key}, 'hex'), wrapped_dek = decode(${next.wrapped_dek}, 'hex'),
        keyring_id = ${next.keyring_id} where id = ${id}`,
  );
}

/** Everything that would be key material in a log line or an answer: the key, and the boxes in every encoding. */
function material(key: string, rows: KeyRow[]): string[] {
  const boxes = rows.flatMap((r) => [r.sealed_key, r.wrapped_dek]);
  const all = [
    ...leakForms(key),
    ...boxes.flatMap((h) => [h, Buffer.from(h, "hex").toString("base64"), Buffer.from(h, "hex").toString("base64url")]),
    // a sizeable slice of each box in hex and base64, in case a message quotes part of one
    ...boxes.map((h) => h.slice(26, 26 + 32)),
    ...boxes.map((h) => Buffer.from(h, "hex").subarray(13, 37).toString("base64")),
  ];
  return all.filter((n) => n.length >= 16); // an empty box has no material to leak
}

/**
 * Tampers with `victim`'s row, makes the proxied call and checks that it failed closed; then
 * restores the row and checks that the same call works.
 */
async function expectFailsClosed(victim: keyof typeof ids, tamper: (row: KeyRow) => Promise<void> | void) {
  const original = await keyRow(svc.deps.db, ids[victim]);
  await tamper(original);
  const tampered = await keyRow(svc.deps.db, ids[victim]);
  expect(tampered).not.toEqual(original);
  const sent = sim.received.length;
  const logMark = svc.rawLogs.length;
  const r = await proxyCreate(svc, token()[victim], ids[victim]);
  try {
    expectErrorBody(r, 500, "internal_error");
    expect(Object.keys(r.json).sort()).toEqual(["error", "message", "request_id"]);
    expect(r.headers.get("ratelimit"), "every proxied answer carries the RateLimit headers").toMatch(/"user";r=\d+;t=\d+/);
    expect(sim.received.length, "nothing may reach upstream").toBe(sent);
    const lines = svc.rawLogs.slice(logMark);
    const parsed = svc.logs.slice(logMark);
    const errors = parsed.filter((l) => l.level === "error" && JSON.stringify(l).includes(ids[victim]));
    expect(errors.length, `an error line naming the key:\n${lines.join("")}`).toBeGreaterThanOrEqual(1);
    // and the request's own id is in the log, to find the line from the answer
    expect(parsed.some((l) => l.request_id === r.json.request_id && (l.level === "error" || l.level === "warn"))).toBe(true);
    const needles = material(plain[victim], [original, tampered]);
    expect(lines.flatMap((l) => leaksIn(l, needles))).toEqual([]);
    expect(leaksIn(r.text, needles)).toEqual([]);
    expect(leaksIn(JSON.stringify([...r.headers.entries()]), needles)).toEqual([]);
  } finally {
    await setBoxes(ids[victim], original);
  }
  // Control: the restored row opens, and upstream receives the right key.
  expect(await useKey(svc, sim, token()[victim], ids[victim])).toBe(plain[victim]);
}

describe("a tampered stored key fails closed", () => {
  it("controls: every key works untouched", async () => {
    for (const k of ["a", "b", "c"] as const) expect(await useKey(svc, sim, token()[k], ids[k])).toBe(plain[k]);
    // The layout the cases below rely on: version | 12-byte nonce | ciphertext | 16-byte tag.
    const r = await keyRow(svc.deps.db, ids.a);
    expect(Buffer.from(r.sealed_key, "hex").length).toBe(1 + 12 + 64 + 16);
    expect(Buffer.from(r.wrapped_dek, "hex").length).toBe(1 + 12 + 32 + 16);
  });

  it("one bit of sealed_key's nonce flipped", () =>
    expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: flipBit(r.sealed_key, 1 + 5, 3) })));

  it("one bit of sealed_key's ciphertext flipped", () =>
    expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: flipBit(r.sealed_key, 13 + 20, 0) })));

  it("one bit of sealed_key's tag flipped", () =>
    expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: flipBit(r.sealed_key, 1 + 12 + 64 + 15, 7) })));

  it("sealed_key's version byte changed", () =>
    expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: flipBit(r.sealed_key, 0, 1) })));

  it("one bit of wrapped_dek flipped (nonce, ciphertext, tag)", async () => {
    await expectFailsClosed("b", (r) => setBoxes(ids.b, { wrapped_dek: flipBit(r.wrapped_dek, 1 + 2, 5) }));
    await expectFailsClosed("b", (r) => setBoxes(ids.b, { wrapped_dek: flipBit(r.wrapped_dek, 13 + 7, 2) }));
    await expectFailsClosed("b", (r) => setBoxes(ids.b, { wrapped_dek: flipBit(r.wrapped_dek, 1 + 12 + 32 + 3, 4) }));
  });

  it("the tag truncated (sealed_key by 1 and by 16 bytes, wrapped_dek by 4)", async () => {
    await expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: r.sealed_key.slice(0, -2) }));
    await expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: r.sealed_key.slice(0, -32) }));
    await expectFailsClosed("c", (r) => setBoxes(ids.c, { wrapped_dek: r.wrapped_dek.slice(0, -8) }));
  });

  it("an empty box", async () => {
    await expectFailsClosed("c", () => setBoxes(ids.c, { sealed_key: "" }));
    await expectFailsClosed("c", () => setBoxes(ids.c, { wrapped_dek: "" }));
  });

  it("another key's sealed_key and wrapped_dek moved in: same owner", async () => {
    const donor = await keyRow(svc.deps.db, ids.a);
    await expectFailsClosed("b", () => setBoxes(ids.b, { sealed_key: donor.sealed_key, wrapped_dek: donor.wrapped_dek }));
    // the donor itself is untouched and still works
    expect(await useKey(svc, sim, ann.token, ids.a)).toBe(plain.a);
  });

  it("another key's sealed_key and wrapped_dek moved in: another owner", async () => {
    const donor = await keyRow(svc.deps.db, ids.a);
    await expectFailsClosed("c", () => setBoxes(ids.c, { sealed_key: donor.sealed_key, wrapped_dek: donor.wrapped_dek }));
    const other = await keyRow(svc.deps.db, ids.c);
    await expectFailsClosed("a", () => setBoxes(ids.a, { sealed_key: other.sealed_key, wrapped_dek: other.wrapped_dek }));
  });

  it("only one of the two boxes moved in from another key", async () => {
    const donor = await keyRow(svc.deps.db, ids.a);
    await expectFailsClosed("b", () => setBoxes(ids.b, { sealed_key: donor.sealed_key }));
    await expectFailsClosed("b", () => setBoxes(ids.b, { wrapped_dek: donor.wrapped_dek }));
  });

  it("the two boxes swapped within the row", () =>
    expectFailsClosed("a", (r) => setBoxes(ids.a, { sealed_key: r.wrapped_dek, wrapped_dek: r.sealed_key })));

  it("the row moved to another owner (owner_id changed)", async () => {
    const original = await keyRow(svc.deps.db, ids.c);
    await svc.deps.db.execute(sql`update haltman_keys set owner_id = ${ann.id} where id = ${ids.c}`);
    try {
      const sent = sim.received.length;
      const r = await proxyCreate(svc, ann.token, ids.c);
      expectErrorBody(r, 500, "internal_error");
      expect(sim.received.length).toBe(sent);
    } finally {
      await svc.deps.db.execute(sql`update haltman_keys set owner_id = ${original.owner_id} where id = ${ids.c}`);
    }
    expect(await useKey(svc, sim, ben.token, ids.c)).toBe(plain.c);
  });

  it("a keyring entry the service lacks", () => expectFailsClosed("c", () => setBoxes(ids.c, { keyring_id: "zz" })));
});

// services/refusals.ts: the window in which an instance refuses a caller on its own.
import { describe, expect, it } from "vitest";
import { createLocalRefusals } from "../../src/services/refusals.js";

describe("local refusals", () => {
  const at = (t: { now: number }) => () => t.now;

  it("lasts from when the call was handed to the database, for the database's wait, capped", () => {
    const t = { now: 1_000 };
    const r = createLocalRefusals({ maxMs: 1_000, now: at(t) });
    r.note("u", "handle_create", 900, 300, []); // asked at 900, next admission 300 ms later: until 1200
    expect(r.check("u", "handle_create")?.until).toBe(1_200);
    expect(r.check("u", "domain_enable")).toBeUndefined(); // per action
    expect(r.check("v", "handle_create")).toBeUndefined(); // per user
    t.now = 1_199;
    expect(r.check("u", "handle_create")).toBeDefined();
    t.now = 1_200;
    expect(r.check("u", "handle_create")).toBeUndefined();
  });

  it("a long wait is refused locally for the cap only, but the time of the next admission is kept", () => {
    const t = { now: 0 };
    const r = createLocalRefusals({ maxMs: 1_000, now: at(t) });
    r.note("u", "handle_create", 0, 6_000, []);
    expect(r.check("u", "handle_create")).toMatchObject({ until: 1_000, nextAllowed: 6_000 });
    t.now = 1_000;
    expect(r.check("u", "handle_create")).toBeUndefined(); // the database decides again
  });

  it("forgetUser ends the caller's windows (an admin changed their limits)", () => {
    const r = createLocalRefusals({ now: () => 0 });
    r.note("u", "handle_create", 0, 500, []);
    r.note("u", "domain_enable", 0, 500, []);
    r.note("v", "handle_create", 0, 500, []);
    r.forgetUser("u");
    expect(r.check("u", "handle_create")).toBeUndefined();
    expect(r.check("u", "domain_enable")).toBeUndefined();
    expect(r.check("v", "handle_create")).toBeDefined();
  });

  it("a refusal the database decided before forgetUser and answered after it is not taken up; one decided after it is", () => {
    const t = { now: 1_000 };
    const r = createLocalRefusals({ maxMs: 1_000, now: at(t) });
    r.forgetUser("u"); // at 1000: an admin raised u's limit
    t.now = 1_010;
    r.note("u", "handle_create", 990, 500, []); // handed to the database at 990, before the change
    expect(r.check("u", "handle_create")).toBeUndefined();
    r.note("u", "handle_create", 1_000, 500, []); // at the same moment: still not after it
    expect(r.check("u", "handle_create")).toBeUndefined();
    r.note("v", "handle_create", 990, 500, []); // another user: untouched
    expect(r.check("v", "handle_create")).toBeDefined();
    r.note("u", "handle_create", 1_005, 500, []); // asked after the change
    expect(r.check("u", "handle_create")).toBeDefined();
    // what forgetUser remembers lasts the cap only (a later refusal is never older than that)
    t.now = 5_000;
    r.forgetUser("w");
    r.note("u", "handle_create", 4_990, 500, []);
    expect(r.check("u", "handle_create")).toBeDefined();
  });

  it("nothing is noted for a window already over, a zero wait, or a cap of 0", () => {
    const r = createLocalRefusals({ now: () => 5_000 });
    r.note("u", "handle_create", 0, 500, []);
    r.note("v", "handle_create", 5_000, 0, []);
    expect(r.check("u", "handle_create")).toBeUndefined();
    expect(r.check("v", "handle_create")).toBeUndefined();
    const off = createLocalRefusals({ maxMs: 0, now: () => 0 });
    off.note("u", "handle_create", 0, 500, []);
    expect(off.check("u", "handle_create")).toBeUndefined();
  });

  it("stays bounded", () => {
    const r = createLocalRefusals({ maxEntries: 3, now: () => 0 });
    for (let i = 0; i < 10; i++) r.note(`u${i}`, "handle_create", 0, 500, []);
    expect(["u7", "u8", "u9"].every((u) => r.check(u, "handle_create"))).toBe(true);
    expect(r.check("u0", "handle_create")).toBeUndefined();
  });
});

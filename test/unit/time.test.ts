// Instants as clients write them (src/time.ts): a date-time without a zone is UTC, whatever the
// server's own time zone (ECMAScript's Date would read it in that zone).
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isRealInstant, parseInstant } from "../../src/time.js";

describe("instants without a zone", () => {
  let tz: string | undefined;
  beforeEach(() => {
    tz = process.env.TZ;
    process.env.TZ = "America/New_York"; // Node reads TZ again when it changes
  });
  afterEach(() => {
    if (tz === undefined) delete process.env.TZ;
    else process.env.TZ = tz;
  });

  it("are read as UTC, on a server whose zone is not", () => {
    expect(new Date("2026-12-04T10:00").toISOString()).toBe("2026-12-04T15:00:00.000Z"); // the control: the zone is in effect
    expect(parseInstant("2026-12-04T10:00").toISOString()).toBe("2026-12-04T10:00:00.000Z");
    expect(parseInstant("2026-12-04T10:00:05.123").toISOString()).toBe("2026-12-04T10:00:05.123Z");
    expect(parseInstant("2026-12-04 10:00:05").toISOString()).toBe("2026-12-04T10:00:05.000Z");
    expect(parseInstant("2026-12-04").toISOString()).toBe("2026-12-04T00:00:00.000Z");
    expect(parseInstant("2026-12-04T10:00:00+02:00").toISOString()).toBe("2026-12-04T08:00:00.000Z");
    expect(parseInstant("2026-12-04T10:00:00Z").toISOString()).toBe("2026-12-04T10:00:00.000Z");
  });

  it("are judged in UTC for the years 1 to 9999", () => {
    expect(isRealInstant("9999-12-31T23:30")).toBe(true); // in New York's time it would be year 10000 in UTC
    expect(isRealInstant("9999-12-31T23:30-02:00")).toBe(false);
  });
});

describe("the first century", () => {
  it("is real: years 1 to 99 are not read as 1901 to 1999", () => {
    for (const s of ["0001-01-01", "0050-06-15T12:00:00Z", "0099-12-31", "0004-02-29"]) expect(isRealInstant(s), s).toBe(true);
    expect(parseInstant("0050-06-15T12:00:00Z").getUTCFullYear()).toBe(50);
    expect(isRealInstant("0003-02-29"), "not a leap year").toBe(false);
    expect(isRealInstant("0000-01-01"), "year 0").toBe(false);
  });
});

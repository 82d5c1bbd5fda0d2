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

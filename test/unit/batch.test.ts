// services/batch.ts: the group commit under the hot path. Calls made while a group's statement
// is under way form the next group; no more than maxInFlight statements at once; each caller gets
// its own result, or the group's error.
import { describe, expect, it } from "vitest";
import { batched } from "../../src/services/batch.js";

const defer = () => {
  let resolve!: () => void;
  const p = new Promise<void>((r) => (resolve = r));
  return { p, resolve };
};

describe("batched()", () => {
  it("the calls of one tick go out as one group, each caller gets its own result", async () => {
    const groups: number[][] = [];
    const run = batched<number, number>(async (items) => {
      groups.push(items);
      return items.map((x) => x * 10);
    });
    expect(await Promise.all([1, 2, 3].map(run))).toEqual([10, 20, 30]);
    expect(groups).toEqual([[1, 2, 3]]);
  });

  it("while a statement is under way, later calls wait and go out together as the next group", async () => {
    const groups: number[][] = [];
    const gates: ReturnType<typeof defer>[] = [];
    let inFlight = 0;
    let most = 0;
    const run = batched<number, number>(
      async (items) => {
        groups.push(items);
        inFlight++;
        most = Math.max(most, inFlight);
        const g = defer();
        gates.push(g);
        await g.p;
        inFlight--;
        return items;
      },
      { maxInFlight: 1 },
    );
    const first = run(1);
    await new Promise((r) => setImmediate(r)); // group [1] is under way
    const later = [2, 3, 4].map(run);
    await new Promise((r) => setImmediate(r));
    expect(groups).toEqual([[1]]); // nothing else went out meanwhile
    gates[0]!.resolve();
    await first;
    await new Promise((r) => setImmediate(r));
    expect(groups).toEqual([[1], [2, 3, 4]]);
    gates[1]!.resolve();
    expect(await Promise.all(later)).toEqual([2, 3, 4]);
    expect(most).toBe(1);
  });

  it("maxInFlight statements run at once, never more", async () => {
    let inFlight = 0;
    let most = 0;
    const run = batched<number, number>(
      async (items) => {
        inFlight++;
        most = Math.max(most, inFlight);
        await new Promise((r) => setTimeout(r, 5));
        inFlight--;
        return items;
      },
      { maxInFlight: 2, maxBatch: 3 },
    );
    const all = await Promise.all(Array.from({ length: 20 }, (_, i) => run(i)));
    expect(all).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(most).toBe(2);
  });

  it("a group is never larger than maxBatch", async () => {
    const sizes: number[] = [];
    const run = batched<number, number>(
      async (items) => {
        sizes.push(items.length);
        return items;
      },
      { maxBatch: 4 },
    );
    await Promise.all(Array.from({ length: 10 }, (_, i) => run(i)));
    expect(Math.max(...sizes)).toBeLessThanOrEqual(4);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(10);
  });

  it("a failed statement fails every call of its group, and the next group still goes", async () => {
    let calls = 0;
    const run = batched<number, number>(async (items) => {
      calls++;
      if (calls === 1) throw new Error("statement failed");
      return items;
    });
    const failed = await Promise.allSettled([run(1), run(2)]);
    expect(failed.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    expect(await run(3)).toBe(3);
  });

  it("an observer that throws frees the group's slot all the same: later groups still go", async () => {
    const run = batched<number, number>(async (items) => items, {
      maxInFlight: 1,
      observe: () => {
        throw new Error("a metric's fault");
      },
    });
    for (let i = 0; i < 3; i++) expect(await run(i)).toBe(i);
  }, 5_000);

  it("a run that throws synchronously fails its group rather than the caller's tick", async () => {
    const run = batched<number, number>(() => {
      throw new Error("sync");
    });
    await expect(run(1)).rejects.toThrow("sync");
  });
});

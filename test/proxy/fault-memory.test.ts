// Faults must not leak: a 5 MB upstream answer is aborted at 1 MiB and nothing of it is kept.
import v8 from "node:v8";
import vm from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// A collection before each reading, so that garbage not yet collected is not taken for a leak.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;
/** V8's heap and the Buffers outside it (a retained upstream body would be a Buffer). */
const used = () => {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};
import { CREATE, post, startPair, storeKey, type Ctx } from "./common.js";

describe("upstream faults and memory", () => {
  let ctx: Ctx;
  beforeAll(async () => {
    ctx = await startPair();
    await storeKey(ctx, ctx.svc.admin.token);
  });
  afterAll(() => ctx.close());

  it("60 oversized (5 MB) answers in a row leave the heap where it was, and the process serves on", async () => {
    const round = async (n: number) => {
      for (let i = 0; i < n; i++) {
        ctx.sim.faults.push({ kind: "oversized", bytes: 5 * 1024 * 1024 });
        const r = await post(ctx, CREATE, ctx.svc.admin.token, { handle: `big-${n}-${i}` });
        expect(r.status).toBe(502);
      }
    };
    await round(10); // warm up: pools, JIT
    const before = used();
    await round(60);
    const grown = used() - before;
    // Retaining the aborted bodies would hold 60 MiB or more (1 MiB read of each before the abort).
    expect(grown, `memory grew by ${Math.round(grown / 2 ** 20)} MiB`).toBeLessThan(40 * 2 ** 20);
    const ok = await post(ctx, CREATE, ctx.svc.admin.token, { handle: "after-the-storm" });
    expect(ok.status).toBe(200);
  }, 60_000);
});

// No Docker engine runs on the CI machine, so the image cannot be built here: this checks the
// properties the Dockerfile must keep (issue 2) so that an edit cannot silently drop one.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SERVICE_NODE_FLAGS } from "../../bench/cast.js";

const text = readFileSync(join(import.meta.dirname, "..", "..", "Dockerfile"), "utf8");
// One instruction a line: continuations joined, comments dropped.
const lines = text
  .replace(/\\\n\s*/g, " ")
  .split("\n")
  .filter((l) => !l.trim().startsWith("#"));
const final = lines.slice(lines.map((l) => /^FROM /.test(l)).lastIndexOf(true));

describe("Dockerfile", () => {
  it("is multi-stage, on Node 24", () => {
    expect(lines.filter((l) => /^FROM /.test(l)).length).toBeGreaterThanOrEqual(2);
    for (const l of lines.filter((x) => /^FROM /.test(x))) expect(l).toMatch(/node:24/);
  });
  it("runs as a non-root user, node directly (so SIGTERM reaches it), with a HEALTHCHECK on /healthz", () => {
    const user = final.find((l) => /^USER /.test(l));
    expect(user).toBeDefined();
    expect(user).not.toMatch(/\broot\b|\b0\b/);
    expect(final.some((l) => /^HEALTHCHECK .*\/healthz/.test(l))).toBe(true);
    expect(final.find((l) => /^CMD /.test(l))).toMatch(/^CMD \["node", (?:"--[^"]+", )*"dist\/index\.js"\]$/);
  });
  it("gives node the memory flags that npm start and the benchmark give it (Node 24's young generation kept to Node 20's)", () => {
    const cmd = final.find((l) => /^CMD /.test(l))!;
    const flags = [...cmd.matchAll(/"(--[^"]+)"/g)].map((m) => m[1]);
    expect(flags).toEqual(SERVICE_NODE_FLAGS);
    expect(flags).toContain("--max-semi-space-size=16");
    const start = (JSON.parse(readFileSync(join(import.meta.dirname, "..", "..", "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts.start!;
    expect(start).toContain(`node ${SERVICE_NODE_FLAGS.join(" ")} dist/index.js`);
  });
  it("ships the migrations the service applies at start", () => {
    expect(final.some((l) => /^COPY .*drizzle/.test(l))).toBe(true);
  });
  it("installs with the driver's patches (patches/ before npm ci) and ships that patched tree", () => {
    const firstInstall = lines.findIndex((l) => /^RUN .*npm ci/.test(l));
    const patches = lines.findIndex((l) => /^COPY patches /.test(l));
    expect(patches).toBeGreaterThanOrEqual(0);
    expect(patches).toBeLessThan(firstInstall);
    // every install sees the patches: one install only, the runtime's tree pruned from it
    expect(lines.filter((l) => /^RUN .*npm (ci|install)/.test(l))).toHaveLength(1);
    expect(lines.some((l) => /^RUN .*npm prune --omit=dev/.test(l))).toBe(true);
    expect(final.find((l) => /^COPY .*node_modules/.test(l))).toMatch(/--from=build /);
  });
});

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startService, type Service } from "./helpers/harness.js";

describe("smoke", () => {
  let svc: Service;
  beforeAll(async () => {
    svc = await startService();
  });
  afterAll(() => svc.close());
  it("logs the bootstrap admin in", async () => {
    const me = await svc.call("GET", "/v1/auth/me", { token: svc.admin.token });
    expect(me.status).toBe(200);
    expect(me.json).toEqual({ id: svc.admin.id, username: "root", role: "admin" });
  });
});

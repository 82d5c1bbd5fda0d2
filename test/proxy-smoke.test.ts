import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startSimulator, type Simulator } from "../src/simulator/server.js";
import { startService, type Service } from "./helpers/harness.js";

const KEY = "a".repeat(64);
describe("proxy smoke", () => {
  let svc: Service;
  let sim: Simulator;
  beforeAll(async () => {
    sim = await startSimulator({ keys: { [KEY]: "owner@example.com" } });
    svc = await startService({ env: { HALTMAN_BASE_URL: sim.url } });
  });
  afterAll(async () => {
    await svc.close();
    await sim.close();
  });
  it("creates a handle", async () => {
    const k = await svc.call("POST", "/v1/keys", { token: svc.admin.token, json: { name: "k", api_key: KEY } });
    expect(k.status).toBe(201);
    const r = await svc.call("POST", "/api/handle/create", { token: svc.admin.token, json: { handle: "Alice" } });
    console.log(r.status, r.text, r.headers.get("ratelimit"), r.headers.get("ratelimit-policy"));
    expect(r.status).toBe(200);
    const again = await svc.call("POST", "/api/handle/create", { token: svc.admin.token, json: { handle: "alice" } });
    console.log(again.status, again.text);
    const en = await svc.call("POST", "/api/handle/domain/enable", { token: svc.admin.token, json: { handle: "alice", domain: "Example.com" } });
    console.log(en.status, en.text);
    const bad = await svc.call("POST", "/api/handle/domain/enable", { token: svc.admin.token, json: { handle: "alice", domain: "x" } });
    console.log(bad.status, bad.text, bad.headers.get("ratelimit"));
    const idem1 = await svc.call("POST", "/api/handle/create", { token: svc.admin.token, json: { handle: "bob" }, headers: { "idempotency-key": "abc" } });
    const idem2 = await svc.call("POST", "/api/handle/create", { token: svc.admin.token, json: { handle: "bob" }, headers: { "idempotency-key": "abc" } });
    const idem3 = await svc.call("POST", "/api/handle/create", { token: svc.admin.token, json: { handle: "carol" }, headers: { "idempotency-key": "abc" } });
    console.log(idem1.status, idem2.status, idem2.headers.get("idempotent-replayed"), idem3.status, idem3.text);
    sim.faults.push({ kind: "status", status: 401, body: '{"error":"invalid_or_expired_api_key"}' });
    const rej = await svc.call("POST", "/api/handle/create", { token: svc.admin.token, json: { handle: "dave" } });
    console.log(rej.status, rej.text);
    const keys = await svc.call("GET", "/v1/keys", { token: svc.admin.token });
    console.log(keys.json.keys[0].status);
    const audit = await svc.call("GET", "/v1/audit?action=handle.create", { token: svc.admin.token });
    console.log(audit.json.events.map((e: any) => `${e.handle} ${e.outcome} ${e.upstream_status}`));
    console.log(sim.received.map((r) => `${r.path} ${r.headers["x-api-key"] === KEY} ${r.headers["x-request-id"]}`));
  });
});

// `npm run sandbox`: the Haltman simulator on loopback, for working on a frontend without a real
// key. Point the service at it with HALTMAN_BASE_URL and store one of the printed keys.
import { randomBytes } from "node:crypto";
import { startSimulator } from "./server.js";

const port = Number(process.env.SIMULATOR_PORT || 4010);
const keys = (process.env.SIMULATOR_KEYS || "")
  .split(",")
  .map((k) => k.trim().toLowerCase())
  .filter((k) => /^[0-9a-f]{64}$/.test(k));
while (keys.length < 2) keys.push(randomBytes(32).toString("hex"));

const sim = await startSimulator(
  { keys: Object.fromEntries(keys.map((k, i) => [k, `owner${i + 1}@example.com`])), bannedNames: ["root", "postmaster", "abuse"] },
  { host: "127.0.0.1", port },
);
process.stdout.write(
  [
    `Haltman simulator listening on ${sim.url}`,
    "",
    "Sandbox API keys (in memory; fixed ones can be given with SIMULATOR_KEYS=k1,k2):",
    ...keys.map((k, i) => `  ${k}   -> handles forward to owner${i + 1}@example.com`),
    "",
    "Start the service against it, in another terminal:",
    `  HALTMAN_BASE_URL=${sim.url} DATA_DIR=./data-sandbox npm start`,
    "",
    "Banned names: root, postmaster, abuse (403 banned). Faults, for testing a frontend's error paths:",
    `  curl -X POST ${sim.url}/__sim/fault -d '{"kind":"status","status":503}'   (next call; kinds: delay, hang, reset, status, non_json, redirect, oversized, stalled_body)`,
    "",
  ].join("\n"),
);

const stop = () => sim.close().then(() => process.exit(0));
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

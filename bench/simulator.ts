// The simulator in fast mode, as a process of its own for the benchmarks.
import { startSimulator } from "../src/simulator/server.js";

const keys = JSON.parse(process.env.SIM_KEYS ?? "{}") as Record<string, string>;
await startSimulator({ keys, fast: true }, { host: "127.0.0.1", port: Number(process.env.PORT) });

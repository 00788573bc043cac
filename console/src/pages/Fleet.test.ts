import { describe, expect, it } from "vitest";
import { byRegion, stateOf, type Pool, type Replica } from "./Fleet";

const replica = (fields: Partial<Replica>): Replica => ({
  id: "r", url: "http://r", healthy: true, draining: false, models: [], in_flight: 0, engine_running: 0,
  engine_waiting: 0, active_adapters: [], rtt_ms: 1, last_error: null, breaker: "closed", ejected_for_s: null,
  ...fields,
}); // prettier-ignore
const pool = (name: string, region: string): Pool => ({
  name, region, kind: "vllm", max_load: 8, healthy_replicas: 1, replicas: [],
}); // prettier-ignore

describe("the fleet", () => {
  it("puts this gateway's region first, then the others by name", () => {
    const pools = [pool("a", "us"), pool("b", "eu"), pool("c", "ap"), pool("d", "eu")];
    expect(byRegion(pools, "eu").map(([region, inIt]) => [region, inIt.map((p) => p.name)])).toEqual([
      ["eu", ["b", "d"]],
      ["ap", ["c"]],
      ["us", ["a"]],
    ]);
  });

  it("names a replica's state by what matters most to an operator", () => {
    expect(stateOf(replica({ removing: true, draining: true }))).toEqual({ label: "removing", tone: "warn" });
    expect(stateOf(replica({ draining: true, healthy: false }))).toEqual({ label: "draining", tone: "warn" });
    expect(stateOf(replica({ breaker: "open", healthy: true }))).toEqual({ label: "ejected", tone: "bad" });
    expect(stateOf(replica({ healthy: false }))).toEqual({ label: "unhealthy", tone: "bad" });
    expect(stateOf(replica({}))).toEqual({ label: "healthy", tone: "ok" });
  });
});

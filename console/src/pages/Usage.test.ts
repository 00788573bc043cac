import { describe, expect, it } from "vitest";
import { burnTone, seriesOf, type UsageReport } from "./Usage";

const counts = (requests: number[]) => ({ requests, tokens: requests.map((r) => r * 10), errors: [0, 0], shed: [0, 0] });

describe("the usage page", () => {
  it("draws the five busiest tenants and sums the rest as others", () => {
    const tenants = Object.fromEntries(
      ["a", "b", "c", "d", "e", "f", "g"].map((name, i) => [name, counts([i, 7 - i])]),
    );
    const report: UsageReport = { region: "eu", minutes: [60, 120], tenants, slos: [] };
    const series = seriesOf(report, "tokens");
    expect(series.map((s) => s.name)).toEqual(["a", "b", "c", "d", "e", "others"]); // all tie at 7
    expect(series.at(-1)!.points).toEqual([
      [60, 110],
      [120, 30],
    ]);
  });

  it("reads burn rates as the alerts do", () => {
    expect([burnTone(0.2), burnTone(1), burnTone(3), burnTone(14.4)]).toEqual(["ok", "ok", "warn", "bad"]);
  });
});

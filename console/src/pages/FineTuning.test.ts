import { describe, expect, it } from "vitest";
import { lossCurve, type JobEvent } from "./FineTuning";

const event = (id: string, type: string, data: JobEvent["data"]): JobEvent => ({
  id, created_at: 0, level: "info", message: id, type, data,
}); // prettier-ignore

describe("the loss curve", () => {
  it("takes the metrics events' losses by step, oldest first, and nothing else", () => {
    const events = [
      event("e4", "metrics", { step: 12, train_loss: 0.5 }),
      event("e3", "message", null),
      event("e2", "metrics", { step: 4, train_loss: 2.25 }),
      event("e1", "metrics", { step: 8 }), // no loss: not a point
    ];
    expect(lossCurve(events)).toEqual([
      [4, 2.25],
      [12, 0.5],
    ]);
  });
});

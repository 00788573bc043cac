import { describe, expect, it } from "vitest";
import { EventStreamParser } from "./sse";

const bytes = (text: string) => new TextEncoder().encode(text);

describe("EventStreamParser", () => {
  it("yields each event's data once its blank line arrives", () => {
    const parser = new EventStreamParser();
    expect(parser.push(bytes('data: {"a":1}\n\ndata: {"b"'))).toEqual(['{"a":1}']);
    expect(parser.push(bytes(":2}\n"))).toEqual([]);
    expect(parser.push(bytes("\ndata: [DONE]\n\n"))).toEqual(['{"b":2}', "[DONE]"]);
  });

  it("joins multi-line data, skips comments and fields it does not use", () => {
    const parser = new EventStreamParser();
    expect(parser.push(bytes(": keep-alive\nevent: x\nid: 3\ndata: one\ndata:two\n\n"))).toEqual(["one\ntwo"]);
  });

  it("takes CRLF and CR line ends, even split between chunks", () => {
    const parser = new EventStreamParser();
    expect(parser.push(bytes("data: a\r"))).toEqual([]);
    expect(parser.push(bytes("\n\r\ndata: b\r\r"))).toEqual(["a"]); // the last CR may begin a CRLF
    expect(parser.push(bytes("\n"))).toEqual(["b"]);
  });

  it("keeps a character split between chunks whole", () => {
    const parser = new EventStreamParser();
    const text = bytes("data: héllo ✓\n\n");
    expect([...parser.push(text.slice(0, 8)), ...parser.push(text.slice(8))]).toEqual(["héllo ✓"]);
  });
});

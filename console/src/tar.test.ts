import { describe, expect, it } from "vitest";
import { tarOf } from "./tar";

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

describe("tarOf", () => {
  it("writes ustar headers with valid checksums, the files padded to blocks, and the end", () => {
    const config = new TextEncoder().encode('{"r": 4}');
    const weights = new Uint8Array(700).fill(7);
    const archive = tarOf([{ name: "adapter_config.json", bytes: config },
      { name: "dir/adapter_model.safetensors", bytes: weights }], 1_700_000_000); // prettier-ignore
    expect(archive.length).toBe(512 + 512 + 512 + 1024 + 1024);
    const first = archive.slice(0, 512);
    expect(text(first.slice(0, 19))).toBe("adapter_config.json");
    expect(text(first.slice(257, 262))).toBe("ustar");
    expect(parseInt(text(first.slice(124, 135)), 8)).toBe(config.length);
    const stored = parseInt(text(first.slice(148, 155)), 8);
    const counted = [...first].reduce((sum, byte, i) => sum + (i >= 148 && i < 156 ? 0x20 : byte), 0);
    expect(stored).toBe(counted);
    expect(text(archive.slice(512, 512 + config.length))).toBe('{"r": 4}');
    const second = archive.slice(1024, 1536);
    expect(text(second.slice(0, 29))).toBe("adapter_model.safetensors\0\0\0\0"); // no folders kept
    expect(archive.slice(1536, 1536 + 700).every((b) => b === 7)).toBe(true);
    expect(archive.slice(-1024).every((b) => b === 0)).toBe(true);
  });

  it("refuses names a header cannot hold or that are not files", () => {
    expect(() => tarOf([{ name: "x".repeat(101), bytes: new Uint8Array() }])).toThrow("does not fit");
    expect(() => tarOf([{ name: "a/..", bytes: new Uint8Array() }])).toThrow("not a file name");
  });
});

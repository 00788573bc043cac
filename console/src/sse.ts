// Server-sent events (the WHATWG event-stream format), parsed as the bytes arrive: the
// gateway relays each engine chunk as one `data:` event and ends with `data: [DONE]`.

export class EventStreamParser {
  private buffer = "";
  private data: string[] = [];
  private decoder = new TextDecoder();

  /** The data of each event completed by `chunk`. */
  push(chunk: Uint8Array): string[] {
    this.buffer += this.decoder.decode(chunk, { stream: true });
    const events: string[] = [];
    let end: number;
    while ((end = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, end);
      const width = this.buffer.startsWith("\r\n", end) ? 2 : 1;
      if (this.buffer[end] === "\r" && width === 1 && end === this.buffer.length - 1) break; // a CRLF split in two
      this.buffer = this.buffer.slice(end + width);
      if (line === "") {
        if (this.data.length) events.push(this.data.join("\n"));
        this.data = [];
      } else if (line.startsWith("data:")) {
        this.data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      } // comments (`:`), `event:`, `id:` and `retry:` carry nothing the console uses
    }
    return events;
  }
}

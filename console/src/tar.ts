// A tar archive (POSIX ustar) of an adapter's files, made in the browser: the sidecar takes an
// upload as one archive, and people pick the adapter folder's files.

const BLOCK = 512;

function field(header: Uint8Array, offset: number, length: number, value: string): void {
  const bytes = new TextEncoder().encode(value);
  if (bytes.length > length) throw new Error(`"${value}" does not fit a tar header field of ${length} bytes`);
  header.set(bytes, offset);
}

const octal = (value: number, length: number) => value.toString(8).padStart(length - 1, "0");

function header(name: string, size: number, mtime: number): Uint8Array {
  const block = new Uint8Array(BLOCK);
  field(block, 0, 100, name);
  field(block, 100, 8, octal(0o644, 8));
  field(block, 108, 8, octal(0, 8));
  field(block, 116, 8, octal(0, 8));
  field(block, 124, 12, octal(size, 12));
  field(block, 136, 12, octal(mtime, 12));
  block.fill(0x20, 148, 156); // the checksum counts its own field as spaces
  block[156] = 0x30; // a regular file
  field(block, 257, 6, "ustar");
  field(block, 263, 2, "00");
  const sum = block.reduce((total, byte) => total + byte, 0);
  field(block, 148, 8, `${octal(sum, 7)}\0`);
  return block;
}

export interface NamedBytes {
  name: string;
  bytes: Uint8Array;
}

/** One archive of `files` at its top level (names without folders). */
export function tarOf(files: NamedBytes[], mtime = Math.floor(Date.now() / 1000)): Uint8Array<ArrayBuffer> {
  const parts: Uint8Array[] = [];
  for (const file of files) {
    const name = file.name.split("/").pop()!;
    if (!name || name === "." || name === "..") throw new Error(`"${file.name}" is not a file name`);
    parts.push(header(name, file.bytes.length, mtime), file.bytes);
    const padding = (BLOCK - (file.bytes.length % BLOCK)) % BLOCK;
    if (padding) parts.push(new Uint8Array(padding));
  }
  parts.push(new Uint8Array(BLOCK * 2)); // the end of the archive
  const archive: Uint8Array<ArrayBuffer> = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  parts.reduce((offset, part) => (archive.set(part, offset), offset + part.length), 0);
  return archive;
}

/** The upload for what was picked: one archive as it is, or the folder's files put in one. */
export async function adapterArchive(picked: File[]): Promise<Blob> {
  const [only] = picked;
  if (picked.length === 1 && only && /\.(tar|tar\.gz|tgz)$/i.test(only.name)) {
    return new Blob([only], { type: /\.(gz|tgz)$/i.test(only.name) ? "application/gzip" : "application/x-tar" });
  }
  const files = await Promise.all(
    picked.map(async (file) => ({ name: file.name, bytes: new Uint8Array(await file.arrayBuffer()) })),
  );
  return new Blob([tarOf(files)], { type: "application/x-tar" });
}

/**
 * Minimal streaming tar writer for basebackup chunks: ustar headers, pax extended headers only
 * where ustar cannot hold a value (long or non-ASCII names, big sizes/ids), archive padded to the
 * 10240-byte record size like Python's tarfile. Regular files are read straight into large output
 * buffers (no extra copies); a file that shrinks while read is zero-padded to the size in its
 * header and one that grows is cut at that size, as PostgreSQL's own basebackup does — WAL replay
 * repairs the torn pages.
 */
/** `pread`: fills `buf[offset, offset+length)` from file `position`; returns bytes read (0 at EOF). */
export type FileReader = (buf: Buffer, offset: number, length: number, position: number) => number | Promise<number>;

/** A FileReader over an async FileHandle. */
export function handleReader(handle: {
  read(buf: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
}): FileReader {
  return async (buf, offset, length, position) => (await handle.read(buf, offset, length, position)).bytesRead;
}

export const BLOCK_SIZE = 512;
export const RECORD_SIZE = 20 * BLOCK_SIZE;
/** Largest value an 11-digit octal ustar size field holds. */
const MAX_USTAR_SIZE = 0o77777777777;
const MAX_USTAR_ID = 0o7777777;

export type TarEntryType = "file" | "directory" | "symlink";

export interface TarHeaderFields {
  name: string;
  type: TarEntryType;
  size?: number;
  mode: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch (fraction dropped in ustar). */
  mtime: number;
  linkname?: string;
  uname?: string;
  gname?: string;
}

function isPlainAscii(value: string): boolean {
  return /^[\x20-\x7e]*$/.test(value);
}

function writeOctal(buf: Buffer, offset: number, width: number, value: number): void {
  // width includes the terminating NUL, as Python's tarfile writes it
  const text = Math.floor(value)
    .toString(8)
    .padStart(width - 1, "0");
  buf.write(text, offset, width - 1, "ascii");
  buf[offset + width - 1] = 0;
}

function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  const bodyLength = Buffer.byteLength(body);
  let length = bodyLength + String(bodyLength).length;
  if (String(length).length !== String(length - bodyLength).length) length = bodyLength + String(length).length;
  return Buffer.from(`${length}${body}`, "utf8");
}

function ustarBlock(fields: TarHeaderFields, typeflag: string): Buffer {
  const block = Buffer.alloc(BLOCK_SIZE);
  block.write(fields.name, 0, 100, "utf8");
  writeOctal(block, 100, 8, fields.mode & 0o7777);
  writeOctal(block, 108, 8, Math.min(fields.uid ?? 0, MAX_USTAR_ID));
  writeOctal(block, 116, 8, Math.min(fields.gid ?? 0, MAX_USTAR_ID));
  writeOctal(block, 124, 12, Math.min(fields.size ?? 0, MAX_USTAR_SIZE));
  writeOctal(block, 136, 12, Math.max(0, fields.mtime));
  block.fill(0x20, 148, 156); // checksum computed with spaces in its field
  block.write(typeflag, 156, 1, "ascii");
  if (fields.linkname) block.write(fields.linkname, 157, 100, "utf8");
  block.write("ustar\u000000", 257, 8, "ascii");
  if (fields.uname) block.write(fields.uname, 265, 32, "utf8");
  if (fields.gname) block.write(fields.gname, 297, 32, "utf8");
  writeOctal(block, 329, 8, 0);
  writeOctal(block, 337, 8, 0);
  let sum = 0;
  for (let i = 0; i < BLOCK_SIZE; i++) sum += block[i];
  block.write(sum.toString(8).padStart(6, "0"), 148, 6, "ascii");
  block[154] = 0;
  block[155] = 0x20;
  return block;
}

function padLength(size: number): number {
  const rest = size % BLOCK_SIZE;
  return rest === 0 ? 0 : BLOCK_SIZE - rest;
}

/** Header block(s) for one member: a pax `x` header first when ustar cannot represent a field. */
export function encodeTarHeader(input: TarHeaderFields): Buffer {
  const fields = { ...input };
  if (fields.type === "directory" && !fields.name.endsWith("/")) fields.name += "/";
  if (fields.type !== "file") fields.size = 0;
  const records: Buffer[] = [];
  if (Buffer.byteLength(fields.name) > 100 || !isPlainAscii(fields.name)) records.push(paxRecord("path", fields.name));
  if (fields.linkname && (Buffer.byteLength(fields.linkname) > 100 || !isPlainAscii(fields.linkname))) {
    records.push(paxRecord("linkpath", fields.linkname));
  }
  if ((fields.size ?? 0) > MAX_USTAR_SIZE) records.push(paxRecord("size", String(fields.size)));
  if ((fields.uid ?? 0) > MAX_USTAR_ID) records.push(paxRecord("uid", String(fields.uid)));
  if ((fields.gid ?? 0) > MAX_USTAR_ID) records.push(paxRecord("gid", String(fields.gid)));
  const typeflag = fields.type === "file" ? "0" : fields.type === "directory" ? "5" : "2";
  const main = ustarBlock(fields, typeflag);
  if (records.length === 0) return main;
  const paxData = Buffer.concat(records);
  const paxHeader = ustarBlock(
    { name: "././@PaxHeader", type: "file", size: paxData.length, mode: 0o644, mtime: fields.mtime },
    "x",
  );
  return Buffer.concat([paxHeader, paxData, Buffer.alloc(padLength(paxData.length)), main]);
}

/**
 * Accumulates a tar stream into large buffers. Callers `await` the async methods and drain
 * `takeFull()` / `finish()` output; file data is read directly into the pending buffer.
 */
export class TarBuffer {
  private buf: Buffer;
  private used = 0;
  private readonly full: Buffer[] = [];
  /** Total tar bytes produced so far. */
  size = 0;

  /**
   * `allocate` supplies output buffers of `bufferSize` bytes; a caller can recycle the buffers
   * it got from `takeFull()` once consumed (fewer allocations, much less GC work).
   */
  constructor(
    private readonly bufferSize = 1024 * 1024,
    private readonly allocate: (size: number) => Buffer = (size) => Buffer.allocUnsafeSlow(size),
  ) {
    this.buf = allocate(bufferSize);
  }

  private rotate(): void {
    if (this.used > 0) this.full.push(this.used === this.buf.length ? this.buf : this.buf.subarray(0, this.used));
    this.buf = this.allocate(this.bufferSize);
    this.used = 0;
  }

  append(data: Buffer): void {
    let offset = 0;
    while (offset < data.length) {
      if (this.used === this.buf.length) this.rotate();
      const n = Math.min(data.length - offset, this.buf.length - this.used);
      data.copy(this.buf, this.used, offset, offset + n);
      this.used += n;
      offset += n;
    }
    this.size += data.length;
  }

  appendZeros(count: number): void {
    let left = count;
    while (left > 0) {
      if (this.used === this.buf.length) this.rotate();
      const n = Math.min(left, this.buf.length - this.used);
      this.buf.fill(0, this.used, this.used + n);
      this.used += n;
      left -= n;
    }
    this.size += count;
  }

  addEntry(fields: TarHeaderFields, data?: Buffer): void {
    this.append(encodeTarHeader(fields));
    if (fields.type === "file" && data) {
      this.append(data);
      this.appendZeros(padLength(data.length));
    }
  }

  /**
   * Appends `size` bytes of an open file (header must already be written) using `read`
   * (synchronous or asynchronous, `pread`-like), yielding every buffer that fills up so memory
   * stays bounded whatever the file size. Reads at most `size` bytes; a short file is
   * zero-padded. `onData` sees exactly the bytes read from the file; `result.bytesRead` tells how
   * many there were.
   */
  async *fileData(
    read: FileReader,
    size: number,
    onData?: (data: Buffer) => void,
    result?: { bytesRead: number },
  ): AsyncGenerator<Buffer> {
    let position = 0;
    while (position < size) {
      if (this.used === this.buf.length) {
        this.rotate();
        yield* this.takeFull();
      }
      const want = Math.min(size - position, this.buf.length - this.used);
      const r = read(this.buf, this.used, want, position);
      const bytesRead = typeof r === "number" ? r : await r;
      if (bytesRead === 0) break;
      if (onData) onData(this.buf.subarray(this.used, this.used + bytesRead));
      this.used += bytesRead;
      position += bytesRead;
      this.size += bytesRead;
    }
    if (result) result.bytesRead = position;
    if (position < size) this.appendZeros(size - position);
    this.appendZeros(padLength(size));
    yield* this.takeFull();
  }

  /** `fileData` without yielding (small files, tests): everything stays buffered until `takeFull`. */
  async appendFileData(read: FileReader, size: number, onData?: (data: Buffer) => void): Promise<number> {
    const result = { bytesRead: 0 };
    const pending: Buffer[] = [];
    for await (const buf of this.fileData(read, size, onData, result)) pending.push(buf);
    this.full.unshift(...pending);
    return result.bytesRead;
  }

  /** Bytes that can still be appended before the current buffer is full. */
  get spaceLeft(): number {
    return this.buf.length - this.used;
  }

  /** Buffers completed so far (each handed out once). */
  takeFull(): Buffer[] {
    return this.full.splice(0, this.full.length);
  }

  /** Ends the archive (two zero blocks, record padding) and returns the remaining buffers. */
  finish(): Buffer[] {
    this.appendZeros(2 * BLOCK_SIZE);
    const rest = this.size % RECORD_SIZE;
    if (rest !== 0) this.appendZeros(RECORD_SIZE - rest);
    this.rotate();
    return this.takeFull();
  }
}

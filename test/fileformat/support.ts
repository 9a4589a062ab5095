/**
 * Test-only helpers: an INDEPENDENT decoder for stored objects (Node crypto for the envelope,
 * a tiny pure-JS snappy-framing parser with its own CRC-32C, and the xz/zstd command-line tools),
 * and a generator of PostgreSQL-page-like data.
 */
import { spawnSync } from "node:child_process";
import { createDecipheriv, createHmac, privateDecrypt, constants, timingSafeEqual } from "node:crypto";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

// ---- CRC-32C, table driven (deliberately not the library the code under test uses) ----
const CRC_TABLE = new Uint32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
  CRC_TABLE[n] = c >>> 0;
}
export function crc32cRef(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = CRC_TABLE[(crc ^ data[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
export function maskRef(crc: number): number {
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** Raw snappy block decoder (format_description.txt), pure JS. */
export function snappyRawDecode(src: Uint8Array): Buffer {
  let pos = 0;
  let length = 0;
  for (let shift = 0; ; shift += 7) {
    const b = src[pos++];
    length |= (b & 0x7f) << shift;
    if (b < 0x80) break;
  }
  const out = Buffer.alloc(length);
  let op = 0;
  while (pos < src.length) {
    const tag = src[pos++];
    const kind = tag & 3;
    if (kind === 0) {
      let len = tag >>> 2;
      if (len >= 60) {
        const bytes = len - 59;
        len = 0;
        for (let i = 0; i < bytes; i++) len |= src[pos++] << (8 * i);
      }
      len += 1;
      out.set(src.subarray(pos, pos + len), op);
      pos += len;
      op += len;
      continue;
    }
    let len: number;
    let offset: number;
    if (kind === 1) {
      len = ((tag >>> 2) & 7) + 4;
      offset = ((tag >>> 5) << 8) | src[pos++];
    } else if (kind === 2) {
      len = (tag >>> 2) + 1;
      offset = src[pos] | (src[pos + 1] << 8);
      pos += 2;
    } else {
      len = (tag >>> 2) + 1;
      offset = (src[pos] | (src[pos + 1] << 8) | (src[pos + 2] << 16) | (src[pos + 3] << 24)) >>> 0;
      pos += 4;
    }
    if (offset === 0 || offset > op) throw new Error("snappy: bad copy offset");
    for (let i = 0; i < len; i++, op++) out[op] = out[op - offset];
  }
  if (op !== length) throw new Error("snappy: length mismatch");
  return out;
}

export interface SnappyFrameInfo {
  identifiers: number;
  compressedChunks: number;
  uncompressedChunks: number;
}

/** Strict framing parser: checks identifier first, chunk sizes and every CRC. */
export function parseSnappyFraming(data: Buffer, info?: SnappyFrameInfo): Buffer {
  const out: Buffer[] = [];
  let pos = 0;
  let first = true;
  while (pos < data.length) {
    if (pos + 4 > data.length) throw new Error("snappy framing: truncated header");
    const type = data[pos];
    const len = data[pos + 1] | (data[pos + 2] << 8) | (data[pos + 3] << 16);
    const body = data.subarray(pos + 4, pos + 4 + len);
    if (body.length !== len) throw new Error("snappy framing: truncated chunk");
    if (first && type !== 0xff) throw new Error("snappy framing: stream does not start with the identifier");
    first = false;
    if (type === 0xff) {
      if (body.toString("latin1") !== "sNaPpY") throw new Error("snappy framing: bad identifier");
      if (info) info.identifiers++;
    } else if (type === 0x00 || type === 0x01) {
      const crc = body.readUInt32LE(0);
      const payload = type === 0x00 ? snappyRawDecode(body.subarray(4)) : body.subarray(4);
      if (payload.length > 65536) throw new Error("snappy framing: chunk over 64 KiB");
      if (maskRef(crc32cRef(payload)) !== crc) throw new Error("snappy framing: crc mismatch");
      if (info && type === 0) info.compressedChunks++;
      else if (info) info.uncompressedChunks++;
      out.push(payload);
    } else {
      throw new Error(`snappy framing: unexpected chunk type ${type}`);
    }
    pos += 4 + len;
  }
  return Buffer.concat(out);
}

/** rohmu envelope, decrypted with plain Node crypto calls. */
export function decryptIndependently(stored: Buffer, privateKeyPem: string): Buffer {
  if (stored.length === 0) return Buffer.alloc(0);
  if (stored.subarray(0, 6).toString("latin1") !== "pghoa1") throw new Error("bad magic");
  const keyLength = stored.readUInt16BE(6);
  const wrapped = stored.subarray(8, 8 + keyLength);
  const blob = privateDecrypt(
    { key: privateKeyPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" },
    wrapped,
  );
  if (blob.length !== 64) throw new Error("bad key blob");
  const body = stored.subarray(8 + keyLength, stored.length - 32);
  const tag = stored.subarray(stored.length - 32);
  const mac = createHmac("sha256", blob.subarray(32)).update(body).digest();
  if (!timingSafeEqual(mac, tag)) throw new Error("hmac mismatch");
  const decipher = createDecipheriv("aes-128-ctr", blob.subarray(0, 16), blob.subarray(16, 32));
  return Buffer.concat([decipher.update(body), decipher.final()]);
}

function hasTool(name: string): boolean {
  return spawnSync(name, ["--version"]).status === 0;
}
const haveXz = hasTool("xz");
const haveZstd = hasTool("zstd");

function runTool(cmd: string, args: string[], input: Buffer): Buffer {
  const res = spawnSync(cmd, args, { input, maxBuffer: 512 * 1024 * 1024 });
  if (res.status !== 0) throw new Error(`${cmd} failed: ${res.stderr.toString()}`);
  return res.stdout;
}

export function decompressIndependently(algorithm: string | null, data: Buffer): Buffer {
  switch (algorithm) {
    case null:
      return data;
    case "snappy":
      return parseSnappyFraming(data);
    case "zstd":
      if (haveZstd) return runTool("zstd", ["-dc", "-q"], data);
      return (require("zstd-napi") as typeof import("zstd-napi")).decompress(data);
    case "lzma":
      if (!haveXz) throw new Error("xz CLI not available");
      return runTool("xz", ["-dc", "-q"], data);
    default:
      throw new Error(`unknown algorithm ${algorithm}`);
  }
}

/** xz stream flags: byte 7 of the header is the check type (4 = CRC64). */
export function xzCheckType(data: Buffer): number {
  return data[7] & 0x0f;
}

export function decodeIndependently(stored: Buffer, algorithm: string | null, privateKeyPem: string | null): Buffer {
  const compressed = privateKeyPem ? decryptIndependently(stored, privateKeyPem) : stored;
  return decompressIndependently(algorithm, compressed);
}

/**
 * PostgreSQL-page-like data: 8 KiB pages with a header, tuple headers with increasing ids,
 * words from a small vocabulary, some numbers and a few random bytes; compresses ~3-6x.
 */
export function pageLikeData(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  const words = [
    "account",
    "branch",
    "teller",
    "history",
    "balance",
    "filler",
    "postgres",
    "pghoard",
    "backup",
    "segment",
  ].map((w) => Buffer.from(w));
  let x = seed >>> 0 || 1;
  const rand = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
  let pos = 0;
  let page = 0;
  let row = 0;
  while (pos < size) {
    const pageEnd = Math.min(size, pos + 8192);
    // page header: lsn-ish counter, flags, page number
    if (pageEnd - pos >= 24) {
      out.writeUInt32LE(page * 7919, pos);
      out.writeUInt32LE(page, pos + 4);
      out.fill(0, pos + 8, pos + 24);
      pos += 24;
    }
    while (pos < pageEnd) {
      const r = rand();
      if (pageEnd - pos >= 8) {
        out.writeUInt32LE(row++, pos);
        out.writeUInt32LE(r, pos + 4); // incompressible-ish field
        pos += 8;
      }
      const w = words[r % words.length];
      const n = Math.min(w.length, pageEnd - pos);
      w.copy(out, pos, 0, n);
      pos += n;
      if (pos < pageEnd) out[pos++] = 0x20 + ((r >>> 24) % 10);
    }
    page++;
  }
  return out;
}

/**
 * The hardware floor of archiving one WAL segment as the daemon stores it, for bench/wal_compare.ts:
 * the work no implementation can skip, done in one thread with synchronous calls and reused
 * buffers (no Node.js streams, threads, messages or garbage): read the 16 MiB, sha1 of the
 * plaintext (upstream's `hash` metadata), snappy framing (the addon into one reused buffer, else
 * the npm path), AES-CTR
 * and HMAC-SHA256 over the result (64 KiB updates, as src/fileformat/crypto.ts), write it and
 * fsync it before a rename. Its CPU time per segment, plus one process start per call, over the
 * machine's cores, is the fewest milliseconds per call a burst can average here.
 */
import { createCipheriv, createHash, createHmac, randomBytes } from "node:crypto";
import { closeSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from "node:fs";
import path from "node:path";

import { encodeBlocks } from "../src/fileformat/snappy.js";
import { snappyNative } from "../src/fileformat/snappy_native.js";

const SEGMENT = 16 * 1024 * 1024;
const SLICE = 64 * 1024;

export interface ArchiveFloor {
  /** CPU time (user + system) of this thread's work per segment, ms. */
  cpuMs: number;
  /** Wall time per segment (includes waiting for fsync), ms. */
  wallMs: number;
}

/** `rounds` passes over `segments` (paths of 16 MiB WAL files); output goes to `scratchDir`. */
export function measureArchiveFloor(segments: string[], scratchDir: string, rounds = 3): ArchiveFloor {
  const input = Buffer.allocUnsafeSlow(SEGMENT);
  const framedOut = snappyNative ? Buffer.allocUnsafeSlow(snappyNative.encodeBound(SEGMENT)) : null;
  const out = path.join(scratchDir, "floor.out");
  const temp = `${out}.tmp`;
  const cpu0 = process.cpuUsage();
  const wall0 = process.hrtime.bigint();
  let count = 0;
  for (let round = 0; round < rounds; round++) {
    for (const segment of segments) {
      const fd = openSync(segment, "r");
      let length = 0;
      try {
        for (;;) {
          const n = readSync(fd, input, length, SEGMENT - length, length);
          if (n === 0 || (length += n) === SEGMENT) break;
        }
      } finally {
        closeSync(fd);
      }
      const plain = input.subarray(0, length);
      createHash("sha1").update(plain).digest("hex");
      const framed =
        snappyNative && framedOut
          ? framedOut.subarray(0, snappyNative.encodeChunks(plain, 0, plain.length, framedOut, 0))
          : encodeBlocks(plain);
      const cipher = createCipheriv("aes-128-ctr", randomBytes(16), randomBytes(16));
      const hmac = createHmac("sha256", randomBytes(32));
      const wfd = openSync(temp, "w");
      try {
        for (let at = 0; at < framed.length; at += SLICE) {
          const piece = cipher.update(framed.subarray(at, at + SLICE));
          hmac.update(piece);
          writeSync(wfd, piece);
        }
        writeSync(wfd, hmac.digest());
        fsyncSync(wfd);
      } finally {
        closeSync(wfd);
      }
      renameSync(temp, out);
      count++;
    }
  }
  const cpu = process.cpuUsage(cpu0);
  const wallMs = Number(process.hrtime.bigint() - wall0) / 1e6 / count;
  rmSync(out, { force: true });
  return { cpuMs: (cpu.user + cpu.system) / 1000 / count, wallMs };
}

/**
 * Throughput of the stored-file pipeline on real PostgreSQL data, next to the bare codecs.
 *
 *   node dist/bench/fileformat.js [--heap FILE] [--wal FILE] [--runs N]
 *
 * Without --heap/--wal a throwaway PostgreSQL 15 cluster is created (`pgbench -i -s 10`) and the
 * largest relation file and a 16 MiB WAL segment are copied from it. Output files of the pool
 * go to /dev/shm when present so that disk speed does not hide CPU cost.
 */
import { execFileSync } from "node:child_process";
import { createHash, generateKeyPairSync } from "node:crypto";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import { Worker } from "node:worker_threads";
import path from "node:path";
import { crc32c } from "@node-rs/crc32";
import snappy from "snappy";
import {
  FileFormatPool,
  createDecoder,
  createEncoder,
  encodingMetadata,
  type Codec,
  type CompressionAlgorithm,
  type EncodeOptions,
} from "../src/fileformat/index.js";

const require = createRequire(import.meta.url);
const zstdBinding = require("zstd-napi/binding") as typeof import("zstd-napi/binding.js");
interface NativeLzma {
  bufferHandler: (buf: Buffer | null | undefined) => void;
  code(chunk: Buffer | null, async: boolean): void;
  mtEncoder_(o: { preset: number; filters: null; check: number; threads: number }): void;
  autoDecoder_(memlimit: number | null, flags: number): void;
}
const lzmaNative = require("lzma-native") as {
  Stream: new () => NativeLzma;
  CHECK_CRC64: number;
  CONCATENATED: number;
};

const MiB = 1024 * 1024;
const CHUNK = MiB;
const PG_BIN = process.env.PG_BIN_DIR ?? "/usr/lib/postgresql/15/bin";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

// ---------------------------------------------------------------- data
function makePgData(workDir: string): { heap: string; wal: string } {
  const root = typeof process.getuid === "function" && process.getuid() === 0;
  const asPg = (cmd: string, args: string[]): void => {
    // stderr is kept so that a failure says why
    if (root) execFileSync("runuser", ["-u", "postgres", "--", cmd, ...args], { stdio: ["ignore", "ignore", "pipe"] });
    else execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  };
  const pgDir = path.join(workDir, "pg");
  execFileSync("mkdir", ["-p", pgDir]);
  if (root) {
    chmodSync(workDir, 0o755); // mkdtemp makes it 0700; the postgres user must traverse it
    const uid = Number(execFileSync("id", ["-u", "postgres"]).toString().trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"]).toString().trim());
    chownSync(pgDir, uid, gid);
  }
  const dataDir = path.join(pgDir, "data");
  console.error("creating a throwaway cluster and running pgbench -i -s 10 ...");
  asPg(path.join(PG_BIN, "initdb"), ["-D", dataDir, "-A", "trust", "--no-sync"]);
  const port = String(40000 + Math.floor(Math.random() * 20000));
  asPg(path.join(PG_BIN, "pg_ctl"), [
    "-D",
    dataDir,
    "-w",
    "-l",
    path.join(pgDir, "log"),
    "-o",
    `-p ${port} -k ${pgDir} -c listen_addresses=''`,
    "start",
  ]);
  try {
    asPg(path.join(PG_BIN, "pgbench"), ["-h", pgDir, "-p", port, "-i", "-s", "10", "postgres"]);
    asPg(path.join(PG_BIN, "psql"), ["-h", pgDir, "-p", port, "-c", "CHECKPOINT", "postgres"]);
  } finally {
    asPg(path.join(PG_BIN, "pg_ctl"), ["-D", dataDir, "-m", "fast", "-w", "stop"]);
  }
  let largest = "";
  let largestSize = -1;
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile() && statSync(full).size > largestSize) {
        largest = full;
        largestSize = statSync(full).size;
      }
    }
  };
  walk(path.join(dataDir, "base"));
  const segments = readdirSync(path.join(dataDir, "pg_wal"))
    .filter((n) => /^[0-9A-F]{24}$/.test(n))
    .sort();
  // Not the newest segment: it is the one still being written (mostly zeros).
  const segment = segments[Math.max(0, segments.length - 2)];
  const heap = path.join(workDir, "heap");
  const wal = path.join(workDir, "wal");
  writeFileSync(heap, readFileSync(largest));
  writeFileSync(wal, readFileSync(path.join(dataDir, "pg_wal", segment)));
  rmSync(pgDir, { recursive: true, force: true });
  return { heap, wal };
}

// ---------------------------------------------------------------- bare codecs (the libraries alone)
function bareCompress(algorithm: CompressionAlgorithm, data: Buffer): number {
  let out = 0;
  if (algorithm === "snappy") {
    for (let o = 0; o < data.length; o += 65536) {
      const block = data.subarray(o, o + 65536);
      crc32c(block); // framing needs the CRC of each block; counted as part of the codec
      out += snappy.compressSync(block, { copyOutputData: true }).length + 8;
    }
  } else if (algorithm === "zstd") {
    const cctx = new zstdBinding.CCtx();
    cctx.setParameter(zstdBinding.CParameter.compressionLevel, 3);
    const dst = Buffer.allocUnsafe(zstdBinding.compressBound(CHUNK));
    for (let o = 0; o < data.length; o += CHUNK) {
      let src = data.subarray(o, o + CHUNK);
      const last = o + CHUNK >= data.length;
      for (;;) {
        const [rem, produced, consumed] = cctx.compressStream2(
          dst,
          src,
          last ? zstdBinding.EndDirective.end : zstdBinding.EndDirective.continue,
        );
        out += produced;
        src = src.subarray(consumed);
        if (src.length === 0 && (!last || rem === 0)) break;
      }
    }
  } else {
    const s = new lzmaNative.Stream();
    s.mtEncoder_({ preset: 0, filters: null, check: lzmaNative.CHECK_CRC64, threads: 1 });
    s.bufferHandler = (b) => {
      if (b) out += b.length;
    };
    for (let o = 0; o < data.length; o += CHUNK) s.code(data.subarray(o, o + CHUNK), false);
    s.code(null, false);
  }
  return out;
}

function bareDecompress(algorithm: CompressionAlgorithm, stored: Buffer): number {
  let out = 0;
  if (algorithm === "snappy") {
    let pos = 0;
    while (pos < stored.length) {
      const type = stored[pos];
      const len = stored[pos + 1] | (stored[pos + 2] << 8) | (stored[pos + 3] << 16);
      if (type === 0) {
        const u = snappy.uncompressSync(stored.subarray(pos + 8, pos + 4 + len), {
          asBuffer: true,
          copyOutputData: true,
        }) as Buffer;
        crc32c(u);
        out += u.length;
      } else if (type === 1) {
        crc32c(stored.subarray(pos + 8, pos + 4 + len));
        out += len - 4;
      }
      pos += 4 + len;
    }
  } else if (algorithm === "zstd") {
    const dctx = new zstdBinding.DCtx();
    let src = stored;
    while (src.length > 0) {
      const dst = Buffer.allocUnsafe(256 * 1024);
      const [, produced, consumed] = dctx.decompressStream(dst, src.subarray(0, CHUNK));
      out += produced;
      src = src.subarray(consumed);
    }
  } else {
    const s = new lzmaNative.Stream();
    s.autoDecoder_(null, lzmaNative.CONCATENATED);
    s.bufferHandler = (b) => {
      if (b) out += b.length;
    };
    for (let o = 0; o < stored.length; o += 16384) s.code(stored.subarray(o, o + 16384), false);
    s.code(null, false);
  }
  return out;
}

// ---------------------------------------------------------------- our pipeline, in-process
/** Output is counted, not kept (the bare loops do not keep it either). */
function runPipeline(codec: Codec, data: Buffer): number {
  let out = 0;
  for (let o = 0; o < data.length; o += CHUNK)
    for (const piece of codec.update(data.subarray(o, o + CHUNK))) out += piece.length;
  for (const piece of codec.final()) out += piece.length;
  return out;
}

function collect(codec: Codec, data: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let o = 0; o < data.length; o += CHUNK)
    for (const piece of codec.update(data.subarray(o, o + CHUNK))) out.push(piece);
  for (const piece of codec.final()) out.push(piece);
  return Buffer.concat(out);
}

/**
 * The machine is shared (other test suites run beside us), so single-core figures use the
 * process's CPU time, which competing processes do not inflate; wall time is the best of the runs.
 */
interface Timing {
  cpu: number;
  wall: number;
}

function cpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Runs the functions round-robin so that all of them see the same machine conditions. */
function timeInterleaved(fns: Array<() => void>, runs: number): Timing[] {
  const cpu: number[][] = fns.map(() => []);
  const wall: number[][] = fns.map(() => []);
  for (let i = 0; i < runs; i++) {
    fns.forEach((fn, k) => {
      const c = cpuSeconds();
      const t = process.hrtime.bigint();
      fn();
      wall[k].push(Number(process.hrtime.bigint() - t) / 1e9);
      cpu[k].push(cpuSeconds() - c);
    });
  }
  return fns.map((_, k) => ({ cpu: median(cpu[k]), wall: Math.min(...wall[k]) }));
}

/** Pool runs: wall time (best of runs) is what parallelism buys; CPU time shows the work done. */
async function timeAsync(fn: () => Promise<void>, runs: number): Promise<Timing> {
  const cpu: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c = cpuSeconds();
    const t = process.hrtime.bigint();
    await fn();
    wall.push(Number(process.hrtime.bigint() - t) / 1e9);
    cpu.push(cpuSeconds() - c);
  }
  return { cpu: median(cpu), wall: Math.min(...wall) };
}

const mbps = (bytes: number, seconds: number): number => bytes / 1e6 / seconds;

/**
 * How well this machine scales right now: the same pure-CPU job (sha256 of 1 GiB) in 1 and in 2
 * threads at once. On a shared box the pool's scaling can be no better than this.
 */
async function referenceScaling(): Promise<number> {
  const job = `const { createHash } = require("node:crypto"); const b = Buffer.alloc(1 << 20, 1);
    for (let i = 0; i < 1024; i++) createHash("sha256").update(b).digest();
    require("node:worker_threads").parentPort.postMessage(0);`;
  const run = async (threads: number): Promise<number> => {
    const t = process.hrtime.bigint();
    await Promise.all(
      Array.from(
        { length: threads },
        () => new Promise((resolve) => new Worker(job, { eval: true }).once("message", resolve)),
      ),
    );
    return Number(process.hrtime.bigint() - t) / 1e9;
  };
  const one = await run(1);
  const two = await run(2);
  return (2 * one) / two;
}
const fmt = (n: number): string => n.toFixed(0).padStart(6);

async function main(): Promise<void> {
  const runs = Number(arg("--runs") ?? 3);
  const scratchRoot = existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
  const work = mkdtempSync(path.join(scratchRoot, "ff-bench-"));
  try {
    let heapPath = arg("--heap");
    let walPath = arg("--wal");
    if (!heapPath || !walPath) {
      const made = makePgData(work);
      heapPath ??= made.heap;
      walPath ??= made.wal;
    }
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 3072 });
    const publicPem = publicKey.export({ type: "spki", format: "pem" }).toString();
    const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const heapAll = readFileSync(heapPath);
    const wal = readFileSync(walPath);
    const datasets: Array<[string, Buffer]> = [
      [`heap (${path.basename(heapPath)}, first 64 MiB)`, heapAll.subarray(0, Math.min(heapAll.length, 64 * MiB))],
      [`wal (${path.basename(walPath)} x4)`, Buffer.concat([wal, wal, wal, wal])],
    ];
    console.log(
      `fileformat benchmark: node ${process.version}, ${os.cpus().length} cores, median of ${runs} runs, MB/s of plaintext`,
    );
    console.log(
      "single core: main thread, in-process, 1 MiB chunks, MB/s per CPU-second (median); comp+enc = compress+AES-CTR+HMAC",
    );
    console.log(
      "pool: encodeFileToBuffer (compress+encrypt) / decodeFile to tmpfs of 16 MiB files, 4 files per worker, MB/s wall (best run)",
    );
    console.log(
      `load average at start: ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}\n`,
    );

    const pools = { one: new FileFormatPool(1), two: new FileFormatPool(2) };
    const poolEfficiency: string[] = [];
    for (const [label, full] of datasets) {
      console.log(`== ${label}`);
      console.log(
        "algorithm  | bare comp | comp | comp+enc | +sha1 hash | enc/bare | pool 1w | pool 2w | scale | ratio || bare dec | dec+decrypt | dec/bare | pool dec 1w | 2w",
      );
      for (const algorithm of ["snappy", "zstd", "lzma"] as const) {
        // lzma-native's shipped binary is slow (~10-50 MB/s): a smaller sample keeps the run short.
        const data = algorithm === "lzma" ? full.subarray(0, 16 * MiB) : full;
        const file = path.join(work, `input-${algorithm}`);
        writeFileSync(file, data.subarray(0, 16 * MiB));
        const plainOpts: EncodeOptions = { algorithm, level: 0, encryptionKeyId: null, publicKeyPem: null };
        const encOpts: EncodeOptions = { ...plainOpts, encryptionKeyId: "bench", publicKeyPem: publicPem };
        bareCompress(algorithm, data.subarray(0, 4 * MiB)); // warm-up (JIT, first-touch page faults)
        runPipeline(createEncoder(encOpts), data.subarray(0, 4 * MiB));
        const stored = collect(createEncoder(encOpts), data);
        const compressedOnly = collect(createEncoder(plainOpts), data);
        const metadata = encodingMetadata(encOpts);
        const [tBare, tComp, tFull, tFullHash, tBareDec, tFullDec] = timeInterleaved(
          [
            () => void bareCompress(algorithm, data),
            () => void runPipeline(createEncoder(plainOpts), data),
            () => void runPipeline(createEncoder(encOpts), data),
            () => {
              const hash = createHash("sha1");
              for (let o = 0; o < data.length; o += CHUNK) hash.update(data.subarray(o, o + CHUNK));
              runPipeline(createEncoder(encOpts), data);
              hash.digest();
            },
            () => void bareDecompress(algorithm, compressedOnly),
            () =>
              void runPipeline(
                createDecoder(metadata, () => privatePem),
                stored,
              ),
          ],
          runs,
        );

        const fileBytes = Math.min(16 * MiB, data.length);
        const storedFile = path.join(work, `stored-${algorithm}`);
        await pools.one.encodeFile(file, storedFile, encOpts);
        /** [wall MB/s, MB per CPU-second of the whole process (all threads)] */
        const poolRate = async (pool: FileFormatPool, workers: number, decode: boolean): Promise<[number, number]> => {
          const tasks = 4 * workers;
          const timing = await timeAsync(async () => {
            await Promise.all(
              Array.from({ length: tasks }, (_, i) =>
                decode
                  ? pool
                      .decodeFile(storedFile, path.join(work, `decoded-${i}`), metadata, privatePem)
                      .then(() => undefined)
                  : pool.encodeFileToBuffer(file, encOpts).then(() => undefined),
              ),
            );
          }, runs);
          return [mbps(tasks * fileBytes, timing.wall), mbps(tasks * fileBytes, timing.cpu)];
        };
        const [p1, p1cpu] = await poolRate(pools.one, 1, false);
        const [p2, p2cpu] = await poolRate(pools.two, 2, false);
        const machine = await referenceScaling();
        const [d1] = await poolRate(pools.one, 1, true);
        const [d2] = await poolRate(pools.two, 2, true);
        poolEfficiency.push(
          `${label.split(" ")[0]} ${algorithm}: ${fmt(p1cpu)} (1 worker) ${fmt(p2cpu)} (2 workers) MB per CPU-second; ` +
            `pool scaling ${(p2 / p1).toFixed(2)}x vs machine reference ${machine.toFixed(2)}x`,
        );
        const bare = mbps(data.length, tBare.cpu);
        const fullRate = mbps(data.length, tFull.cpu);
        const bareDec = mbps(data.length, tBareDec.cpu);
        const fullDec = mbps(data.length, tFullDec.cpu);
        console.log(
          `${algorithm.padEnd(10)} | ${fmt(bare)}    | ${fmt(mbps(data.length, tComp.cpu))} | ${fmt(fullRate)}   | ${fmt(mbps(data.length, tFullHash.cpu))}    | ${(
            (100 * fullRate) /
            bare
          )
            .toFixed(0)
            .padStart(
              6,
            )}%  | ${fmt(p1)}  | ${fmt(p2)}  | ${(p2 / p1).toFixed(2)}x | ${(data.length / stored.length).toFixed(1).padStart(5)} || ${fmt(
            bareDec,
          )}   | ${fmt(fullDec)}      | ${((100 * fullDec) / bareDec).toFixed(0).padStart(6)}%  | ${fmt(d1)}      | ${fmt(d2)}`,
        );
      }
      console.log("");
    }
    // Why own framing: snappy's own framed Compressor/Decompressor on the same data and timing.
    console.log("snappy framing choice (MB per CPU-second, median): ours vs snappy 7.4 framed Compressor/Decompressor");
    for (const [label, data] of datasets) {
      const plainOpts: EncodeOptions = { algorithm: "snappy", level: 0, encryptionKeyId: null, publicKeyPem: null };
      const framed = collect(createEncoder(plainOpts), data);
      const cpu: Record<string, number[]> = { ours: [], lib: [], oursDec: [], libDec: [] };
      for (let i = 0; i < runs; i++) {
        let c = cpuSeconds();
        runPipeline(createEncoder(plainOpts), data);
        cpu.ours.push(cpuSeconds() - c);
        c = cpuSeconds();
        const compressor = new snappy.Compressor();
        for (let o = 0; o < data.length; o += CHUNK) compressor.update(data.subarray(o, o + CHUNK));
        await compressor.finish();
        cpu.lib.push(cpuSeconds() - c);
        c = cpuSeconds();
        runPipeline(
          createDecoder({ "compression-algorithm": "snappy" }, () => undefined),
          framed,
        );
        cpu.oursDec.push(cpuSeconds() - c);
        c = cpuSeconds();
        const decompressor = new snappy.Decompressor();
        for (let o = 0; o < framed.length; o += CHUNK) decompressor.update(framed.subarray(o, o + CHUNK));
        await decompressor.finish();
        cpu.libDec.push(cpuSeconds() - c);
      }
      const rate = (k: string): string => fmt(mbps(data.length, median(cpu[k])));
      console.log(
        `  ${label.split(" ")[0]}: compress ours ${rate("ours")} lib ${rate("lib")}; decompress ours ${rate("oursDec")} lib ${rate("libDec")}`,
      );
    }
    console.log("");
    console.log("pool encode CPU efficiency (file read + compress + encrypt + transfer, all threads):");
    for (const line of poolEfficiency) console.log(`  ${line}`);
    console.log(
      `load average at end: ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" ")}`,
    );
    await pools.one.close();
    await pools.two.close();
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});

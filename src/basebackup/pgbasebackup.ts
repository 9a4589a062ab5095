/**
 * `basic` and `pipe` modes: PostgreSQL's pg_basebackup produces the tar (no `format` metadata,
 * storage-layout.md §5.1). basic writes base.tar into the work directory, then it is encoded in a
 * worker and uploaded; pipe streams pg_basebackup's stdout through a worker encode stream into the
 * (compressed) spool file, so no uncompressed copy ever touches the disk.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { open } from "node:fs/promises";
import path from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import pg from "pg";
import { findPgBinary } from "../config/pgbinary.js";
import { connectionStringUsingPgpass } from "../config/connection.js";
import { removeIfExists } from "../common/fs.js";
import { lsnToWalName } from "../wal/index.js";
import {
  BackupFailure,
  createBackupWorkDir,
  encodeOptions,
  hostnameOf,
  pgClientConfig,
  removeWorkDir,
  uploaderOf,
} from "./common.js";
import { basebackupKey, sanitizeMetadata, singleObjectCommonMetadata, type RawMetadata } from "../catalog/index.js";
import { BASEBACKUP_LABEL } from "./control.js";
import { pyIsoformatUtc } from "../common/pycompat.js";
import { parseBackupLabel } from "./label.js";
import { BackupProgress } from "./progress.js";
import { BLOCK_SIZE } from "./tar.js";
import { siteConfigOf, type BasebackupContext, type BasebackupResult } from "./types.js";

async function pgBasebackupPath(ctx: BasebackupContext): Promise<string> {
  if (ctx.pgBasebackupPath) return ctx.pgBasebackupPath;
  const site = siteConfigOf(ctx);
  const major =
    ctx.pgVersion >= 100000
      ? String(Math.floor(ctx.pgVersion / 10000))
      : `${Math.floor(ctx.pgVersion / 10000)}.${Math.floor(ctx.pgVersion / 100) % 100}`;
  return (await findPgBinary(site, "pg_basebackup", { wantedMajor: major, siteName: ctx.site })).path;
}

export async function pgBasebackupCommand(ctx: BasebackupContext, output: string): Promise<string[]> {
  const site = siteConfigOf(ctx);
  const command = [
    await pgBasebackupPath(ctx),
    "--format",
    "tar",
    "--label",
    BASEBACKUP_LABEL,
    "--verbose",
    "--pgdata",
    output,
  ];
  if (site.active_backup_mode === "standalone_hot_backup") {
    command.push(ctx.pgVersion >= 100000 ? "--wal-method=fetch" : "--xlog-method=fetch");
  } else if (ctx.pgVersion >= 100000) {
    command.push("--wal-method=none");
  }
  // As upstream: the password goes to ~/.pgpass, never onto the command line (visible in `ps`).
  const { connectionString } = await connectionStringUsingPgpass(ctx.node, { replication: true });
  if (fastCheckpoint(ctx)) command.push("--checkpoint=fast");
  command.push("--progress", "--dbname", connectionString);
  return command;
}

/** A requested backup, or `basebackup_fast_checkpoint`: else PostgreSQL's spread checkpoint (upstream). */
function fastCheckpoint(ctx: BasebackupContext): boolean {
  return ctx.fastCheckpoint === true || siteConfigOf(ctx).basebackup_fast_checkpoint === true;
}

/** The first phase: pg_basebackup waits for the checkpoint before it sends a byte. */
function checkpointPhase(ctx: BasebackupContext): string {
  return `waiting for checkpoint (${fastCheckpoint(ctx) ? "fast" : "spread"})`;
}

/** Secrets out of a command line before it is logged. */
function redactCommand(command: string[]): string {
  return command.map((a) => a.replace(/password='(?:[^'\\]|\\.)*'/g, "password='***'")).join(" ");
}

/** Follows pg_basebackup's stderr: `--progress` lines update progress, the rest is logged. */
function watchStderr(proc: ChildProcess, ctx: BasebackupContext, progress: BackupProgress): { tail: () => string } {
  const lines: string[] = [];
  let pending = "";
  let lastDone = 0;
  proc.stderr?.setEncoding("utf8");
  proc.stderr?.on("data", (text: string) => {
    pending += text;
    const parts = pending.split(/[\r\n]/);
    pending = parts.pop() ?? "";
    for (const line of parts) {
      if (!line.trim()) continue;
      const m = /^\s*(\d+)\/(\d+) kB/.exec(line);
      // pg_basebackup --verbose announces the phases it waits in; each becomes the backup's phase.
      if (m || /checkpoint completed/.test(line)) {
        if (progress.snapshot.phase.startsWith("waiting for checkpoint")) progress.setPhase("streaming");
      } else if (/(write-ahead|transaction) log end point/.test(line)) {
        progress.setPhase("ending backup (pg_basebackup writes the end of the archive)");
      }
      if (m) {
        const done = Number(m[1]) * 1024;
        progress.setTotal(Number(m[2]) * 1024);
        if (done > lastDone) progress.addDone(done - lastDone);
        lastDone = done;
        continue;
      }
      lines.push(line);
      if (lines.length > 50) lines.shift();
      ctx.log.debug(`pg_basebackup: ${line}`);
    }
  });
  return { tail: () => lines.slice(-10).join("\n") };
}

function waitForExit(proc: ChildProcess): Promise<number | null> {
  return new Promise((resolve, reject) => {
    if (proc.exitCode !== null) {
      resolve(proc.exitCode);
      return;
    }
    proc.once("error", reject);
    proc.once("close", (code) => resolve(code));
  });
}

function killOnAbort(ctx: BasebackupContext, proc: ChildProcess): () => void {
  const onAbort = (): void => {
    proc.kill("SIGTERM");
    setTimeout(() => proc.exitCode === null && proc.kill("SIGKILL"), 100).unref();
  };
  ctx.signal?.addEventListener("abort", onAbort);
  return () => ctx.signal?.removeEventListener("abort", onAbort);
}

/** Reads one member of a tar file header by header (never loads the archive). */
export async function readTarFileMember(tarPath: string, wanted: string): Promise<Buffer | null> {
  const handle = await open(tarPath, "r");
  try {
    const header = Buffer.alloc(BLOCK_SIZE);
    let offset = 0;
    for (;;) {
      const { bytesRead } = await handle.read(header, 0, BLOCK_SIZE, offset);
      if (bytesRead < BLOCK_SIZE || header.every((b) => b === 0)) return null;
      const name = header.toString("utf8", 0, 100).replace(/\0.*$/s, "");
      const size = parseInt(header.toString("ascii", 124, 136).replace(/\0.*$/s, "").trim() || "0", 8);
      if (name === wanted || name === `./${wanted}`) {
        const data = Buffer.alloc(size);
        await handle.read(data, 0, size, offset + BLOCK_SIZE);
        return data;
      }
      offset += BLOCK_SIZE + Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
    }
  } finally {
    await handle.close();
  }
}

/** Uploads the encoded single-tar object `basebackup/NAME` and describes the result. */
async function uploadMainObject(
  ctx: BasebackupContext,
  args: {
    name: string;
    localPath: string;
    metadata: Record<string, string>;
    storedSize: number;
    plainBytes: number;
    progress: BackupProgress;
  },
): Promise<BasebackupResult> {
  args.progress.setPhase("uploading");
  await uploaderOf(ctx).upload({
    filetype: "basebackup",
    objectName: args.name,
    localPath: args.localPath,
    metadata: args.metadata,
    fileSize: args.storedSize,
    onProgress: (n) => args.progress.addUploaded(n),
  });
  args.progress.finish();
  const key = basebackupKey(siteConfigOf(ctx).prefix, args.name);
  return { name: args.name, key, metadata: args.metadata, uploadedBytes: args.storedSize, plainBytes: args.plainBytes };
}

function commonMetadata(ctx: BasebackupContext): RawMetadata {
  const site = siteConfigOf(ctx);
  return singleObjectCommonMetadata({
    encoding: encodeOptions(ctx),
    host: hostnameOf(ctx),
    pgVersion: ctx.pgVersion,
    activeBackupMode: site.active_backup_mode,
    basebackupMode: site.basebackup_mode,
  });
}

export async function runBasicBasebackup(ctx: BasebackupContext): Promise<BasebackupResult> {
  siteConfigOf(ctx); // fails early on an unknown site
  const { name, workDir } = await createBackupWorkDir(ctx);
  const progress = new BackupProgress(name, "basic", ctx.log, ctx.onProgress);
  try {
    const command = await pgBasebackupCommand(ctx, workDir);
    const started = Date.now();
    const proc = spawn(command[0], command.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
    ctx.log.info(
      `Started: ${redactCommand(command)}, running as PID: ${proc.pid}, basebackup_location: ${workDir}/base.tar`,
    );
    progress.setPhase(checkpointPhase(ctx));
    const stderr = watchStderr(proc, ctx, progress);
    const unhook = killOnAbort(ctx, proc);
    const code = await waitForExit(proc).finally(unhook);
    const tarPath = path.join(workDir, "base.tar");
    ctx.log.info(`Ran pg_basebackup, took ${((Date.now() - started) / 1000).toFixed(3)} s, returncode: ${code}`);
    if (code !== 0) throw new BackupFailure(`pg_basebackup failed with exit code ${code}: ${stderr.tail()}`);
    const label = await readTarFileMember(tarPath, "backup_label");
    if (!label) throw new BackupFailure("base.tar has no backup_label");
    const { startWalSegment, startTime } = parseBackupLabel(label);
    progress.setPhase("compressing");
    const localPath = path.join(workDir, name);
    const result = await ctx.pool.encodeFile(tarPath, localPath, encodeOptions(ctx));
    await removeIfExists(tarPath);
    const metadata = sanitizeMetadata({
      ...commonMetadata(ctx),
      "compression-level": ctx.config.compression?.level,
      "original-file-size": result.originalSize,
      ...ctx.decision,
      "start-time": startTime,
      "start-wal-segment": startWalSegment,
    });
    return await uploadMainObject(ctx, {
      name,
      localPath,
      metadata,
      storedSize: result.storedSize,
      plainBytes: result.originalSize,
      progress,
    });
  } finally {
    await removeWorkDir(workDir);
  }
}

/** Current WAL segment from IDENTIFY_SYSTEM (pipe mode's fallback start segment). */
async function identifySystemSegment(ctx: BasebackupContext): Promise<string> {
  const client = new pg.Client({
    ...pgClientConfig(ctx),
    database: "replication",
    replication: "true",
  } as pg.ClientConfig);
  await client.connect();
  try {
    const res = await client.query<{ timeline: string; xlogpos: string }>("IDENTIFY_SYSTEM");
    return lsnToWalName(res.rows[0].xlogpos, Number(res.rows[0].timeline), undefined, ctx.pgVersion);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export async function runPipeBasebackup(ctx: BasebackupContext): Promise<BasebackupResult> {
  siteConfigOf(ctx); // fails early on an unknown site
  const fallbackSegment = await identifySystemSegment(ctx);
  const { name, workDir } = await createBackupWorkDir(ctx);
  const progress = new BackupProgress(name, "pipe", ctx.log, ctx.onProgress);
  try {
    const command = await pgBasebackupCommand(ctx, "-");
    const proc = spawn(command[0], command.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    ctx.log.info(`Started: ${redactCommand(command)}, running as PID: ${proc.pid}, basebackup_location: ${name}`);
    progress.setPhase(checkpointPhase(ctx));
    const stderr = watchStderr(proc, ctx, progress);
    const unhook = killOnAbort(ctx, proc);
    const exited = waitForExit(proc).finally(unhook);
    // the label (first tar member) is at bytes 512..1023 of the stream
    let head = Buffer.alloc(0);
    let inputSize = 0;
    const inspect = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        if (head.length < 2 * BLOCK_SIZE) head = Buffer.concat([head, chunk.subarray(0, 2 * BLOCK_SIZE - head.length)]);
        inputSize += chunk.length;
        ctx.metrics?.increase("pghoard.basebackup_bytes_uploaded", chunk.length, { delta: "False" });
        cb(null, chunk);
      },
    });
    // striped: the whole backup is this one stream, so it keeps both cores compressing (snappy)
    const encoder = ctx.pool.createEncodeStream(encodeOptions(ctx), { striped: true });
    const localPath = path.join(workDir, "data.tmp");
    let streamError: unknown;
    try {
      await pipeline(proc.stdout!, inspect, encoder, createWriteStream(localPath));
    } catch (err) {
      streamError = err;
      proc.kill("SIGTERM");
    }
    const code = await exited;
    if (code !== 0 || streamError) {
      throw new BackupFailure(
        `pg_basebackup failed with exit code ${code}: ${stderr.tail()}${streamError ? ` (${String(streamError)})` : ""}`,
      );
    }
    const result = await encoder.result();
    let startWalSegment = fallbackSegment;
    let startTime: string | undefined;
    if (head.subarray(0, 12).toString("latin1").startsWith("backup_label")) {
      const parsed = parseBackupLabel(
        head
          .subarray(BLOCK_SIZE, 2 * BLOCK_SIZE)
          .toString("utf8")
          .replace(/\0+$/, ""),
      );
      startWalSegment = parsed.startWalSegment;
      startTime = parsed.startTime;
    }
    startTime ??= pyIsoformatUtc(new Date());
    if (inputSize > 0) {
      ctx.metrics?.gauge("pghoard.compressed_size_ratio", result.storedSize / inputSize, {
        algorithm: encodeOptions(ctx).algorithm,
        site: ctx.site,
        type: "basebackup",
      });
    }
    const metadata = sanitizeMetadata({
      ...commonMetadata(ctx),
      "start-wal-segment": startWalSegment,
      "start-time": startTime,
      "original-file-size": inputSize,
      ...ctx.decision,
    });
    return await uploadMainObject(ctx, {
      name,
      localPath,
      metadata,
      storedSize: result.storedSize,
      plainBytes: inputSize,
      progress,
    });
  } finally {
    await removeWorkDir(workDir);
  }
}

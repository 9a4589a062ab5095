/**
 * `pghoard_restore verify`: downloads and fully decodes every object the selected backups consist
 * of, and every WAL segment (and history file) from each backup's start to the newest archived
 * segment on the timeline chain, without writing anything. Objects are checked in parallel in
 * worker threads (`restore_process_count`), streaming; every problem is collected and named.
 */
import {
  BASEBACKUP_FORMATS,
  backupNameOf,
  basebackupKey,
  chunkKey,
  controlObjectName,
  deltaObjectKey,
  manifestFiles,
  objectKey,
  type SiteStore,
} from "../catalog/index.js";
import { createHash } from "node:crypto";

import type { PghoardConfig } from "../config/types.js";
import { decodeBuffer } from "../fileformat/index.js";
import { historyFileName, walNameToSegmentNumber, isWalName } from "../wal/index.js";
import { RestoreError, describeError } from "./errors.js";
import { ProgressTracker } from "./fetch.js";
import { readControlMetadata } from "./plan.js";
import { ProgressReporter } from "./progress.js";
import { loadSiteArchive, type SiteArchive } from "./site_archive.js";
import {
  checkStoredDigest,
  ObjectCorruptError,
  storedDigestAlgorithm,
  type VerifyJob,
  type VerifyObjectResult,
} from "./verify_object.js";
import { VerifyWorkers } from "./verify_workers.js";

export interface VerifyProblem {
  /** The object's key (or the name recovery would ask for, when missing). */
  object: string;
  problem: string;
}

export interface VerifiedBackup {
  name: string;
  format: string | null;
  objects: number;
  ok: boolean;
}

export interface VerifyReport {
  site: string;
  ok: boolean;
  backups: VerifiedBackup[];
  wal: { first: string | null; last: string | null; segments: number; timelines: number[] };
  objects: number;
  stored_bytes: number;
  decoded_bytes: number;
  seconds: number;
  problems: VerifyProblem[];
  /** Newest commit/abort record found in the verified WAL (µs since the epoch), for `info`. */
  lastXactTimeUs: bigint | null;
}

export interface VerifyOptions {
  config: PghoardConfig;
  site: string;
  /** A backup name as listed (or its basename), `latest` or `all`. */
  basebackup: string;
  out: NodeJS.WritableStream;
  isTTY?: boolean;
  /** No progress output at all (JSON output, library callers). */
  quiet?: boolean;
  /** Aborts the verification (rejects with the signal's reason). */
  signal?: AbortSignal;
}

export interface VerifyTask {
  job: VerifyJob;
  store: SiteStore;
  size: number;
  backups: Set<string>;
}

async function selectBackups(
  archive: SiteArchive,
  which: string,
  problems: VerifyProblem[],
): Promise<SiteArchive["backups"]> {
  const backups = archive.backups.filter((b) => b.metadata["start-time"] !== undefined);
  if (which === "all") return backups;
  if (which === "latest") {
    if (backups.length === 0) throw new RestoreError("No basebackups found, nothing to verify");
    return [backups[backups.length - 1]];
  }
  const found = archive.backups.find((b) => b.name === which || backupNameOf(b.name) === backupNameOf(which));
  if (found) return [found];
  // A chunked backup whose control object is gone is not listed, but its chunks still are.
  const name = backupNameOf(which);
  for (const store of archive.stores) {
    for (const dir of ["basebackup_chunk", "basebackup_delta_chunk"] as const) {
      const chunks = await store.storage.list(objectKey(store.prefix, dir, name)).catch(() => []);
      if (chunks.length > 0) {
        problems.push({
          object: basebackupKey(store.prefix, controlObjectName(name)),
          problem: `missing from the object store (${chunks.length} chunks of the backup are stored)`,
        });
        return [];
      }
    }
  }
  throw new RestoreError(`Basebackup '${which}' not found`);
}

function problemText(err: unknown): string {
  const name = err instanceof Error ? err.name : "";
  if (name === "StorageNotFoundError") return "missing from the object store";
  if (name === "IntegrityError" || name === "FileFormatError")
    return `corrupt or tampered with: ${(err as Error).message}`;
  if (name === "ObjectCorruptError" || name === "WalVerificationError" || name === "LsnMismatchError")
    return `corrupt: ${(err as Error).message}`;
  return describeError(err);
}

/** key → backend checksum of the objects below a directory (none when it does not exist). */
async function digestsBelow(store: SiteStore, dir: string): Promise<Map<string, string>> {
  const result = new Map<string, string>();
  const objects = await store.storage.list(dir).catch(() => []);
  for (const obj of objects) if (obj.md5) result.set(obj.name, obj.md5);
  return result;
}

/** Adds a backup's own objects (main object, or control + chunks + delta objects) to `tasks`. */
async function planBackup(
  archive: SiteArchive,
  backup: SiteArchive["backups"][number],
  tasks: Map<string, VerifyTask>,
  problems: VerifyProblem[],
): Promise<number> {
  const store = archive.stores.find((s) => s.site === backup.site) ?? archive.stores[0];
  const add = (job: VerifyJob, size: number): void => {
    const existing = tasks.get(job.key);
    if (existing) existing.backups.add(backup.name);
    else tasks.set(job.key, { job, store, size, backups: new Set([backup.name]) });
  };
  const format = backup.metadata.format || undefined;
  if (format !== undefined && !(BASEBACKUP_FORMATS as readonly string[]).includes(format)) {
    problems.push({ object: backup.name, problem: `unrecognized basebackup format '${format}'` });
    return 0;
  }
  if (format === undefined || format === "pghoard-bb-v1") {
    add({ kind: "tar", key: backup.name, storedSize: backup.size, storedDigest: backup.md5 }, backup.size);
    return 1;
  }
  let objects = 1;
  let control;
  try {
    const { data, metadata } = await store.storage.getContentsToMemory(backup.name);
    if (data.length !== backup.size)
      throw new ObjectCorruptError(`stored size ${data.length}, listed as ${backup.size}`);
    const algorithm = storedDigestAlgorithm(backup.md5);
    if (algorithm) checkStoredDigest(createHash(algorithm).update(data).digest("hex"), backup.md5!);
    const decoded = await decodeBuffer(data, metadata, archive.keys);
    const expected = metadata["original-file-size"];
    if (expected !== undefined && Number(expected) !== decoded.length)
      throw new ObjectCorruptError(`decoded control is ${decoded.length} bytes, expected ${expected}`);
    control = await readControlMetadata(decoded, backup.name);
  } catch (err) {
    problems.push({ object: backup.name, problem: problemText(err) });
    return objects;
  }
  const chunkDir = format === "pghoard-bb-v2" ? "basebackup_chunk" : "basebackup_delta_chunk";
  const chunkDigests = await digestsBelow(store, objectKey(store.prefix, chunkDir, backupNameOf(backup.name)));
  for (const chunk of control.chunks ?? []) {
    const key = chunkKey(store.prefix, chunkDir, chunk.chunk_filename);
    objects += 1;
    add(
      {
        kind: "tar",
        key,
        storedSize: Number(chunk.result_size),
        storedDigest: chunkDigests.get(key),
        plainSize: chunk.input_size === undefined ? undefined : Number(chunk.input_size),
      },
      Number(chunk.result_size) || 0,
    );
  }
  if (format.startsWith("pghoard-delta-")) {
    if (!control.manifest?.snapshot_result?.state)
      problems.push({ object: backup.name, problem: "delta backup without a manifest in its control object" });
    const deltaDigests = await digestsBelow(store, objectKey(store.prefix, "basebackup_delta"));
    for (const file of manifestFiles(control)) {
      if (!file.hexdigest) continue;
      objects += 1;
      const key = deltaObjectKey(store.prefix, file.hexdigest);
      add(
        {
          kind: "delta-file",
          key,
          storedDigest: deltaDigests.get(key),
          hexdigest: file.hexdigest,
          fileSize: Number(file.file_size),
          storedSize: Number(file.stored_file_size) || undefined,
        },
        Number(file.stored_file_size) || 0,
      );
    }
  }
  return objects;
}

/** Adds the WAL chain from each backup's start (and the history files it follows) to `tasks`. */
function planWal(
  archive: SiteArchive,
  backups: SiteArchive["backups"],
  tasks: Map<string, VerifyTask>,
  problems: VerifyProblem[],
): VerifyReport["wal"] {
  const { chain } = archive;
  const main = archive.stores[0];
  const names = new Set<string>();
  const missing = new Set<string>();
  for (const backup of backups) {
    const start = backup.metadata["start-wal-segment"];
    if (!start || !isWalName(start)) {
      problems.push({ object: backup.name, problem: "no valid start-wal-segment in its metadata" });
      continue;
    }
    const walk = chain.chainFrom(start);
    if (!walk) {
      problems.push({
        object: backup.name,
        problem: `its start segment ${start} is not on the history of the newest timeline ${chain.newestTimeline}`,
      });
      continue;
    }
    for (const { name, object } of walk.present) {
      if (names.has(name)) continue;
      names.add(name);
      const store = archive.storeOf.get(object) ?? main;
      tasks.set(object.name, {
        job: { kind: "wal", key: object.name, name, storedDigest: object.md5 },
        store,
        size: object.size,
        backups: new Set(),
      });
    }
    for (const name of walk.missing) missing.add(name);
  }
  for (const name of [...missing].sort()) {
    problems.push({ object: objectKey(main.prefix, "xlog", name), problem: "missing: the WAL chain is broken here" });
  }
  for (const tli of chain.timelines.filter((t) => t > 1)) {
    const history = chain.histories.get(tli);
    if (!history) {
      problems.push({ object: objectKey(main.prefix, "timeline", historyFileName(tli)), problem: "missing" });
      continue;
    }
    const store = archive.storeOf.get(history) ?? main;
    tasks.set(history.name, {
      job: { kind: "history", key: history.name, name: historyFileName(tli), storedDigest: history.md5 },
      store,
      size: history.size,
      backups: new Set(),
    });
  }
  const sorted = [...names].sort((a, b) => {
    const d = walNameToSegmentNumber(a) - walNameToSegmentNumber(b);
    return d < 0n ? -1 : d > 0n ? 1 : a < b ? -1 : 1;
  });
  return { first: sorted[0] ?? null, last: sorted.at(-1) ?? null, segments: names.size, timelines: chain.timelines };
}

/** Runs the tasks on the verify workers; problems are collected, never thrown. */
export async function runVerifyTasks(
  archive: SiteArchive,
  tasks: VerifyTask[],
  concurrency: number,
  tracker: ProgressTracker,
  reporter: ProgressReporter | null,
  signal?: AbortSignal,
): Promise<{ results: Map<string, VerifyObjectResult>; problems: VerifyProblem[] }> {
  const workers = new VerifyWorkers(Math.min(concurrency, Math.max(1, tasks.length)), archive.privateKeys);
  const results = new Map<string, VerifyObjectResult>();
  const problems: VerifyProblem[] = [];
  let next = 0;
  reporter?.start();
  try {
    const lane = async (): Promise<void> => {
      while (next < tasks.length && !signal?.aborted) {
        const index = next++;
        const task = tasks[index];
        try {
          const result = await workers.run(task.job, archive.storageConfig(task.store.site), (bytes) =>
            tracker.add(index, bytes),
          );
          results.set(task.job.key, result);
        } catch (err) {
          problems.push({ object: task.job.key, problem: problemText(err) });
        }
        tracker.complete(index, task.size);
      }
    };
    // Two objects per worker: one downloads while the other decodes.
    const lanes = Promise.all(Array.from({ length: Math.max(1, concurrency * 2) }, () => lane()));
    // On abort (Ctrl-C) stop at once: closing the workers below ends whatever they were doing.
    const aborted = new Promise<never>((_, reject) => {
      if (signal?.aborted) reject(signal.reason);
      signal?.addEventListener("abort", () => reject(signal.reason), { once: true });
    });
    aborted.catch(() => undefined);
    await Promise.race([lanes, aborted]);
  } finally {
    await workers.close();
    await reporter?.stop();
  }
  return { results, problems };
}

export async function verifyBasebackups(opts: VerifyOptions): Promise<VerifyReport> {
  const started = Date.now();
  const archive = await loadSiteArchive(opts.config, opts.site);
  try {
    const problems: VerifyProblem[] = [...archive.problems];
    const selected = await selectBackups(archive, opts.basebackup, problems);
    const tasks = new Map<string, VerifyTask>();
    const objectCounts: number[] = [];
    for (const backup of selected) objectCounts.push(await planBackup(archive, backup, tasks, problems));
    const wal = planWal(archive, selected, tasks, problems);
    const list = [...tasks.values()];
    const tracker = new ProgressTracker(list);
    const reporter = opts.quiet ? null : new ProgressReporter({ tracker, out: opts.out, isTTY: opts.isTTY });
    const concurrency = Math.max(1, opts.config.restore_process_count ?? 1);
    const run = await runVerifyTasks(archive, list, concurrency, tracker, reporter, opts.signal);
    problems.push(...run.problems);
    let lastXactTimeUs: bigint | null = null;
    let stored = 0;
    let decoded = 0;
    for (const result of run.results.values()) {
      stored += result.storedBytes;
      decoded += result.plainBytes;
      const t = result.wal?.lastXactTimeUs;
      if (t && (lastXactTimeUs === null || BigInt(t) > lastXactTimeUs)) lastXactTimeUs = BigInt(t);
    }
    const bad = new Set(problems.map((p) => p.object));
    const backups = selected.map((b, i) => ({
      name: b.name,
      format: b.metadata.format || null,
      objects: objectCounts[i],
      ok:
        !bad.has(b.name) &&
        !list.some((t) => t.backups.has(b.name) && bad.has(t.job.key)) &&
        !problems.some((p) => p.object.includes("/xlog/") || p.object.includes("/timeline/")),
    }));
    return {
      site: opts.site,
      ok: problems.length === 0,
      backups,
      wal,
      objects: list.length + selected.filter((b) => b.metadata.format && b.metadata.format !== "pghoard-bb-v1").length,
      stored_bytes: stored,
      decoded_bytes: decoded,
      seconds: (Date.now() - started) / 1000,
      problems: problems.sort((a, b) => (a.object < b.object ? -1 : a.object > b.object ? 1 : 0)),
      lastXactTimeUs,
    };
  } finally {
    await archive.close();
  }
}

const MIB = 1024 * 1024;

/** The human report: one line per backup, the WAL range, totals, then every problem. */
export function formatVerifyReport(report: VerifyReport): string {
  const lines: string[] = [];
  for (const b of report.backups) {
    lines.push(`${b.ok ? "OK    " : "FAILED"}  ${b.name}  (${b.format ?? "single object"}, ${b.objects} objects)`);
  }
  const w = report.wal;
  lines.push(
    w.segments > 0
      ? `WAL: ${w.segments} segments ${w.first} .. ${w.last} on timeline${w.timelines.length > 1 ? "s" : ""} ${w.timelines.join(", ")}`
      : "WAL: no segments",
  );
  const rate = report.seconds > 0 ? report.decoded_bytes / MIB / report.seconds : 0;
  lines.push(
    `Checked ${report.objects} objects: ${(report.stored_bytes / MIB).toFixed(1)} MiB stored, ${(report.decoded_bytes / MIB).toFixed(1)} MiB decoded in ${report.seconds.toFixed(1)} s (${rate.toFixed(1)} MiB/s decoded)`,
  );
  if (report.ok) lines.push("Verification succeeded: every object checks.");
  else {
    lines.push(`Verification FAILED: ${report.problems.length} problem${report.problems.length === 1 ? "" : "s"}:`);
    for (const p of report.problems) lines.push(`  ${p.object}: ${p.problem}`);
  }
  return lines.join("\n") + "\n";
}

/** The `--json` document (bigints as strings). */
export function verifyReportJson(report: VerifyReport): Record<string, unknown> {
  const { lastXactTimeUs, ...rest } = report;
  void lastXactTimeUs;
  return rest;
}

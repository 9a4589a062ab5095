/**
 * Restoring one WAL or history file into a WAL directory, as the daemon's GET path
 * (http-api.md §4.7, §7) and the daemonless direct mode of pghoard_postgres_command both do it:
 * the `.pghoard.prefetch` / `.pghoard.tmp` names (part of the client/daemon contract), the
 * checks a downloaded or prefetched file must pass, the prefetch candidates, and the download
 * itself (storage stream → decrypt/decompress → temp file, fsynced).
 */
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync } from "node:fs";
import { readdir, rename, unlink } from "node:fs/promises";
import path from "node:path";
import type { Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";

import { isErrno } from "../common/errors.js";
import { fsyncFile } from "../common/fs.js";
import { sitePrivateKey } from "../config/sites.js";
import type { SiteConfig } from "../config/types.js";
import type { Metadata, StorageBackend } from "../storage/types.js";
import { isHistoryName, isWalName, nextWalName, verifyWalFile } from "../wal/index.js";

/** What the daemon's API calls WAL segments and timeline history files. */
export type WalFileType = "xlog" | "timeline";

export const PREFETCH_SUFFIX = ".pghoard.prefetch";
export const DOWNLOAD_TEMP_SUFFIX = ".pghoard.tmp";

/** "xlog" for a segment name, "timeline" for a history file name, else null. */
export function walFileTypeOf(name: string): WalFileType | null {
  if (isWalName(name)) return "xlog";
  if (isHistoryName(name)) return "timeline";
  return null;
}

export function prefetchPathFor(walDir: string, name: string): string {
  return path.join(walDir, `${name}${PREFETCH_SUFFIX}`);
}

/** `<name>.<random>.pghoard.tmp`: a download in progress (its name says which file it is). */
export function downloadTempPathFor(walDir: string, name: string): string {
  return path.join(walDir, `${name}.${randomBytes(6).toString("hex")}${DOWNLOAD_TEMP_SUFFIX}`);
}

/** null when the file may be served, else why not (only segments have a header to check). */
export async function invalidWalFileReason(
  filetype: WalFileType,
  name: string,
  filePath: string,
): Promise<string | null> {
  if (filetype !== "xlog") return null;
  try {
    await verifyWalFile(filePath, name);
    return null;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

export type PrefetchServeResult = "served" | "missing" | "invalid";

/**
 * Moves `<name>.pghoard.prefetch` to `target` after checking it. "missing" when it is not there
 * (or someone else took it first), "invalid" when it failed the check (it is deleted then).
 * Other rename errors are thrown.
 */
export async function servePrefetchFile(
  filetype: WalFileType,
  name: string,
  prefetchPath: string,
  target: string,
  onInvalid: (reason: string) => void,
): Promise<PrefetchServeResult> {
  if (!existsSync(prefetchPath)) return "missing";
  const reason = await invalidWalFileReason(filetype, name, prefetchPath);
  if (reason !== null) {
    onInvalid(reason);
    await unlink(prefetchPath).catch(() => undefined);
    return "invalid";
  }
  try {
    await rename(prefetchPath, target);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return "missing";
    throw err;
  }
  return "served";
}

/**
 * http-api.md §7: the next `count` segments after `name` that are worth downloading: not in
 * `walDir` with a valid header, not prefetched already, and not excluded by `skip`.
 */
export async function prefetchCandidates(
  walDir: string,
  name: string,
  count: number,
  skip: (candidate: string) => boolean = () => false,
): Promise<string[]> {
  const out: string[] = [];
  let current = name;
  for (let i = 0; i < count; i++) {
    current = nextWalName(current);
    if (skip(current) || existsSync(prefetchPathFor(walDir, current))) continue;
    const onDisk = path.join(walDir, current);
    if (existsSync(onDisk) && (await invalidWalFileReason("xlog", current, onDisk)) === null) continue;
    out.push(current);
  }
  return out;
}

/** Resolves the decode stream for an object's metadata (decryption key lookup included). */
export type DecodeStreamFactory = (metadata: Metadata) => Duplex;

/**
 * The site's decoder: the private key named by the object's `encryption-key-id` comes from the
 * site's `encryption_keys`; `createDecodeStream` is the worker pool's.
 */
export function siteDecoder(
  site: Pick<SiteConfig, "encryption_keys">,
  createDecodeStream: (metadata: Metadata, privateKeyPem: string | null) => Duplex,
): DecodeStreamFactory {
  return (metadata) => {
    const keyId = metadata["encryption-key-id"];
    let privateKeyPem: string | null = null;
    if (keyId) {
      privateKeyPem = sitePrivateKey(site, keyId);
      if (!privateKeyPem) throw new Error(`File is encrypted with key '${keyId}' but key not found`);
    }
    return createDecodeStream(metadata, privateKeyPem);
  };
}

/**
 * Streams the object at `key` through its decoder into `tmpPath` (created or truncated) and
 * fsyncs it, so a file published by rename afterwards is complete even after a power loss
 * (`durable: false` skips that for a file handed to PostgreSQL at once: a crash makes it ask again).
 */
export async function downloadObjectTo(
  storage: StorageBackend,
  key: string,
  tmpPath: string,
  createDecodeStream: DecodeStreamFactory,
  durable = true,
): Promise<{ metadata: Metadata; storedSize: number }> {
  const { stream, metadata, size } = await storage.getReadStream(key);
  let decode: Duplex;
  try {
    decode = createDecodeStream(metadata);
  } catch (err) {
    stream.destroy();
    throw err;
  }
  await pipeline(stream, decode, createWriteStream(tmpPath));
  if (durable) await fsyncFile(tmpPath);
  return { metadata, storedSize: size };
}

export type PublishResult = "published" | "exists" | "invalid";

/**
 * Upstream's DownloadResultsProcessor step: a finished download becomes `<name>.pghoard.prefetch`
 * once it passes the check, unless a prefetch file is there already. The temp file is left for
 * the caller to remove.
 */
export async function publishPrefetch(
  filetype: WalFileType,
  name: string,
  tmpPath: string,
  prefetchPath: string,
  onInvalid: (reason: string) => void,
): Promise<PublishResult> {
  if (existsSync(prefetchPath)) return "exists";
  const reason = await invalidWalFileReason(filetype, name, tmpPath);
  if (reason !== null) {
    onInvalid(reason);
    return "invalid";
  }
  await rename(tmpPath, prefetchPath);
  return "published";
}

/** Names of downloads in progress in `walDir` (`<name>.<random>.pghoard.tmp`). */
export async function pendingDownloadNames(walDir: string): Promise<Set<string>> {
  const names = new Set<string>();
  for (const entry of await readdir(walDir).catch(() => [] as string[])) {
    if (!entry.endsWith(DOWNLOAD_TEMP_SUFFIX)) continue;
    names.add(entry.slice(0, entry.indexOf(".")));
  }
  return names;
}

/** Removes every `*.pghoard.prefetch` and `*.pghoard.tmp` file of `walDir`; returns how many. */
export async function removePrefetchLeftovers(walDir: string): Promise<number> {
  let removed = 0;
  for (const entry of await readdir(walDir).catch(() => [] as string[])) {
    if (!entry.endsWith(PREFETCH_SUFFIX) && !entry.endsWith(DOWNLOAD_TEMP_SUFFIX)) continue;
    try {
      await unlink(path.join(walDir, entry));
      removed++;
    } catch (err) {
      if (!isErrno(err, "ENOENT")) throw err;
    }
  }
  return removed;
}

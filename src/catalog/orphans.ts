/**
 * Data objects no backup owns: a chunked backup uploads its chunks (`basebackup_chunk/NAME/…`,
 * `basebackup_delta_chunk/NAME/…`) before its control object `basebackup/NAME.00000000.pghoard`
 * (storage-layout.md §2), so a backup interrupted in between leaves a chunk directory whose NAME
 * has no `basebackup/` entry; a delta backup likewise leaves hash objects
 * (`basebackup_delta/<hexdigest>`) that no control object's manifest lists.
 */
import path from "node:path";
import type { PrivateKeyLookup } from "../fileformat/index.js";
import { StorageNotFoundError, type StoredObject } from "../storage/types.js";
import { listBasebackups, type SiteStore } from "./catalogue.js";
import { deltaReferences, readControlMetadata } from "./control.js";
import { backupNameOf, objectKey, type ChunkDirectory } from "./keys.js";
import { DELTA_FORMATS } from "./metadata.js";

const CHUNK_DIRECTORIES: readonly ChunkDirectory[] = ["basebackup_chunk", "basebackup_delta_chunk"];

/** The chunk directory of one backup that has no control object. */
export interface OrphanChunkDirectory {
  /** `<prefix>/<chunk directory>/<NAME>`: the tree to delete. */
  key: string;
  backupName: string;
  /** Published objects in it (may be 0 when only temp files of an interrupted upload are left). */
  objects: number;
  bytes: number;
}

async function listOrEmpty(store: Pick<SiteStore, "storage">, key: string): Promise<StoredObject[]> {
  try {
    return await store.storage.list(key, { recursive: true });
  } catch (err) {
    if (err instanceof StorageNotFoundError) return [];
    throw err;
  }
}

/**
 * Chunk directories of `store` whose backup has no `basebackup/` entry, except the names in
 * `inProgress` (backups being taken right now). Chunks are listed before the control objects, so
 * a backup completing meanwhile is never reported.
 */
export async function findOrphanChunkDirectories(
  store: SiteStore,
  inProgress: ReadonlySet<string> = new Set(),
): Promise<OrphanChunkDirectory[]> {
  const found = new Map<string, OrphanChunkDirectory>();
  for (const directory of CHUNK_DIRECTORIES) {
    const base = objectKey(store.prefix, directory);
    for (const obj of await listOrEmpty(store, base)) {
      // `<base>/<NAME>/<NAME>.NNNNNNNN.pghoard`: NAME is the first component below the chunk directory.
      const relative = path.posix.relative(base, obj.name);
      const backupName = relative.split("/")[0];
      if (!backupName || backupName === relative) continue; // not inside a backup's directory
      const key = path.posix.join(base, backupName);
      const entry = found.get(key) ?? { key, backupName, objects: 0, bytes: 0 };
      entry.objects += 1;
      entry.bytes += obj.size;
      found.set(key, entry);
    }
  }
  if (found.size === 0) return [];
  const owned = new Set((await listBasebackups([store])).map((e) => backupNameOf(e.name)));
  return [...found.values()].filter((d) => !owned.has(d.backupName) && !inProgress.has(d.backupName));
}

/** Hexdigests each delta control object references, by `<key>@<last modified>` (control objects never change). */
export type DeltaReferenceCache = Map<string, ReadonlySet<string>>;

/** A BLAKE2s-256 hexdigest: the only names a delta backup gives its hash objects. */
export const HASH_OBJECT_NAME = /^[0-9a-f]{64}$/;

/**
 * Hash objects of `store` that no delta control object of its `basebackup/` references and that
 * were last modified before `olderThan` (anything newer may belong to a backup in progress, or
 * have just been uploaded again by one that found no completed backup listing it). Hash objects
 * are listed before the control objects, so a backup completing in between keeps its objects. A
 * control object that cannot be read fails the whole search: nothing is reported then.
 */
export async function findOrphanDeltaObjects(
  store: SiteStore,
  opts: { olderThan: Date; keys: PrivateKeyLookup; cache?: DeltaReferenceCache },
): Promise<StoredObject[]> {
  const candidates = (await listOrEmpty(store, objectKey(store.prefix, "basebackup_delta"))).filter(
    (obj) =>
      HASH_OBJECT_NAME.test(path.posix.basename(obj.name)) && obj.lastModified.getTime() < opts.olderThan.getTime(),
  );
  if (candidates.length === 0) return [];
  const cache: DeltaReferenceCache = opts.cache ?? new Map();
  const listed = new Set<string>();
  const referenced = new Set<string>();
  for (const entry of await listBasebackups([store])) {
    if (!DELTA_FORMATS.has(entry.metadata.format ?? "")) continue;
    const cacheKey = `${entry.name}@${entry.lastModified.getTime()}`;
    listed.add(cacheKey);
    let hexdigests = cache.get(cacheKey);
    if (!hexdigests) {
      const control = await readControlMetadata(store.storage, entry.name, entry.metadata, opts.keys);
      hexdigests = deltaReferences(control).hexdigests;
      cache.set(cacheKey, hexdigests);
    }
    for (const h of hexdigests) referenced.add(h);
  }
  for (const key of cache.keys()) if (!listed.has(key)) cache.delete(key);
  return candidates.filter((obj) => !referenced.has(path.posix.basename(obj.name)));
}

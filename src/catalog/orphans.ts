/**
 * Chunks no backup owns: a chunked backup uploads its chunks (`basebackup_chunk/NAME/…`,
 * `basebackup_delta_chunk/NAME/…`) before its control object `basebackup/NAME.00000000.pghoard`
 * (storage-layout.md §2), so a backup interrupted in between leaves a chunk directory whose NAME
 * has no `basebackup/` entry.
 */
import path from "node:path";
import { StorageNotFoundError, type StoredObject } from "../storage/types.js";
import { listBasebackups, type SiteStore } from "./catalogue.js";
import { backupNameOf, objectKey, type ChunkDirectory } from "./keys.js";

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

/**
 * Storage factory: `object_storage.storage_type` → backend. Each backend module is imported only
 * when asked for, so light commands (archive client, local restore) never load cloud SDKs.
 */
import { fileURLToPath } from "node:url";

import { StorageError, type StorageBackend } from "./types.js";

export { StorageError, StorageNotFoundError } from "./types.js";
export type { ListOptions, Metadata, StorageBackend, StoredObject } from "./types.js";

export interface ObjectStorageConfig {
  storage_type: string;
  [key: string]: unknown;
}

/** Every backend module exports this. */
interface BackendModule {
  createBackend(config: ObjectStorageConfig): StorageBackend | Promise<StorageBackend>;
}

export const STORAGE_TYPES = ["local", "s3", "google", "azure", "swift", "sftp"] as const;
export type StorageType = (typeof STORAGE_TYPES)[number];

export function isStorageType(value: string): value is StorageType {
  return (STORAGE_TYPES as readonly string[]).includes(value);
}

async function loadBackendModule(type: StorageType): Promise<BackendModule> {
  const file = `${type}.js`;
  // A computed specifier keeps tsc from resolving (and bundlers from eagerly loading) every backend.
  const specifier = `./${file}`;
  try {
    return (await import(specifier)) as BackendModule;
  } catch (err) {
    const rec = err as { code?: unknown; url?: unknown; message?: unknown };
    // Absent is this backend's own module, not a module it imports (then its SDK is what is missing).
    const own = new URL(specifier, import.meta.url);
    const missing =
      rec.code === "ERR_MODULE_NOT_FOUND" &&
      (rec.url === own.href || String(rec.message).includes(`'${fileURLToPath(own)}'`));
    if (missing) throw new StorageError(`storage type '${type}' is not available in this build`);
    // e.g. the backend's SDK failed to load: say which backend, keep the cause.
    throw new StorageError(`storage type '${type}' could not be loaded: ${String(rec.message ?? err)}`, { cause: err });
  }
}

export async function createStorage(config: ObjectStorageConfig): Promise<StorageBackend> {
  const type = config.storage_type;
  if (typeof type !== "string" || !isStorageType(type)) {
    throw new StorageError(`unsupported storage type '${String(type)}'`);
  }
  const module = await loadBackendModule(type);
  if (typeof module.createBackend !== "function") {
    throw new StorageError(`storage type '${type}' is not available in this build`);
  }
  const backend = await module.createBackend(config);
  if (config.statsd_info == null && config.notifier == null) return backend;
  const { observeStorage } = await import("./observed.js");
  try {
    return observeStorage(backend, config);
  } catch (err) {
    await backend.close().catch(() => undefined);
    throw err;
  }
}

/**
 * The stored-backup contract (storage-layout.md): object keys, object metadata, the control
 * object and delta manifest, and the backup catalogue. Sits above storage/, fileformat/,
 * config/ and wal/, below basebackup/, restore/, daemon/ and commands/.
 */
export * from "./keys.js";
export * from "./metadata.js";
export * from "./control.js";
export * from "./catalogue.js";
export * from "./sites.js";

/**
 * Metric names (operations.md §10.2) plus the per-site health metrics upstream lacks.
 * Callers use these constants so a typo cannot create a new series silently.
 */
export const MetricNames = {
  // Basebackups
  BASEBACKUP_REQUESTED: "pghoard.backup_stream.basebackup_requested",
  BASEBACKUP_COMPLETED: "pghoard.basebackup_completed",
  BASEBACKUP_FAILED: "pghoard.basebackup_failed",
  BACKUP_TIME: "pghoard.backup_time",
  BASEBACKUP_BYTES_UPLOADED: "pghoard.basebackup_bytes_uploaded",
  BASEBACKUP_ESTIMATED_PROGRESS: "pghoard.basebackup_estimated_progress",
  COMPRESSED_SIZE_RATIO: "pghoard.compressed_size_ratio",
  // Delta backups
  DELTA_BACKUP_TOTAL_SIZE: "pghoard.delta_backup_total_size",
  DELTA_BACKUP_UPLOAD_SIZE: "pghoard.delta_backup_upload_size",
  DELTA_BACKUP_TOTAL_FILES: "pghoard.delta_backup_total_files",
  DELTA_BACKUP_UPLOAD_FILES: "pghoard.delta_backup_upload_files",
  DELTA_BACKUP_CHANGED_DATA_FILES_RATIO: "pghoard.delta_backup_changed_data_files_ratio",
  DELTA_BACKUP_CHANGED_DATA_SIZE_RATIO: "pghoard.delta_backup_changed_data_size_ratio",
  DELTA_BACKUP_REMAINED_DATA_SIZE: "pghoard.delta_backup_remained_data_size",
  PLANNED_DELTA_BACKUP_CHANGED_DATA_FILES_RATIO: "pghoard.planned_delta_backup_changed_data_files_ratio",
  PLANNED_DELTA_BACKUP_CHANGED_DATA_SIZE_RATIO: "pghoard.planned_delta_backup_changed_data_size_ratio",
  PLANNED_DELTA_BACKUP_REMAINED_DATA_SIZE_RAW: "pghoard.planned_delta_backup_remained_data_size_raw",
  PLANNED_DELTA_BACKUP_TOTAL_SIZE: "pghoard.planned_delta_backup_total_size",
  PLANNED_DELTA_BACKUP_UPLOAD_SIZE: "pghoard.planned_delta_backup_upload_size",
  PLANNED_DELTA_BACKUP_TOTAL_FILES: "pghoard.planned_delta_backup_total_files",
  PLANNED_DELTA_BACKUP_UPLOAD_FILES: "pghoard.planned_delta_backup_upload_files",
  // Progress, daemon health
  SECONDS_SINCE_BACKUP_PROGRESS_STALLED: "pghoard.seconds_since_backup_progress_stalled",
  INCOMPLETE_PARTIAL_WAL_SEGMENT: "pghoard.incomplete_partial_wal_segment",
  UNRECOVERABLE_QUIT_MAIN_LOOP_FAILURE: "pghoard.unrecoverable_quit_main_loop_failure",
  // Transfers
  LAST_UPLOAD_AGE: "pghoard.last_upload_age",
  XLOGS_SINCE_BASEBACKUP: "pghoard.xlogs_since_basebackup",
  TOTAL_UPLOAD_SIZE: "pghoard.total_upload_size",
  UPLOAD_SIZE: "pghoard.upload_size",
  DOWNLOAD_SIZE: "pghoard.download_size",
  TRANSFER_OPERATION_ERRORS: "pghoard.transfer_operation_errors",
  EXCEPTION: "pghoard.exception",
  // Per-site health, not in upstream (SiteHealth emits them)
  SECONDS_SINCE_LAST_WAL_UPLOAD: "pghoard.seconds_since_last_wal_upload",
  SECONDS_SINCE_LAST_BASEBACKUP: "pghoard.seconds_since_last_basebackup",
  OLDEST_RESTORABLE_POINT: "pghoard.oldest_restorable_point",
  OLDEST_RESTORABLE_POINT_AGE: "pghoard.oldest_restorable_point_age",
  WAL_ARCHIVE_LAG_BYTES: "pghoard.wal_archive_lag_bytes",
  // Scheduled restore drills, not in upstream (1/0, seconds of the last drill, segments it replayed)
  RESTORE_DRILL_SUCCESS: "pghoard.restore_drill_success",
  RESTORE_DRILL_SECONDS: "pghoard.restore_drill_seconds",
  RESTORE_DRILL_DOWNLOAD_SECONDS: "pghoard.restore_drill_download_seconds",
  RESTORE_DRILL_WAL_REPLAY_SECONDS: "pghoard.restore_drill_wal_replay_seconds",
  RESTORE_DRILL_WAL_SEGMENTS: "pghoard.restore_drill_wal_segments",
  RESTORE_DRILL_LAST_RUN: "pghoard.restore_drill_last_run",
} as const;

export type MetricName = (typeof MetricNames)[keyof typeof MetricNames];

/** Values of the `where` tag of `pghoard.exception` (operations.md §10.2). */
export const ExceptionWhere = {
  PG_BASE_BACKUP: "PGBaseBackup",
  CHECK_PG_SERVER_VERSION: "check_pg_server_version",
  COMPRESSOR_RUN: "compressor_run",
  COMPRESSOR_RUN_CRITICAL: "compressor_run_critical",
  DELETE_REMOTE_BASEBACKUP: "delete_remote_basebackup",
  DELETE_REMOTE_WAL_BEFORE: "delete_remote_wal_before",
  HANDLE_DOWNLOAD: "handle_download",
  HANDLE_LIST: "handle_list",
  HANDLE_METADATA: "handle_metadata",
  HANDLE_UPLOAD: "handle_upload",
  HANDLE_UPLOAD_UNLINK: "handle_upload_unlink",
  PGHOARD_RUN: "pghoard_run",
  READ_PERSISTED_PROGRESS: "read_persisted_progress",
  WRITE_PERSISTED_PROGRESS: "write_persisted_progress",
  WAL_FILE_DELETER_DELETE_UNNEEDED_FILES: "wal_file_deleter_delete_unneeded_files",
  WAL_FILE_DELETER_RUN: "wal_file_deleter_run",
  WALRECEIVER_RUN: "walreceiver_run",
} as const;

/** Values of the `type` tag on transfer metrics and `compressed_size_ratio`. */
export type FileTypeTag =
  "xlog" | "timeline" | "basebackup" | "basebackup_chunk" | "basebackup_delta" | "basebackup_delta_chunk";

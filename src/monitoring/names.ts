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
  DISK_FULL: "pghoard.disk_full",
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
  SITE_SERVER_REACHABLE: "pghoard.site_server_reachable",
  SITE_SERVER_PROBE_FAILURES: "pghoard.site_server_probe_failures",
  // Scheduled restore drills, not in upstream (1/0, seconds of the last drill, segments it replayed)
  RESTORE_DRILL_SUCCESS: "pghoard.restore_drill_success",
  RESTORE_DRILL_SECONDS: "pghoard.restore_drill_seconds",
  RESTORE_DRILL_DOWNLOAD_SECONDS: "pghoard.restore_drill_download_seconds",
  RESTORE_DRILL_WAL_REPLAY_SECONDS: "pghoard.restore_drill_wal_replay_seconds",
  RESTORE_DRILL_WAL_SEGMENTS: "pghoard.restore_drill_wal_segments",
  RESTORE_DRILL_LAST_RUN: "pghoard.restore_drill_last_run",
} as const;

export type MetricName = (typeof MetricNames)[keyof typeof MetricNames];

/** What each metric measures: Prometheus' HELP line (and a reference for statsd users). */
export const METRIC_HELP: Record<MetricName, string> = {
  "pghoard.backup_stream.basebackup_requested": "Basebackups requested (PUT /<site>/basebackup or archive_sync)",
  "pghoard.basebackup_completed": "Basebackups completed",
  "pghoard.basebackup_failed": "Basebackups that failed",
  "pghoard.backup_time": "Seconds the last basebackup took",
  "pghoard.basebackup_bytes_uploaded": "Bytes of the running basebackup uploaded so far",
  "pghoard.basebackup_estimated_progress": "Estimated progress of the running basebackup, in percent",
  "pghoard.compressed_size_ratio": "Stored size divided by original size of the last compressed file, by type",
  "pghoard.delta_backup_total_size": "Bytes of the files of the last delta basebackup",
  "pghoard.delta_backup_upload_size": "Bytes the last delta basebackup uploaded",
  "pghoard.delta_backup_total_files": "Files in the last delta basebackup",
  "pghoard.delta_backup_upload_files": "Files the last delta basebackup uploaded",
  "pghoard.delta_backup_changed_data_files_ratio": "Share of data files the last delta basebackup found changed",
  "pghoard.delta_backup_changed_data_size_ratio": "Share of data bytes the last delta basebackup found changed",
  "pghoard.delta_backup_remained_data_size": "Bytes of the last delta basebackup already in storage",
  "pghoard.planned_delta_backup_changed_data_files_ratio": "Planned share of changed data files (delta stats)",
  "pghoard.planned_delta_backup_changed_data_size_ratio": "Planned share of changed data bytes (delta stats)",
  "pghoard.planned_delta_backup_remained_data_size_raw": "Planned bytes already in storage (delta stats)",
  "pghoard.planned_delta_backup_total_size": "Planned total bytes of a delta backup (delta stats)",
  "pghoard.planned_delta_backup_upload_size": "Planned bytes to upload for a delta backup (delta stats)",
  "pghoard.planned_delta_backup_total_files": "Planned files of a delta backup (delta stats)",
  "pghoard.planned_delta_backup_upload_files": "Planned files to upload for a delta backup (delta stats)",
  "pghoard.seconds_since_backup_progress_stalled": "Seconds the running basebackup has made no progress",
  "pghoard.incomplete_partial_wal_segment": "Partial WAL segments found incomplete",
  "pghoard.disk_full": "Times compression into the spool found the disk full (it waits for space)",
  "pghoard.unrecoverable_quit_main_loop_failure": "Times the daemon quit its main loop on an unrecoverable failure",
  "pghoard.last_upload_age": "Seconds since the last successful upload, by type",
  "pghoard.xlogs_since_basebackup": "WAL segments archived since the last basebackup",
  "pghoard.total_upload_size": "Bytes uploaded in total, by type",
  "pghoard.upload_size": "Bytes of the last upload, by type",
  "pghoard.download_size": "Bytes of the last download, by type",
  "pghoard.transfer_operation_errors": "Failures of the basebackup progress tracking",
  "pghoard.exception": "Errors caught, by where they happened (the where tag)",
  "pghoard.seconds_since_last_wal_upload": "Seconds since a WAL segment of the site was last stored",
  "pghoard.seconds_since_last_basebackup": "Seconds since the site's newest basebackup started",
  "pghoard.oldest_restorable_point": "Unix time of the oldest point the site can be restored to",
  "pghoard.oldest_restorable_point_age": "Seconds since the oldest point the site can be restored to",
  "pghoard.wal_archive_lag_bytes": "Bytes of WAL the server wrote that are not archived yet",
  "pghoard.site_server_reachable":
    "1 when the last probe of the site's server (a replication connection) succeeded, 0 when it failed or none succeeded yet",
  "pghoard.site_server_probe_failures": "Failed probes of the site's server (replication connection), by site",
  "pghoard.restore_drill_success": "1 when the site's last restore drill recovered and checked out, else 0",
  "pghoard.restore_drill_seconds": "Seconds the last restore drill took in all (the measured recovery time)",
  "pghoard.restore_drill_download_seconds": "Seconds the last restore drill spent downloading and extracting",
  "pghoard.restore_drill_wal_replay_seconds": "Seconds the last restore drill spent replaying WAL",
  "pghoard.restore_drill_wal_segments": "WAL segments the last restore drill replayed",
  "pghoard.restore_drill_last_run": "Unix time the last restore drill finished",
};

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

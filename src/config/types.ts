/**
 * Resolved configuration as the rest of the program sees it: the operator's pghoard.json with
 * upstream's defaults filled in. Key names stay snake_case, exactly as in the file, so that
 * `config.backup_sites[site].basebackup_mode` reads like upstream's code. Unknown keys are kept
 * (upstream keeps them too), hence the index signatures.
 */

export type Tool = "daemon" | "restore" | "archive_sync" | "archive_cleanup" | "create_keys" | "postgres_command";

export type CompressionAlgorithm = "snappy" | "zstd" | "lzma";
export type BasebackupMode = "basic" | "pipe" | "local-tar" | "local-tar-delta-stats" | "delta";
/** Upstream tolerates other strings (no WAL archiving is started), so the type stays open. */
export type ActiveBackupMode =
  "pg_receivexlog" | "walreceiver" | "archive_command" | "standalone_hot_backup" | (string & {});
export type StorageType = "local" | "s3" | "google" | "azure" | "swift" | "sftp";

/** Metric tags: upstream passes them through as given. */
export type Tags = Record<string, string | number | boolean>;

export interface StatsdConfig {
  host: string;
  port: number;
  format: "telegraf" | "datadog";
  tags: Tags;
  [key: string]: unknown;
}

export interface PushgatewayConfig {
  endpoint: string;
  job: string;
  /** Absent: the metric's `site` tag, else the hostname (decided by the sender). */
  instance?: string;
  tags: Tags;
  [key: string]: unknown;
}

export interface PrometheusConfig {
  tags: Tags;
  [key: string]: unknown;
}

export interface CompressionConfig {
  algorithm: CompressionAlgorithm;
  level: number;
  thread_count: number;
  [key: string]: unknown;
}

export interface TransferConfig {
  thread_count: number;
  [key: string]: unknown;
}

export interface ProxyInfo {
  type: "socks5" | "http";
  host: string;
  port: number;
  user?: string;
  pass?: string;
}

interface StorageCommon {
  prefix?: string;
  statsd_info?: Record<string, unknown>;
  notifier?: { notifier_type: string; url?: string; [key: string]: unknown };
  [key: string]: unknown;
}

export interface LocalStorageConfig extends StorageCommon {
  storage_type: "local";
  directory: string;
}

export interface S3StorageConfig extends StorageCommon {
  storage_type: "s3";
  region: string;
  bucket_name: string;
  aws_access_key_id?: string;
  aws_secret_access_key?: string;
  aws_session_token?: string;
  host?: string;
  port?: number | string;
  is_secure: boolean;
  is_verify_tls: boolean;
  cert_path?: string;
  addressing_style: "auto" | "path" | "virtual";
  encrypted: boolean;
  /** Absent: memory based default, computed by the S3 backend. */
  segment_size?: number;
  min_multipart_chunk_size?: number;
  connect_timeout?: number;
  read_timeout?: number;
  use_dualstack_endpoint: boolean;
  user_agent_extra?: string;
  proxy_info?: ProxyInfo;
}

export interface GoogleStorageConfig extends StorageCommon {
  storage_type: "google";
  project_id?: string;
  bucket_name?: string;
  credential_file?: string;
  credentials?: Record<string, unknown>;
  proxy_info?: ProxyInfo;
}

export interface AzureStorageConfig extends StorageCommon {
  storage_type: "azure";
  account_name: string;
  account_key?: string;
  sas_token?: string;
  bucket_name: string;
  azure_cloud: "public" | "germany" | "china" | null;
  host?: string;
  port?: number | string;
  is_secure: boolean;
  proxy_info?: ProxyInfo;
}

export interface SwiftStorageConfig extends StorageCommon {
  storage_type: "swift";
  user: string;
  key: string;
  auth_url: string;
  container_name: string;
  auth_version: "1.0" | "2.0" | "3.0";
  tenant_name?: string;
  region_name?: string;
  segment_size: number;
  user_id?: string;
  user_domain_id?: string;
  user_domain_name?: string;
  tenant_id?: string;
  project_id?: string;
  project_name?: string;
  project_domain_id?: string;
  project_domain_name?: string;
  service_type?: string;
  endpoint_type?: string;
}

export interface SftpStorageConfig extends StorageCommon {
  storage_type: "sftp";
  server: string;
  port: number;
  username: string;
  password?: string;
  private_key?: string;
}

export type ObjectStorageConfig =
  | LocalStorageConfig
  | S3StorageConfig
  | GoogleStorageConfig
  | AzureStorageConfig
  | SwiftStorageConfig
  | SftpStorageConfig;

/** One `nodes[]` entry normalized to libpq keywords (+ optional `slot`), whatever form it had in the file. */
export type NodeConfig = Record<string, string | number | boolean>;

export interface EncryptionKey {
  public?: string;
  private?: string;
  [key: string]: unknown;
}

export interface PgReceivexlogConfig {
  disk_space_check_interval: number;
  min_disk_free_bytes: number | null;
  resume_multiplier: number;
  [key: string]: unknown;
}

export interface SiteConfig {
  active: boolean;
  active_backup_mode: ActiveBackupMode;
  /** Empty when the file has none (upstream's main loop then fails for active sites). */
  nodes: NodeConfig[];
  pg_data_directory?: string;
  pg_bin_directory?: string;
  prefix: string;
  /** Always set: a `null` in the file becomes a `local` store rooted at `backup_location`. */
  object_storage: ObjectStorageConfig;
  encryption_key_id: string | null;
  encryption_keys: Record<string, EncryptionKey>;
  basebackup_mode: BasebackupMode;
  basebackup_fast_checkpoint: boolean;
  basebackup_end_segment_timeout: number;
  archive_work_ahead: boolean;
  basebackup_interval_hours: number | null;
  basebackup_hour?: number;
  basebackup_minute?: number;
  basebackup_count: number | null;
  basebackup_count_min: number;
  basebackup_age_days_max?: number | null;
  basebackup_chunk_size: number;
  basebackup_chunks_in_progress: number;
  basebackup_threads: number;
  basebackup_compression_threads: number;
  basebackup_delta_mode_max_retries: number;
  basebackup_delta_mode_min_delta_file_size: number;
  basebackup_delta_mode_chunk_size: number;
  restore_drill_interval_hours: number | null;
  pg_receivexlog: PgReceivexlogConfig;
  moved_from: string[];
  pg_version?: number;
  stream_compression?: boolean;
  /** Derived: content of `$PGDATA/PG_VERSION` (e.g. "15", "9.6"), read by loadConfig when available. */
  pg_data_directory_version?: string;
  /** Deprecated explicit binary paths (site value, else the top-level one). */
  pg_basebackup_path?: string;
  pg_receivexlog_path?: string;
  [key: string]: unknown;
}

export interface PghoardConfig {
  backup_location: string | null;
  backup_sites: Record<string, SiteConfig>;
  alert_file_dir: string;
  json_state_file_path: string;
  maintenance_mode_file: string;
  http_address: string;
  http_port: number;
  webserver_username: string | null;
  webserver_password: string | null;
  log_level: string;
  syslog: boolean;
  syslog_address: string;
  syslog_facility: string;
  compression: CompressionConfig;
  transfer: TransferConfig;
  upload_retries_warning_limit: number;
  restore_prefetch: number;
  restore_process_count: number;
  tar_executable: string;
  hash_algorithm: string;
  graceful_shutdown_compression_timeout: number | null;
  graceful_shutdown_upload_timeout: number | null;
  deleter_event_get_timeout: number;
  statsd?: StatsdConfig;
  pushgateway?: PushgatewayConfig;
  prometheus?: PrometheusConfig;
  path_prefix: string;
  pg_basebackup_path?: string;
  pg_receivexlog_path?: string;
  [key: string]: unknown;
}

/**
 * The one declarative description of pghoard.json. validate.ts walks it to check types and fill in
 * defaults; reference.ts renders it into the README's configuration reference. Anything a key
 * needs beyond what fits here (node entries, object_storage dispatch, cross-key checks) lives in
 * validate.ts, with its documentation in the `notes` of the section it belongs to.
 */
import type { Tool } from "./types.js";

export type ValueType = "string" | "integer" | "number" | "boolean" | "object" | "array" | "null";

export interface DefaultContext {
  cpuCount: number;
  cwd: string;
  /** The enclosing object as resolved so far (keys are resolved in schema order). */
  current: Record<string, unknown>;
  /** The resolved top level so far. */
  root: Record<string, unknown>;
  /** Set while resolving a site (or anything below one). */
  siteName?: string;
}

export type DefaultSpec = { value: unknown } | { doc: string; compute: (ctx: DefaultContext) => unknown };

/**
 * What a wrong type or value does:
 * - "error": ConfigError (upstream fails too, at load or as soon as the value is used);
 * - "writer": ConfigError for the daemon (and when no tool is named), a warning for the other tools,
 *   which never use the value;
 * - "warn": a warning; booleans are read with Python truthiness, object-only keys are dropped,
 *   anything else is kept as upstream keeps it;
 * - "default": a warning, and the default is used instead.
 */
export type InvalidPolicy = "error" | "writer" | "warn" | "default";

export interface KeySpec {
  key: string;
  types: readonly ValueType[];
  /** Absent: the key stays absent when the file does not set it. */
  default?: DefaultSpec;
  description: string;
  allowed?: readonly (string | null)[];
  min?: number;
  /** Why values below `min` are refused; appended to the error message. */
  minReason?: string;
  max?: number;
  /** Element type of an array. */
  elements?: ValueType;
  /** Element type of an object used as a map (tags, encryption_keys). */
  values?: readonly ValueType[];
  onInvalid?: InvalidPolicy;
  /** When and how the key is required; enforcement is in validate.ts. */
  required?: string;
  /** Kept and honoured, but no longer documented upstream. */
  deprecated?: string;
  /** true: the value is a secret; "contains": it may hold secrets (node entries with passwords). */
  secret?: boolean | "contains";
  /** Nested object with its own keys (applied with defaults even when the object is absent, if it has a default). */
  section?: SectionSpec;
}

/** A name upstream documents (or documented) but never reads: an unknown key, with a hint. */
export interface IgnoredName {
  name: string;
  hint: string;
}

export interface SectionSpec {
  id: string;
  title: string;
  /** Key path of the object, e.g. `backup_sites.<site>.pg_receivexlog`. */
  path: string;
  intro?: string;
  keys: readonly KeySpec[];
  /** Keys upstream writes itself (derived values); accepted without a warning. */
  derived?: readonly string[];
  ignored?: readonly IgnoredName[];
  /** rohmu reads these objects through pydantic models, which convert "true", "9000", 5 → str, ... */
  pydanticCoercion?: boolean;
  notes?: readonly string[];
}

/** Python's `os.path.join(a, b)`: an absolute `b` wins, no normalization. */
export function pythonPathJoin(a: string, b: string): string {
  if (b.startsWith("/") || a === "") return b;
  return a.endsWith("/") ? a + b : `${a}/${b}`;
}

const tags: KeySpec = {
  key: "tags",
  types: ["object"],
  values: ["string", "integer", "number", "boolean", "null"],
  default: { value: {} },
  description: "Tags added to every metric.",
};

export const compressionSection: SectionSpec = {
  id: "compression",
  title: "compression",
  path: "compression",
  keys: [
    {
      key: "algorithm",
      types: ["string"],
      allowed: ["snappy", "zstd", "lzma"],
      // Upstream falls back to lzma only when python-snappy is missing; snappy is a hard dependency here.
      default: { value: "snappy" },
      onInvalid: "writer",
      description: "Algorithm for every file written (WAL, basebackups). `lzma` means the xz container.",
    },
    {
      key: "level",
      types: ["integer"],
      default: { value: 0 },
      onInvalid: "writer",
      description: "xz preset 0–9 for lzma; zstd level (0 = zstd's default 3); ignored for snappy.",
    },
    {
      key: "thread_count",
      types: ["integer"],
      min: 0,
      default: { doc: "CPU count + 1", compute: (ctx) => ctx.cpuCount + 1 },
      description: "Compressor workers. 0 means nothing gets compressed.",
    },
  ],
};

export const transferSection: SectionSpec = {
  id: "transfer",
  title: "transfer",
  path: "transfer",
  ignored: [
    { name: "upload_retries_warning_limit", hint: "upstream reads the top-level `upload_retries_warning_limit`" },
  ],
  keys: [
    {
      key: "thread_count",
      types: ["integer"],
      min: 0,
      default: { doc: "min(CPU count + 3, 20)", compute: (ctx) => Math.min(ctx.cpuCount + 3, 20) },
      description: "Upload/download workers.",
    },
  ],
};

export const statsdSection: SectionSpec = {
  id: "statsd",
  title: "statsd",
  path: "statsd",
  keys: [
    { key: "host", types: ["string"], default: { value: "127.0.0.1" }, description: "statsd host." },
    { key: "port", types: ["integer"], min: 0, max: 65535, default: { value: 8125 }, description: "statsd UDP port." },
    {
      key: "format",
      types: ["string"],
      allowed: ["telegraf", "datadog"],
      default: { value: "telegraf" },
      description: "Tag wire format.",
    },
    tags,
  ],
};

export const pushgatewaySection: SectionSpec = {
  id: "pushgateway",
  title: "pushgateway",
  path: "pushgateway",
  keys: [
    {
      key: "endpoint",
      types: ["string"],
      default: { value: "" },
      description: "Base URL of the Pushgateway; empty disables sending.",
    },
    { key: "job", types: ["string"], default: { value: "pghoard" }, description: "Job name in the push URL." },
    {
      key: "instance",
      types: ["string"],
      description: "Instance name in the push URL; unset: the metric's `site` tag, else the hostname.",
    },
    tags,
  ],
};

export const prometheusSection: SectionSpec = {
  id: "prometheus",
  title: "prometheus",
  path: "prometheus",
  keys: [tags],
};

export const topLevelSection: SectionSpec = {
  id: "top",
  title: "Top-level keys",
  path: "",
  ignored: [
    { name: "active", hint: "upstream reads only the site-level `backup_sites.<site>.active`" },
    { name: "stats", hint: "did you mean `statsd`? upstream ignores `stats`" },
    { name: "push_gateway", hint: "did you mean `pushgateway`? upstream ignores `push_gateway`" },
  ],
  keys: [
    {
      key: "backup_location",
      types: ["string", "null"],
      default: { value: null },
      required: "by the daemon",
      description:
        "Local spool directory (incoming/compressed files, per-site work directories); also the `local` store of sites whose `object_storage` is null.",
    },
    {
      key: "backup_sites",
      types: ["object"],
      default: { value: {} },
      description: "Site name → site configuration (see below).",
    },
    {
      key: "alert_file_dir",
      types: ["string"],
      default: {
        doc: "`backup_location` if set, else the working directory",
        compute: (ctx) => (ctx.current.backup_location as string | null) || ctx.cwd,
      },
      description: "Directory for alert files; must exist.",
    },
    {
      key: "json_state_file_path",
      types: ["string"],
      default: { value: "/var/lib/pghoard/pghoard_state.json" },
      description: "State file written every main-loop iteration; its directory must exist.",
    },
    {
      key: "maintenance_mode_file",
      types: ["string"],
      default: { value: "/var/lib/pghoard/maintenance_mode_file" },
      description: "While a file exists at this path no new basebackups are started.",
    },
    {
      key: "http_address",
      types: ["string"],
      default: { value: "127.0.0.1" },
      description: 'Bind address of the HTTP server; `""` = all IPv4 addresses, `::` = IPv6.',
    },
    {
      key: "http_port",
      types: ["integer"],
      min: 0,
      max: 65535,
      default: { value: 16000 },
      description: "HTTP port; also used by the generated `restore_command` and by `pghoard_archive_sync`.",
    },
    {
      key: "webserver_username",
      types: ["string", "null"],
      default: { value: null },
      description: "HTTP Basic auth user; auth is enforced only when both username and password are non-empty.",
    },
    {
      key: "webserver_password",
      types: ["string", "null"],
      default: { value: null },
      secret: true,
      description: "HTTP Basic auth password.",
    },
    {
      key: "log_level",
      types: ["string"],
      allowed: ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
      default: { value: "INFO" },
      onInvalid: "warn",
      description:
        "Python logging level name. `-D/--debug` sets DEBUG until the file is read. Unknown names are reported and ignored.",
    },
    {
      key: "syslog",
      types: ["boolean"],
      default: { value: false },
      onInvalid: "warn",
      description: "Also log to syslog (added once; not removed on reload).",
    },
    {
      key: "syslog_address",
      types: ["string"],
      default: { value: "/dev/log" },
      description: "Syslog unix datagram socket path, or `host:port` for UDP (extension).",
    },
    {
      key: "syslog_facility",
      types: ["string"],
      allowed: [
        "auth",
        "authpriv",
        "cron",
        "daemon",
        "ftp",
        "kern",
        "lpr",
        "mail",
        "news",
        "security",
        "syslog",
        "user",
        "uucp",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
      ],
      default: { value: "local2" },
      onInvalid: "warn",
      description: "Syslog facility name.",
    },
    {
      key: "compression",
      types: ["object"],
      default: { value: {} },
      section: compressionSection,
      description: "Compression settings.",
    },
    {
      key: "transfer",
      types: ["object"],
      default: { value: {} },
      section: transferSection,
      description: "Transfer settings.",
    },
    {
      key: "upload_retries_warning_limit",
      types: ["integer"],
      default: { value: 3 },
      description:
        "After more upload retries than this the alert file `upload_retries_warning` is created. Top level, not under `transfer`.",
    },
    {
      key: "restore_prefetch",
      types: ["integer"],
      default: {
        doc: "`transfer.thread_count`",
        compute: (ctx) => (ctx.current.transfer as { thread_count: number }).thread_count,
      },
      description: "WAL segments to prefetch when serving `restore_command`; ≤ 0 disables prefetch.",
    },
    {
      key: "restore_process_count",
      types: ["integer"],
      min: 1,
      default: { doc: "min(CPU count + 1, 20)", compute: (ctx) => Math.min(ctx.cpuCount + 1, 20) },
      description: "Parallel download/extract workers of `pghoard_restore get-basebackup`.",
    },
    {
      key: "tar_executable",
      types: ["string"],
      default: { value: "pghoard_gnutaremu" },
      description:
        "Accepted for compatibility and not used: `pghoard_restore` extracts tar streams in-process with its own checked tar reader (upstream runs this command, default its `pghoard_gnutaremu` emulator; see Differences from upstream).",
    },
    {
      key: "hash_algorithm",
      types: ["string"],
      allowed: [
        "sha1",
        "sha224",
        "sha256",
        "sha384",
        "sha512",
        "md5",
        "blake2b",
        "blake2s",
        "sha3_224",
        "sha3_256",
        "sha3_384",
        "sha3_512",
      ],
      default: { value: "sha1" },
      onInvalid: "writer",
      description: "Python hashlib name of the WAL `hash` metadata (digest of the uncompressed segment).",
    },
    {
      key: "graceful_shutdown_compression_timeout",
      types: ["number", "null"],
      default: { value: 180 },
      description: "Seconds to wait on SIGTERM for queued compressions; null = forever.",
    },
    {
      key: "graceful_shutdown_upload_timeout",
      types: ["number", "null"],
      default: { value: 300 },
      description: "Seconds to wait on SIGTERM for queued uploads; null = forever.",
    },
    {
      key: "deleter_event_get_timeout",
      types: ["number"],
      min: Number.MIN_VALUE,
      default: { value: 1.0 },
      onInvalid: "default",
      description: "Undocumented upstream: queue poll timeout (s) of the local WAL deleter; must be > 0.",
    },
    {
      key: "statsd",
      types: ["object"],
      section: statsdSection,
      onInvalid: "warn",
      description: "Enables the statsd client when present (ignored unless an object).",
    },
    {
      key: "pushgateway",
      types: ["object"],
      section: pushgatewaySection,
      onInvalid: "warn",
      description: "Enables Prometheus Pushgateway pushes when present (ignored unless an object).",
    },
    {
      key: "prometheus",
      types: ["object"],
      section: prometheusSection,
      onInvalid: "warn",
      description: "Enables the `/metrics` HTTP endpoint when present (ignored unless an object).",
    },
    {
      key: "path_prefix",
      types: ["string"],
      default: { value: "" },
      deprecated: "use the site `prefix`",
      description: "Joined in front of the site name to form the default site `prefix`.",
    },
    {
      key: "pg_basebackup_path",
      types: ["string"],
      deprecated: "use the site `pg_bin_directory`",
      description: "Global fallback for the site key of the same name.",
    },
    {
      key: "pg_receivexlog_path",
      types: ["string"],
      deprecated: "use the site `pg_bin_directory`",
      description: "Global fallback for the site key of the same name.",
    },
  ],
};

export const pgReceivexlogSection: SectionSpec = {
  id: "site.pg_receivexlog",
  title: "pg_receivexlog",
  path: "backup_sites.<site>.pg_receivexlog",
  intro: "Options of the `pg_receivexlog` mode (the name is kept for PostgreSQL ≥ 10's `pg_receivewal`).",
  keys: [
    {
      key: "disk_space_check_interval",
      types: ["number"],
      default: { value: 10.0 },
      description: "Seconds between free-space checks of the spool directory.",
    },
    {
      key: "min_disk_free_bytes",
      types: ["integer", "null"],
      default: { value: null },
      description: "Below this much free space `pg_receivewal` is paused (SIGSTOP); null disables the logic.",
    },
    {
      key: "resume_multiplier",
      types: ["number"],
      default: { value: 1.5 },
      description: "Resume (SIGCONT) once free space ≥ `min_disk_free_bytes` × this.",
    },
  ],
};

export const BASEBACKUP_MODES = ["basic", "pipe", "local-tar", "local-tar-delta-stats", "delta"] as const;
export const ACTIVE_BACKUP_MODES = [
  "pg_receivexlog",
  "walreceiver",
  "archive_command",
  "standalone_hot_backup",
] as const;
export const STORAGE_TYPES = ["local", "s3", "google", "azure", "swift", "sftp"] as const;

export const siteSection: SectionSpec = {
  id: "site",
  title: "Site keys",
  path: "backup_sites.<site>",
  derived: ["pg_data_directory_version", "pg_basebackup_version", "pg_receivexlog_version"],
  ignored: [
    { name: "basebackup_thread", hint: "did you mean `basebackup_threads`? upstream ignores `basebackup_thread`" },
    {
      name: "basebackup_max_age",
      hint: "did you mean `basebackup_age_days_max`? upstream ignores `basebackup_max_age`",
    },
  ],
  keys: [
    {
      key: "active",
      types: ["boolean"],
      default: { value: true },
      onInvalid: "warn",
      description:
        "Inactive sites archive no WAL, take no basebackups and delete nothing; they can still be restored from and served.",
    },
    {
      key: "active_backup_mode",
      types: ["string"],
      allowed: ACTIVE_BACKUP_MODES,
      default: { value: "pg_receivexlog" },
      onInvalid: "warn",
      description:
        "WAL archiving mode. `pg_receivexlog` also covers PostgreSQL ≥ 10's `pg_receivewal`. Other values: no WAL archiving (upstream raises no error).",
    },
    {
      key: "archive_work_ahead",
      types: ["boolean"],
      default: { value: true },
      description:
        "`archive_command` mode: the daemon compresses, encrypts and uploads the segments PostgreSQL marks ready (`pg_wal/archive_status/*.ready`) before archive_command asks for them, so the call only waits for a stored copy. `false` archives each file only when archive_command sends it (upstream's behaviour). Needs `pg_data_directory` readable by the daemon. Not in upstream pghoard.",
    },
    {
      key: "nodes",
      types: ["array"],
      secret: "contains",
      required: "for active sites (warning: upstream's main loop fails every iteration without it)",
      description: "PostgreSQL servers to back up from; see Node entries.",
    },
    {
      key: "pg_data_directory",
      types: ["string"],
      required: "by the daemon and `pghoard_archive_sync` for active sites; `PG_VERSION` in it must be readable",
      description: "`$PGDATA` of the cluster.",
    },
    {
      key: "pg_bin_directory",
      types: ["string"],
      description: "Directory holding `pg_basebackup` and `pg_receivewal`/`pg_receivexlog`.",
    },
    {
      key: "pg_basebackup_path",
      types: ["string"],
      deprecated: "use `pg_bin_directory`",
      description: "Explicit path of `pg_basebackup`; wins over the top-level key.",
    },
    {
      key: "pg_receivexlog_path",
      types: ["string"],
      deprecated: "use `pg_bin_directory`",
      description: "Explicit path of `pg_receivewal`/`pg_receivexlog`; wins over the top-level key.",
    },
    {
      key: "prefix",
      types: ["string"],
      default: {
        doc: "`path_prefix` joined with the site name (Python `os.path.join`)",
        compute: (ctx) => pythonPathJoin(ctx.root.path_prefix as string, ctx.siteName ?? ""),
      },
      description: "Site prefix of object keys and of the local spool.",
    },
    {
      key: "object_storage",
      types: ["object", "null"],
      default: { value: null },
      description: "Backup store (see object_storage); null = a `local` store rooted at `backup_location` (legacy).",
    },
    {
      key: "encryption_key_id",
      types: ["string", "null"],
      default: { value: null },
      description:
        "Key id new files are encrypted with; null = no encryption. Must name an `encryption_keys` entry with a `public` key.",
    },
    {
      key: "encryption_keys",
      types: ["object"],
      values: ["object"],
      default: { value: {} },
      secret: true,
      description:
        '`{"<key id>": {"public": PEM, "private": PEM}}`; `public` is needed to write, `private` to read. Keep old ids to read old backups.',
    },
    {
      key: "basebackup_mode",
      types: ["string"],
      allowed: BASEBACKUP_MODES,
      default: {
        doc: "`basic` (`pipe` if the legacy `stream_compression` is truthy)",
        compute: (ctx) => (ctx.current.stream_compression ? "pipe" : "basic"),
      },
      onInvalid: "writer",
      description: "How basebackups are taken.",
    },
    {
      key: "basebackup_fast_checkpoint",
      types: ["boolean"],
      default: { value: false },
      description:
        "`basic`/`pipe` modes: scheduled backups start with a fast checkpoint (`pg_basebackup --checkpoint=fast`) instead of PostgreSQL's spread one, which can take up to `checkpoint_timeout` × `checkpoint_completion_target`. Requested backups (`PUT /<site>/basebackup`) always use a fast one; `local-tar`/`delta` always do (as upstream). Not in upstream pghoard.",
    },
    {
      key: "basebackup_end_segment_timeout",
      types: ["number"],
      min: Number.MIN_VALUE,
      default: { value: 300 },
      description:
        "Seconds a `local-tar`/`delta` backup waits, after `pg_backup_stop`, for its end WAL segment (and a new timeline's history file) to be in storage before it writes its control object; the backup fails naming the segment when it is not there in time. Used in the streaming modes and in `archive_command` mode with `archive_mode` on (the server does not wait for its archive). Not in upstream pghoard.",
    },
    {
      key: "basebackup_interval_hours",
      types: ["number", "null"],
      default: { value: 24 },
      description: "Hours between scheduled basebackups (fractions allowed); null disables scheduled backups.",
    },
    {
      key: "basebackup_hour",
      types: ["integer"],
      min: 0,
      max: 23,
      description: "Anchor hour (UTC) of the schedule; only together with `basebackup_minute`.",
    },
    {
      key: "basebackup_minute",
      types: ["integer"],
      min: 0,
      max: 59,
      description: "Anchor minute (UTC) of the schedule.",
    },
    {
      key: "basebackup_count",
      types: ["integer", "null"],
      min: 1,
      minReason: "retention would delete every basebackup, the one just taken included",
      onInvalid: "writer",
      default: { value: 2 },
      description:
        "Maximum number of basebackups kept; null = unlimited. At least 1 (0 or less would make retention delete the backup just taken).",
    },
    {
      key: "basebackup_count_min",
      types: ["integer"],
      default: { value: 2 },
      description: "Minimum kept when deleting by age; age-based deletion runs only if this is > 0.",
    },
    {
      key: "basebackup_age_days_max",
      types: ["number", "null"],
      description: "Delete basebackups older than this many days; null/0 disables.",
    },
    {
      key: "basebackup_chunk_size",
      types: ["integer"],
      min: 1,
      default: { value: 2147483648 },
      description: "Target uncompressed size (bytes) of a `local-tar` chunk.",
    },
    {
      key: "basebackup_chunks_in_progress",
      types: ["integer"],
      min: 1,
      default: { value: 5 },
      description: "Maximum chunks on local disk at once (created, not yet uploaded).",
    },
    {
      key: "basebackup_threads",
      types: ["integer"],
      min: 1,
      default: { value: 1 },
      description: "Parallel tar/compress/encrypt workers for `local-tar` chunks and delta uploads.",
    },
    {
      key: "basebackup_compression_threads",
      types: ["integer"],
      min: 0,
      default: { value: 0 },
      description: "zstd internal threads for basebackup objects; 0 = single threaded.",
    },
    {
      key: "basebackup_delta_mode_max_retries",
      types: ["integer"],
      default: { value: 10 },
      description: "Consecutive failed `delta` backups before retrying stops until requested or an interval passed.",
    },
    {
      key: "basebackup_delta_mode_min_delta_file_size",
      types: ["integer"],
      min: 0,
      default: { value: 10485760 },
      description: "Files above 150 bytes and below this size are bundled into delta chunks; 0 disables bundling.",
    },
    {
      key: "basebackup_delta_mode_chunk_size",
      types: ["integer"],
      min: 1,
      default: { value: 524288000 },
      description: "Target size (bytes) of a delta bundle.",
    },
    {
      key: "restore_drill_interval_hours",
      types: ["number", "null"],
      default: { value: null },
      min: Number.MIN_VALUE,
      description:
        "Hours between scheduled restore drills (`pghoard_restore drill` run by the daemon at low priority; fractions allowed); null disables them. Not in upstream pghoard.",
    },
    {
      key: "pg_receivexlog",
      types: ["object"],
      default: { value: {} },
      section: pgReceivexlogSection,
      description: "Options of the `pg_receivexlog` mode.",
    },
    {
      key: "moved_from",
      types: ["array"],
      elements: "string",
      default: { value: [] },
      description:
        "Earlier sites whose backups and WAL belong to this cluster's history; each must be defined under `backup_sites`.",
    },
    {
      key: "pg_version",
      types: ["integer"],
      description: "Server version number override (e.g. 150004); the daemon also caches the queried version here.",
    },
    {
      key: "stream_compression",
      types: ["boolean"],
      onInvalid: "warn",
      deprecated: 'use `basebackup_mode: "pipe"`',
      description: "Legacy: a truthy value makes `pipe` the default `basebackup_mode`.",
    },
    {
      key: "pg_xlog_directory",
      types: ["string"],
      deprecated: "ignored since upstream 1.6.0; derived from `pg_data_directory` + `PG_VERSION`",
      description: "Ignored.",
    },
  ],
};

export const nodeSection: SectionSpec = {
  id: "node",
  title: "Node entries",
  path: "backup_sites.<site>.nodes[]",
  intro: "Each entry is one of:",
  notes: [
    "an object of libpq keywords (`host`, `port`, `user`, `password`, `dbname`, `sslmode`, …) plus an optional `slot`;",
    '`{"connection_string": "<libpq string or URI>", "slot": "<name>"}` (used as-is when it is the only key besides `slot`);',
    "a libpq `key=value` string (single-quoted values, backslash escapes);",
    "a `postgres://user:pass@host:port/dbname?param=value` (or `postgresql://`) URI.",
    "Replication connections force `dbname=replication` and add `replication=true`. A `password` is moved to `$HOME/.pgpass` (mode 0600) and removed from connection strings passed to child processes, which are rendered as `key='value'` pairs sorted by key. `slot` is the physical replication slot used by `pg_receivewal --slot` and the walreceiver.",
  ],
  keys: [],
};

const proxyInfoSection: SectionSpec = {
  id: "proxy_info",
  title: "proxy_info",
  path: "backup_sites.<site>.object_storage.proxy_info",
  pydanticCoercion: true,
  keys: [
    { key: "type", types: ["string"], allowed: ["socks5", "http"], required: "yes", description: "Proxy protocol." },
    { key: "host", types: ["string"], required: "yes", description: "Proxy host." },
    { key: "port", types: ["integer"], min: 0, max: 65535, required: "yes", description: "Proxy port." },
    { key: "user", types: ["string"], description: "Proxy user." },
    { key: "pass", types: ["string"], secret: true, description: "Proxy password." },
  ],
};

const proxyInfo: KeySpec = {
  key: "proxy_info",
  types: ["object"],
  section: proxyInfoSection,
  description: 'Proxy: `{"type": "socks5"|"http", "host", "port", "user"?, "pass"?}`.',
};

const storageStatsdSection: SectionSpec = {
  id: "statsd_info",
  title: "statsd_info",
  path: "backup_sites.<site>.object_storage.statsd_info",
  pydanticCoercion: true,
  keys: [
    { key: "host", types: ["string"], default: { value: "127.0.0.1" }, description: "statsd host." },
    { key: "port", types: ["integer"], min: 1, max: 65535, default: { value: 8125 }, description: "statsd UDP port." },
    {
      key: "message_format",
      types: ["string"],
      allowed: ["telegraf", "datadog"],
      default: { value: "telegraf" },
      description: "Tag syntax: telegraf `name,k=v:1|c` or datadog `name:1|c|#k:v`.",
    },
    { key: "tags", types: ["object"], default: { value: {} }, description: "Tags added to every metric." },
    {
      key: "operation_map",
      types: ["object"],
      default: { value: {} },
      description: "Renames `operation` tag values (e.g. `store_file`, `get_file`, `delete_key`).",
    },
  ],
};

const notifierSection: SectionSpec = {
  id: "notifier",
  title: "notifier",
  path: "backup_sites.<site>.object_storage.notifier",
  pydanticCoercion: true,
  keys: [
    {
      key: "notifier_type",
      types: ["string"],
      allowed: ["http"],
      required: "yes",
      description: "Only `http` (rohmu's `BackgroundHTTPNotifier`).",
    },
    { key: "url", types: ["string"], required: "yes", description: "Where each event is POSTed as JSON." },
  ],
};

export const storageCommonSection: SectionSpec = {
  id: "object_storage",
  title: "object_storage (all types)",
  path: "backup_sites.<site>.object_storage",
  pydanticCoercion: true,
  notes: ["Unknown keys inside `object_storage` are ignored (a warning is logged)."],
  keys: [
    {
      key: "storage_type",
      types: ["string"],
      allowed: STORAGE_TYPES,
      required: "yes",
      description: "Driver.",
    },
    { key: "prefix", types: ["string"], description: "Backend prefix in front of every object key." },
    {
      key: "statsd_info",
      types: ["object"],
      section: storageStatsdSection,
      description:
        "Driver-level statsd: counters `rohmu_operation_count` and `rohmu_operation_size` (tag `operation`) over UDP.",
    },
    {
      key: "notifier",
      types: ["object"],
      section: notifierSection,
      description:
        '`{"notifier_type": "http", "url": "..."}`: POST a JSON event per object created, copied or deleted (in the background, retried, dropped with a warning after 5 retries).',
    },
  ],
};

function storageSection(type: string, keys: KeySpec[], notes?: string[]): SectionSpec {
  return {
    id: `object_storage.${type}`,
    title: `object_storage: ${type}`,
    path: `backup_sites.<site>.object_storage`,
    pydanticCoercion: true,
    keys,
    ...(notes ? { notes } : {}),
  };
}

export const storageSections: Record<(typeof STORAGE_TYPES)[number], SectionSpec> = {
  local: storageSection("local", [
    {
      key: "directory",
      types: ["string"],
      required: "yes; must differ from `backup_location`",
      description: "Root directory; objects at `<directory>/<prefix>/<key>` with `.metadata` JSON sidecars.",
    },
  ]),
  s3: storageSection("s3", [
    {
      key: "region",
      types: ["string"],
      required: "yes",
      description: "AWS region (also for custom endpoints; empty selects SigV2 there).",
    },
    { key: "bucket_name", types: ["string"], required: "yes", description: "Bucket; created if it does not exist." },
    {
      key: "aws_access_key_id",
      types: ["string"],
      description: "Static credentials; absent: the AWS default credential chain.",
    },
    { key: "aws_secret_access_key", types: ["string"], secret: true, description: "Static credentials." },
    { key: "aws_session_token", types: ["string"], secret: true, description: "Temporary credentials." },
    { key: "host", types: ["string"], description: "Custom endpoint host; used only when `port` is set too." },
    { key: "port", types: ["integer"], min: 0, max: 65535, description: "Custom endpoint port." },
    { key: "is_secure", types: ["boolean"], default: { value: false }, description: "https for the custom endpoint." },
    {
      key: "is_verify_tls",
      types: ["boolean"],
      default: { value: false },
      description: "Verify TLS of the custom endpoint.",
    },
    { key: "cert_path", types: ["string"], description: "CA bundle; only with `is_verify_tls: true`." },
    {
      key: "addressing_style",
      types: ["string"],
      allowed: ["auto", "path", "virtual"],
      default: { value: "path" },
      description: "Bucket addressing for custom endpoints.",
    },
    {
      key: "encrypted",
      types: ["boolean"],
      default: { value: false },
      description: "Request server-side encryption (AES256).",
    },
    {
      key: "segment_size",
      types: ["integer"],
      min: 1,
      description: "Multipart part size; unset: clamp(MemTotal MiB / 400, 5, 524) MiB.",
    },
    { key: "min_multipart_chunk_size", types: ["integer"], min: 1, description: "Lower bound of the part size." },
    { key: "connect_timeout", types: ["number"], description: "Seconds." },
    { key: "read_timeout", types: ["number"], description: "Seconds." },
    { key: "use_dualstack_endpoint", types: ["boolean"], default: { value: true }, description: "AWS endpoints only." },
    { key: "user_agent_extra", types: ["string"], description: "Appended to the User-Agent." },
    proxyInfo,
  ]),
  google: storageSection(
    "google",
    [
      {
        key: "project_id",
        types: ["string"],
        description: "Project; at least one of `project_id`, `bucket_name` is required.",
      },
      { key: "bucket_name", types: ["string"], description: "Bucket; created if missing." },
      {
        key: "credential_file",
        types: ["string"],
        description: "JSON key file (`service_account` or `authorized_user`).",
      },
      {
        key: "credentials",
        types: ["object"],
        secret: true,
        description: "Inline credentials (`service_account`, `authorized_user` or `access_token` type).",
      },
      proxyInfo,
    ],
    ["Without `credential_file`/`credentials` the Google application-default credentials are used."],
  ),
  azure: storageSection("azure", [
    { key: "account_name", types: ["string"], required: "yes", description: "Storage account." },
    {
      key: "account_key",
      types: ["string"],
      secret: true,
      description: "One of `account_key`, `sas_token` is required.",
    },
    { key: "sas_token", types: ["string"], secret: true, description: "Shared access signature." },
    { key: "bucket_name", types: ["string"], required: "yes", description: "Container; created if missing." },
    {
      key: "azure_cloud",
      types: ["string", "null"],
      allowed: [null, "public", "germany", "china"],
      default: { value: null },
      description:
        "Endpoint suffix: public `core.windows.net`, germany `core.cloudapi.de`, china `core.chinacloudapi.cn`.",
    },
    { key: "host", types: ["string"], description: "Custom endpoint host (set together with `port`)." },
    { key: "port", types: ["integer"], min: 0, max: 65535, description: "Custom endpoint port." },
    { key: "is_secure", types: ["boolean"], default: { value: true }, description: "https vs http." },
    proxyInfo,
  ]),
  swift: storageSection("swift", [
    { key: "user", types: ["string"], required: "yes", description: "User (Ceph RadosGW: subuser)." },
    { key: "key", types: ["string"], required: "yes", secret: true, description: "Secret." },
    { key: "auth_url", types: ["string"], required: "yes", description: "Keystone / auth endpoint." },
    { key: "container_name", types: ["string"], required: "yes", description: "Container; created if missing." },
    {
      key: "auth_version",
      types: ["string"],
      allowed: ["1.0", "2.0", "3.0"],
      default: { value: "2.0" },
      description: "`1.0` (RadosGW tempauth), `2.0`, `3.0`.",
    },
    { key: "tenant_name", types: ["string"], description: "Tenant." },
    { key: "region_name", types: ["string"], description: "Region." },
    {
      key: "segment_size",
      types: ["integer"],
      min: 1,
      default: { value: 3221225472 },
      description: "Objects larger than this are uploaded as segments.",
    },
    ...[
      "user_id",
      "user_domain_id",
      "user_domain_name",
      "tenant_id",
      "project_id",
      "project_name",
      "project_domain_id",
      "project_domain_name",
      "service_type",
      "endpoint_type",
    ].map((key): KeySpec => ({
      key,
      types: ["string"],
      description: "Keystone v3 option (`auth_version` `3.0` only).",
    })),
  ]),
  sftp: storageSection("sftp", [
    { key: "server", types: ["string"], required: "yes", description: "Host." },
    { key: "port", types: ["integer"], min: 0, max: 65535, required: "yes", description: "Port." },
    { key: "username", types: ["string"], required: "yes", description: "User." },
    { key: "password", types: ["string"], secret: true, description: "One of `password`, `private_key` is required." },
    { key: "private_key", types: ["string"], description: "Path of an RSA private key file." },
  ]),
};

export function toolWrites(tool: Tool | undefined): boolean {
  return tool === undefined || tool === "daemon";
}

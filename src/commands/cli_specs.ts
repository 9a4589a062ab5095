/**
 * The command lines of the tools (cli.md), as data: the programs, `--help`, and later man pages and
 * bash completion are all built from these. Flags and their spellings are upstream's.
 * pghoard_postgres_command parses its own (it must start without commander).
 */
import {
  DEBUG_OPTION,
  VERSION_OPTION,
  configOption,
  type CommandSpec,
  type ExitCodeSpec,
  type OptionSpec,
} from "./cli.js";

const USAGE_EXIT: ExitCodeSpec = { code: 2, meaning: "usage error" };
const INTERRUPT_EXIT = "Ctrl-C";

export const PGHOARD_SPEC: CommandSpec = {
  name: "pghoard",
  description: "postgresql automatic backup daemon",
  options: [
    DEBUG_OPTION,
    VERSION_OPTION,
    { flags: "-s, --short-log", description: "use non-verbose logging format (LEVEL<TAB>message)" },
    configOption("configuration file path"),
  ],
  arguments: [
    {
      name: "config_file",
      description: "configuration file path (for backward compatibility; --config wins)",
      optional: true,
    },
  ],
  exitCodes: [
    { code: 0, meaning: "stopped by SIGTERM or SIGINT" },
    { code: 1, meaning: "no configuration path, the file does not exist or is invalid, or start-up failed" },
    USAGE_EXIT,
  ],
};

const JSON_OPTION = { flags: "--json", description: "print JSON instead of text" };
const VERBOSE_OPTION = { flags: "-v, --verbose", description: "verbose output" };
const RESTORE_EXITS: readonly ExitCodeSpec[] = [
  { code: 0, meaning: "success" },
  {
    code: 1,
    meaning: `restore or configuration error (FATAL: <Error>: <message> on stdout), ${INTERRUPT_EXIT}, or no sub-command`,
  },
  USAGE_EXIT,
];

/** The recovery targets get-basebackup writes and drill recovers to. */
const RECOVERY_TARGET_OPTIONS: readonly OptionSpec[] = [
  { flags: "--recovery-target-name <RESTOREPOINT>", description: "PostgreSQL recovery_target_name" },
  {
    flags: "--recovery-target-time <ISO_TIMESTAMP>",
    description: "PostgreSQL recovery_target_time (also selects the basebackup)",
  },
  { flags: "--recovery-target-xid <XID>", description: "PostgreSQL recovery_target_xid" },
  {
    flags: "--recovery-target-lsn <LSN>",
    description: "PostgreSQL recovery_target_lsn (not in upstream pghoard)",
  },
  {
    flags: "--recovery-target-immediate",
    description: "recovery_target = 'immediate': stop as soon as consistent (not in upstream pghoard)",
  },
];

/** Where the daemon's HTTP API is and how to log in (list-basebackups-http, request-basebackup). */
const DAEMON_HTTP_OPTIONS: readonly OptionSpec[] = [
  {
    flags: "--host <HOST>",
    description: "pghoard repository host (default: the config's http_address, else 127.0.0.1)",
  },
  {
    flags: "--port <PORT>",
    description: "pghoard repository port (default: the config's http_port, else 16000)",
    type: "port",
  },
  {
    flags: "--username <USERNAME>",
    description: "pghoard repository username (default: the config's webserver_username)",
  },
  {
    flags: "--password <PASSWORD>",
    description: "pghoard repository password (default: the config's webserver_password)",
  },
];

export const RESTORE_SPEC: CommandSpec = {
  name: "pghoard_restore",
  description: "List basebackups and restore one",
  options: [
    DEBUG_OPTION,
    { flags: "--status-output-file <FILE>", description: "Filename for status output JSON" },
    VERSION_OPTION,
  ],
  subcommands: [
    {
      name: "list-basebackups-http",
      description: "List available basebackups from a HTTP source",
      options: [
        VERBOSE_OPTION,
        ...DAEMON_HTTP_OPTIONS,
        { flags: "--site <SITE>", description: "pghoard site", required: true },
        configOption("pghoard config file: where the daemon listens and its credentials"),
      ],
      exitCodes: RESTORE_EXITS,
    },
    {
      name: "list-basebackups",
      description: "List basebackups from an object store",
      options: [
        VERBOSE_OPTION,
        { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
        configOption("pghoard config file", "unless-env"),
        JSON_OPTION,
      ],
      exitCodes: RESTORE_EXITS,
    },
    {
      name: "get-basebackup",
      description: "Download a basebackup from an object store",
      options: [
        { flags: "-v, --verbose", description: "verbose output (accepted, no effect)" },
        { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
        {
          flags: "--basebackup <NAME>",
          description: "pghoard basebackup (full name as listed, or 'latest')",
          default: "latest",
        },
        { flags: "--primary-conninfo <CONNINFO>", description: "replication.conf primary_conninfo", default: "" },
        { flags: "--target-dir <DIR>", description: "pghoard restore target 'pgdata' dir", required: true },
        { flags: "--overwrite", description: "overwrite existing target directory" },
        {
          flags: "--delta",
          description:
            "restore over an existing stopped data directory, rewriting only files that differ from the backup and removing the rest",
        },
        {
          flags: "--tablespace-dir <NAME=DIRECTORY>",
          description: "map the given tablespace to an existing empty directory",
          repeatable: true,
        },
        {
          flags: "--tablespace-base-dir <DIR>",
          description: "map all tablespaces in the backup below this existing base directory",
        },
        { flags: "--recovery-end-command <COMMAND>", description: "PostgreSQL recovery_end_command" },
        {
          flags: "--recovery-target-action <ACTION>",
          description: "PostgreSQL recovery_target_action",
          choices: ["pause", "promote", "shutdown"],
        },
        ...RECOVERY_TARGET_OPTIONS,
        {
          flags: "--restore-to-primary",
          description: "Restore the database to a PG primary (no standby; archive recovery via recovery.signal)",
        },
        { flags: "--restore-to-master", description: "Alias of --restore-to-primary, kept for compatibility" },
        {
          flags: "--preserve-until <ISO_TIMESTAMP>",
          description: "Request the backup to be preserved until this time before restoring",
        },
        {
          flags: "--cancel-preserve-on-success",
          description: "Cancel the preservation request after a successful restore (default)",
        },
        {
          flags: "--no-cancel-preserve-on-success",
          description: "Keep the preservation request after a successful restore",
        },
        {
          flags: "--pghoard-postgres-command-bin <PATH>",
          description:
            "program written into restore_command (default, absolute paths: the installed pghoard_postgres_command in daemon mode, its native front where built, else the bash client; node and the Node client pghoard_postgres_command.js in direct mode)",
        },
        {
          flags: "--restore-command-mode <MODE>",
          description:
            "restore_command fetches WAL 'direct'ly from the object storage with this config (default) or through the pghoard 'daemon' (upstream's)",
          choices: ["direct", "daemon"],
          default: "direct",
        },
        configOption("pghoard config file", "unless-env"),
      ],
      exitCodes: RESTORE_EXITS,
    },
    {
      name: "info",
      description:
        "Show basebackups, the WAL archive per timeline and the recoverable window (not in upstream pghoard)",
      options: [
        { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
        configOption("pghoard config file", "unless-env"),
        JSON_OPTION,
      ],
      exitCodes: RESTORE_EXITS,
    },
    {
      name: "verify",
      description: "Download and fully decode a backup and its WAL without restoring it (not in upstream pghoard)",
      options: [
        { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
        {
          flags: "--basebackup <NAME>",
          description: "basebackup to verify: full name as listed, 'latest' or 'all'",
          default: "latest",
        },
        configOption("pghoard config file", "unless-env"),
        JSON_OPTION,
      ],
      exitCodes: [
        { code: 0, meaning: "every object checks" },
        { code: 1, meaning: "a bad or missing object (each one named), a configuration error, or Ctrl-C" },
        USAGE_EXIT,
      ],
    },
    {
      name: "drill",
      description:
        "Restore a basebackup into a scratch directory, recover it with WAL from the archive, check it, remove it, and report the recovery time",
      options: [
        { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
        {
          flags: "--basebackup <NAME>",
          description: "pghoard basebackup (full name as listed, or 'latest')",
          default: "latest",
        },
        ...RECOVERY_TARGET_OPTIONS,
        {
          flags: "--scratch-dir <DIR>",
          description:
            "directory the scratch directory is created in (default: beside backup_location, else the system temp dir)",
        },
        {
          flags: "--timeout <SECONDS>",
          description: "give up after this many seconds (the drill fails and cleans up); 0: no limit",
          type: "int",
          default: 0,
        },
        { flags: "--json", description: "print the report as JSON" },
        {
          flags: "--pghoard-postgres-command-bin <PATH>",
          description:
            "program written into restore_command (default: node and the installed pghoard_postgres_command, absolute paths)",
        },
        configOption("pghoard config file", "unless-env"),
      ],
      exitCodes: [
        { code: 0, meaning: "the backup restored, recovered and passed the checks" },
        { code: 1, meaning: `the drill failed (the reason is reported), configuration error, or ${INTERRUPT_EXIT}` },
        USAGE_EXIT,
      ],
    },
    {
      name: "request-basebackup",
      description:
        "Ask the running daemon for a basebackup now (fast checkpoint) and optionally wait for it (not in upstream pghoard)",
      options: [
        ...DAEMON_HTTP_OPTIONS,
        { flags: "--site <SITE>", description: "pghoard site", required: true },
        {
          flags: "--wait",
          description: "print each phase and the progress until the backup is stored, and report its name",
        },
        {
          flags: "--timeout <SECONDS>",
          description: "with --wait: give up after this many seconds (the backup goes on); 0: no limit",
          type: "int",
          default: 0,
        },
        configOption("pghoard config file: where the daemon listens and its credentials"),
      ],
      exitCodes: [
        { code: 0, meaning: "requested (with --wait: the backup is stored; its name is printed)" },
        {
          code: 1,
          meaning: `the daemon refused or is unreachable, the backup failed or was not started (the reason is printed), --timeout, or ${INTERRUPT_EXIT}`,
        },
        USAGE_EXIT,
      ],
    },
  ],
  exitCodes: RESTORE_EXITS,
};

const CONFIG_AND_INTERRUPT = `no configuration path, invalid configuration (FATAL: … logged), or ${INTERRUPT_EXIT}`;

export const ARCHIVE_CLEANUP_SPEC: CommandSpec = {
  name: "pghoard_archive_cleanup",
  description: "Delete WAL segments in storage that no basebackup needs",
  options: [
    VERSION_OPTION,
    { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
    configOption("pghoard config file"),
    { flags: "--dry-run", description: "only list redundant segments and calculate total file size but do not delete" },
  ],
  exitCodes: [
    { code: 0, meaning: "done" },
    { code: 1, meaning: `no basebackups in storage, ${CONFIG_AND_INTERRUPT}` },
    USAGE_EXIT,
  ],
};

export const ARCHIVE_SYNC_SPEC: CommandSpec = {
  name: "pghoard_archive_sync",
  description: "Archive local WAL files missing from storage and verify the archive",
  options: [
    DEBUG_OPTION,
    VERSION_OPTION,
    { flags: "--site <SITE>", description: "pghoard site (needed when the configuration has several)" },
    configOption("pghoard config file"),
    {
      flags: "--max-hash-checks <N>",
      description:
        "Maximum number of files for which to validate hash in addition to basic existence check (negative: no limit)",
      type: "int",
      default: 100,
    },
    { flags: "--no-verify", description: "do not verify archive integrity" },
    { flags: "--create-new-backup-on-failure", description: "request a new basebackup if verification fails" },
  ],
  exitCodes: [
    { code: 0, meaning: "success (also when verification is skipped)" },
    { code: 1, meaning: `a gap in the archive, no basebackups, ${CONFIG_AND_INTERRUPT}` },
    USAGE_EXIT,
  ],
};

export const CREATE_KEYS_SPEC: CommandSpec = {
  name: "pghoard_create_keys",
  description: "Create an RSA key pair for pghoard backup encryption",
  options: [
    DEBUG_OPTION,
    VERSION_OPTION,
    {
      flags: "--site <SITE>",
      description: "backup site (required without --config; with it, only when it has several sites)",
    },
    {
      flags: "--key-id <KEY_ID>",
      description: "key alias as used with encryption_key_id configuration directive",
      required: true,
    },
    { flags: "--bits <BITS>", description: "length of the generated key in bits", type: "int", default: 3072 },
    configOption("configuration file to store the keys in (without it, the configuration snippet is printed)"),
  ],
  exitCodes: [
    { code: 0, meaning: "success" },
    {
      code: 1,
      meaning: "FATAL: <message> (site missing, key id already defined, unusable key size, bad configuration)",
    },
    USAGE_EXIT,
  ],
};

/** Every tool built from these definitions. */
export const COMMAND_SPECS: readonly CommandSpec[] = [
  PGHOARD_SPEC,
  RESTORE_SPEC,
  ARCHIVE_CLEANUP_SPEC,
  ARCHIVE_SYNC_SPEC,
  CREATE_KEYS_SPEC,
];

/**
 * pghoard_postgres_command's command line as data (cli.md §6), for its `--help`, its man page and
 * bash completion. The command parses its own arguments without commander (it starts once per WAL
 * segment), so this module imports nothing at run time; a test holds the parser to these options.
 */
import type { CommandSpec } from "./cli.js";

export const POSTGRES_COMMAND_SPEC: CommandSpec = {
  name: "pghoard_postgres_command",
  description:
    "PostgreSQL's archive_command and restore_command: hands a WAL or timeline history file to the pghoard " +
    "daemon (archive) or fetches one from it (restore)",
  options: [
    { flags: "--version", description: "show program's version number and exit", action: "version" },
    { flags: "--host <HOST>", description: "pghoard daemon address", default: "127.0.0.1" },
    { flags: "--port <PORT>", description: "pghoard daemon port", type: "int", default: 16000 },
    { flags: "--username <USERNAME>", description: "HTTP Basic user of the daemon (sent with --password)" },
    { flags: "--password <PASSWORD>", description: "HTTP Basic password of the daemon (sent with --username)" },
    {
      flags: "--config <CONFIG>",
      description: "restore mode: read the site's object storage directly with this configuration (no daemon needed)",
    },
    { flags: "--site <SITE>", description: "backup site (not needed with --mode cleanup)", required: true },
    { flags: "--xlog <XLOG>", description: "file name PostgreSQL asks for (%f)", required: true },
    {
      flags: "--output <OUTPUT>",
      description: "restore mode: where to write the file (%p, relative to $PGDATA); absent: existence check",
    },
    {
      flags: "--mode <MODE>",
      description:
        "archive_command, restore_command, or cleanup (as recovery_end_command: remove leftover " +
        "*.pghoard.prefetch files from pg_wal, or from the directory --output names)",
      choices: ["archive", "restore", "cleanup"],
      required: true,
    },
  ],
  exitCodes: [
    { code: 0, meaning: "archived, restored, exists, or a .backup label ignored" },
    { code: 1, meaning: "internal error" },
    { code: 2, meaning: "archive mode: unexpected error, e.g. the daemon is unreachable" },
    { code: 3, meaning: "archive mode: the daemon did not store the file" },
    { code: 4, meaning: "restore mode: the file is not in the archive" },
    { code: 5, meaning: "restore mode: any other failure; either mode: a command-line error" },
  ],
};

/**
 * Where the installed commands are, found from the running code: `bin/` sits next to `dist/`
 * in the checkout, in an npm install and under /usr/lib/pghoard in the .deb/.rpm, so the path
 * does not depend on PATH (PostgreSQL runs restore_command with its own, often minimal, PATH).
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** Absolute path of `bin/<command>.js` (this file is dist/src/common/install_paths.js). */
export function installedCommandPath(command: string): string {
  return fileURLToPath(new URL(`../../../bin/${command}.js`, import.meta.url));
}

/**
 * Absolute path of the client PostgreSQL should run: the native front
 * `dist/native/pghoard_postgres_command` where it was built (it makes the bash client's common
 * calls itself and hands every other one to the bash client), else the bash client
 * `bin/pghoard_postgres_command`. Both sit at the same place relative to this code in the checkout,
 * the npm package and /usr/lib/pghoard (the .deb/.rpm's /usr/bin/pghoard_postgres_command links to
 * the same one).
 */
export function installedClientPath(): string {
  const native = fileURLToPath(new URL("../../native/pghoard_postgres_command", import.meta.url));
  if (existsSync(native)) return native;
  return fileURLToPath(new URL("../../../bin/pghoard_postgres_command", import.meta.url));
}

/** POSIX shell word: unchanged when it is plainly safe, else single-quoted. */
export function shellQuote(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'"'"'`)}'`;
}

/**
 * A shell command line running an installed command with the node binary running now
 * (`process.execPath`: the bin's `#!/usr/bin/env node` would need node on PostgreSQL's PATH).
 */
export function installedCommandLine(command: string, args: string[]): string {
  return [process.execPath, installedCommandPath(command), ...args].map(shellQuote).join(" ");
}

/**
 * A shell command line running the installed client (installedClientPath). `PGHOARD_NODE`
 * pins the node binary running now for the cases handed to the Node client (an unreachable daemon, unusual input):
 * PostgreSQL's PATH may have no node, and a missing program (exit 127) would end recovery.
 */
export function clientCommandLine(args: string[]): string {
  return [`PGHOARD_NODE=${shellQuote(process.execPath)}`, ...[installedClientPath(), ...args].map(shellQuote)].join(
    " ",
  );
}

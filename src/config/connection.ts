/**
 * Node entries (`backup_sites.<site>.nodes[]`): parsing every accepted form into libpq keywords,
 * rendering connection strings for child processes, and moving passwords to ~/.pgpass, as
 * upstream's pghoard/common.py and pghoard/pgutil.py do.
 */
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { scrubText } from "../common/redact.js";
import { pyRepr } from "../common/pycompat.js";
import { ConfigError, describeValue } from "./errors.js";
import { writeFileAtomic } from "../common/fs.js";
import type { NodeConfig } from "./types.js";

export type ConnectionInfo = Record<string, string>;

/** Parses a libpq `key=value ...` string (single-quoted values with backslash escapes). */
export function parseLibpqConnectionString(connectionString: string): ConnectionInfo {
  const fields: ConnectionInfo = {};
  let rest = connectionString;
  for (;;) {
    rest = rest.trim();
    if (!rest) break;
    const eq = rest.indexOf("=");
    if (eq < 0) throw new Error(`expecting key=value format in connection_string fragment ${pyRepr(rest)}`);
    // libpq allows blanks around "="; upstream's parser does not, accepting them is harmless.
    const key = rest.slice(0, eq).trim();
    let remainder = rest.slice(eq + 1).replace(/^\s+/, "");
    let value = "";
    if (remainder.startsWith("'")) {
      let i = 1;
      let closed = false;
      for (; i < remainder.length; i++) {
        const ch = remainder[i];
        if (ch === "\\" && i + 1 < remainder.length) {
          value += remainder[++i];
        } else if (ch === "'") {
          closed = true;
          break;
        } else {
          value += ch;
        }
      }
      // Upstream echoes the fragment; it may be a password, so only the key is named.
      if (!closed) throw new Error(`invalid connection_string fragment: unterminated quoted value of ${pyRepr(key)}`);
      remainder = remainder.slice(i + 1);
    } else {
      const match = /^(\S*)(\s[\s\S]*)?$/.exec(remainder);
      value = match?.[1] ?? "";
      remainder = match?.[2] ?? "";
    }
    if (!key) throw new Error(`expecting key=value format in connection_string fragment ${pyRepr(rest)}`);
    fields[key] = value;
    rest = remainder;
  }
  return fields;
}

function decodeUriComponentLenient(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/**
 * Parses `postgres://user:pass@host:port/dbname?param=value`. Unlike upstream (which hands
 * percent-encoded user names and passwords to libpq verbatim) components are percent-decoded,
 * as libpq itself does for URIs.
 */
export function parsePostgresUri(uri: string): ConnectionInfo {
  const schemeEnd = uri.indexOf("://");
  if (schemeEnd < 0) throw new Error(`invalid connection URI ${pyRepr(uri)}`);
  let rest = uri.slice(schemeEnd + 3);
  const fields: ConnectionInfo = {};
  let query = "";
  const q = rest.indexOf("?");
  if (q >= 0) {
    query = rest.slice(q + 1);
    rest = rest.slice(0, q);
  }
  const slash = rest.indexOf("/");
  const authority = slash >= 0 ? rest.slice(0, slash) : rest;
  const dbPath = slash >= 0 ? rest.slice(slash + 1) : "";
  const at = authority.lastIndexOf("@");
  const userinfo = at >= 0 ? authority.slice(0, at) : null;
  const hostport = at >= 0 ? authority.slice(at + 1) : authority;
  let host = hostport;
  let port = "";
  const ipv6 = /^\[([^\]]*)\](?::(.*))?$/.exec(hostport);
  if (ipv6) {
    host = ipv6[1] ?? "";
    port = ipv6[2] ?? "";
  } else {
    const colon = hostport.lastIndexOf(":");
    if (colon >= 0) {
      host = hostport.slice(0, colon);
      port = hostport.slice(colon + 1);
    }
  }
  if (host) fields.host = decodeUriComponentLenient(host);
  if (port) {
    if (!/^\d+$/.test(port)) throw new Error(`invalid port ${pyRepr(port)} in connection URI`);
    fields.port = String(Number(port));
  }
  if (userinfo !== null) {
    const colon = userinfo.indexOf(":");
    const user = colon >= 0 ? userinfo.slice(0, colon) : userinfo;
    if (user) fields.user = decodeUriComponentLenient(user);
    if (colon >= 0) fields.password = decodeUriComponentLenient(userinfo.slice(colon + 1));
  }
  if (dbPath) fields.dbname = decodeUriComponentLenient(dbPath);
  for (const [key, value] of new URLSearchParams(query)) fields[key] = value;
  return fields;
}

/** A connection string in either libpq or URI form. */
export function parseConnectionString(value: string): ConnectionInfo {
  if (value.startsWith("postgres://") || value.startsWith("postgresql://")) return parsePostgresUri(value);
  return parseLibpqConnectionString(value);
}

function isScalar(value: unknown): value is string | number | boolean {
  return typeof value === "string" || typeof value === "number" || typeof value === "boolean";
}

/**
 * Normalizes one `nodes[]` entry (any of the four accepted forms) into libpq keywords plus an
 * optional `slot`. `keyPath` names the entry in error messages.
 */
export function parseNodeEntry(entry: unknown, keyPath: string): NodeConfig {
  if (typeof entry === "string") {
    try {
      return parseConnectionString(entry);
    } catch (err) {
      throw new ConfigError(`${keyPath}: ${scrubText((err as Error).message)}`);
    }
  }
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    throw new ConfigError(
      `${keyPath}: expected an object of libpq keywords, a libpq connection string or a postgres:// URI, got ${describeValue(entry)}`,
    );
  }
  const copy: Record<string, unknown> = { ...(entry as Record<string, unknown>) };
  const slot = copy.slot;
  delete copy.slot;
  if (slot !== undefined && slot !== null && typeof slot !== "string") {
    throw new ConfigError(`${keyPath}.slot: expected a string, got ${describeValue(slot)}`);
  }
  let result: NodeConfig;
  const keys = Object.keys(copy);
  if (keys.length === 1 && keys[0] === "connection_string") {
    if (typeof copy.connection_string !== "string") {
      throw new ConfigError(
        `${keyPath}.connection_string: expected a string, got ${describeValue(copy.connection_string)}`,
      );
    }
    try {
      result = parseConnectionString(copy.connection_string);
    } catch (err) {
      throw new ConfigError(`${keyPath}.connection_string: ${scrubText((err as Error).message)}`);
    }
  } else {
    if ("connection_string" in copy) {
      // Upstream passes it on as a libpq keyword, which libpq rejects ("invalid connection option").
      throw new ConfigError(`${keyPath}.connection_string: must be the only key besides "slot"`);
    }
    result = {};
    for (const [key, value] of Object.entries(copy)) {
      if (value === null) continue; // psycopg2 drops None-valued keywords
      if (!isScalar(value)) {
        throw new ConfigError(
          `${keyPath}.${key}: expected a string or number (libpq keyword), got ${describeValue(value)}`,
        );
      }
      result[key] = value;
    }
  }
  if (typeof slot === "string") result.slot = slot;
  return result;
}

/** libpq keywords of a node, without `slot`, as strings. */
export function nodeConnectionInfo(node: NodeConfig): ConnectionInfo {
  const info: ConnectionInfo = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === "slot") continue;
    info[key] = typeof value === "boolean" ? (value ? "true" : "false") : String(value);
  }
  return info;
}

export function nodeSlot(node: NodeConfig): string | undefined {
  return typeof node.slot === "string" ? node.slot : undefined;
}

/** Keywords for a physical replication connection: `dbname=replication`, `replication=true`. */
export function replicationConnectionInfo(node: NodeConfig): ConnectionInfo {
  return { ...nodeConnectionInfo(node), dbname: "replication", replication: "true" };
}

/**
 * `key='value'` pairs sorted by key, as passed to pg_basebackup/pg_receivewal. Backslashes are
 * escaped too (upstream escapes only quotes, which corrupts values containing a backslash).
 */
export function createConnectionString(info: ConnectionInfo): string {
  return Object.keys(info)
    .sort()
    .map((key) => `${key}='${String(info[key]).replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`)
    .join(" ");
}

export function nodeConnectionString(node: NodeConfig, options: { replication?: boolean } = {}): string {
  return createConnectionString(options.replication ? replicationConnectionInfo(node) : nodeConnectionInfo(node));
}

/** Escapes a .pgpass field (libpq treats `\` and `:` specially). */
function pgpassField(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/:/g, "\\:");
}

/**
 * If `info` has a password, writes `host:port:dbname:user:password` to `$HOME/.pgpass` (mode
 * 0600), replacing a line for the same host/port/dbname/user, and returns `info` without the
 * password (a copy). Defaults as upstream: localhost, 5432, `*`, "".
 */
export async function writePgpassEntry(info: ConnectionInfo, options: { home?: string } = {}): Promise<ConnectionInfo> {
  if (!("password" in info)) return { ...info };
  const { password, ...rest } = info;
  const lineKey =
    [rest.host ?? "localhost", rest.port ?? "5432", rest.dbname ?? "*", rest.user ?? ""].map(pgpassField).join(":") +
    ":";
  const line = lineKey + pgpassField(password ?? "");
  const home = options.home ?? process.env.HOME ?? os.homedir();
  const pgpassPath = path.join(home, ".pgpass");
  let lines: string[] = [];
  try {
    lines = (await fs.readFile(pgpassPath, "utf8")).split("\n").filter((l) => l !== "");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (!lines.includes(line)) {
    const kept = lines.filter((l) => !l.startsWith(lineKey));
    await writeFileAtomic(pgpassPath, [...kept, line].join("\n") + "\n", { mode: 0o600 });
  }
  return rest;
}

/** Connection string for `node` with its password moved to ~/.pgpass, plus the node's slot. */
export async function connectionStringUsingPgpass(
  node: NodeConfig,
  options: { replication?: boolean; home?: string } = {},
): Promise<{ connectionString: string; slot: string | undefined }> {
  const info = options.replication ? replicationConnectionInfo(node) : nodeConnectionInfo(node);
  const withoutPassword = await writePgpassEntry(info, options.home === undefined ? {} : { home: options.home });
  return { connectionString: createConnectionString(withoutPassword), slot: nodeSlot(node) };
}

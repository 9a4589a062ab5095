/**
 * Listing basebackups (object store, with `moved_from` sites, or the daemon's HTTP API) and the
 * exact text format of upstream's `print_basebackup_list` (cli.md §2.4).
 */
import { listBasebackups, type BasebackupEntry, type SiteStore } from "../catalog/index.js";
import type { Metadata } from "../storage/types.js";
import { RestoreError } from "./errors.js";
import { basebackupListTime, parseTimestamp, pyRepr, pyReprDict } from "../common/pycompat.js";

// The listing and its entry type belong to the catalog; restore's modules keep importing them here.
export { listBasebackups, type BasebackupEntry, type SiteStore };

const MIB = 1024 * 1024;

function padEnd(text: string, width: number): string {
  return text.length >= width ? text : text + " ".repeat(width - text.length);
}

function padStart(text: string, width: number): string {
  return text.length >= width ? text : " ".repeat(width - text.length) + text;
}

function row(name: string, size: string, origSize: string, time: string): string {
  return `${padEnd(name, 40)}  ${padStart(size, 11)}  ${padStart(origSize, 11)}  ${padEnd(time, 20)}`;
}

/** Python `int()` of a metadata string (surrounding whitespace allowed), for sizes. */
function pyInt(value: string | number, key: string): number {
  const n = typeof value === "number" ? value : Number(String(value).trim());
  if (!Number.isInteger(n))
    throw new RestoreError(`invalid literal for int() with base 10: '${value}' (metadata ${key})`);
  return n;
}

/** The list as upstream prints it, every line newline-terminated. */
export function formatBasebackupList(
  backups: BasebackupEntry[],
  options: { caption?: string; verbose?: boolean } = {},
): string {
  const caption = options.caption ?? "Available basebackups";
  const verbose = options.verbose ?? true;
  const out: string[] = [`${caption} `, ""];
  out.push(row("Basebackup", "Backup size", "Orig size", "Start time"));
  out.push(row("-".repeat(40), "-".repeat(11), "-".repeat(11), "-".repeat(20)));
  const sorted = [...backups].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const b of sorted) {
    const meta: Metadata = { ...b.metadata };
    const startTime = meta["start-time"];
    delete meta["start-time"];
    const time = startTime === undefined ? "" : basebackupListTime(parseTimestamp(startTime));
    const size = `${Math.floor(pyInt(meta["total-size-enc"] ?? b.size, "total-size-enc") / MIB)} MB`;
    const origRaw = meta["total-size-plain"] ?? meta["original-file-size"];
    const orig = origRaw === undefined || origRaw === "" ? 0 : pyInt(origRaw, "total-size-plain");
    const origSize = orig ? `${Math.floor(orig / MIB)} MB` : "n/a";
    out.push(row(b.name, size, origSize, time));
    if (verbose) out.push(`    metadata: ${pyReprDict(meta)}`);
  }
  return out.join("\n") + "\n";
}

/** `Available '<site>' basebackups:` with the site in Python repr quoting. */
export function availableCaption(site: string): string {
  return `Available ${pyRepr(site)} basebackups:`;
}

export interface HttpListOptions {
  host: string;
  port: number | string;
  site: string;
  username?: string;
  password?: string;
}

/** `GET http://<host>:<port>/<site>/basebackup` of a running daemon. */
export async function listBasebackupsHttp(opts: HttpListOptions): Promise<BasebackupEntry[]> {
  const url = `http://${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${opts.port}/${encodeURIComponent(opts.site)}/basebackup`;
  const headers: Record<string, string> = {};
  if (opts.username && opts.password) {
    headers.authorization = `Basic ${Buffer.from(`${opts.username}:${opts.password}`).toString("base64")}`;
  }
  let response: Response;
  try {
    response = await fetch(url, { headers });
  } catch (err) {
    const cause = (err as { cause?: { message?: string } }).cause?.message;
    throw new RestoreError(`Could not connect to ${url}: ${cause ?? (err as Error).message}`);
  }
  if (response.status !== 200) {
    throw new RestoreError(`${url} answered HTTP ${response.status}: ${(await response.text()).slice(0, 200)}`);
  }
  const body = (await response.json()) as { basebackups?: Array<{ name: string; size: number; metadata: Metadata }> };
  if (!Array.isArray(body.basebackups)) throw new RestoreError(`${url} returned no "basebackups" list`);
  return body.basebackups.map((b) => ({ name: b.name, size: b.size, metadata: b.metadata, site: opts.site }));
}

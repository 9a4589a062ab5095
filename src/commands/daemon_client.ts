/**
 * The daemon's HTTP API as the command-line tools use it: where the daemon listens (command line,
 * else the config file, else upstream's defaults), and `request-basebackup` — `PUT
 * /<site>/basebackup`, then, with --wait, following the request in `/status` until the backup
 * is stored.
 */
import { sleep } from "../common/async.js";
import type { PghoardConfig } from "../config/index.js";
import { RestoreError } from "../restore/errors.js";

export interface DaemonEndpoint {
  host: string;
  port: number;
  username?: string;
  password?: string;
}

/** Command-line values first, then the daemon's config, then upstream's defaults (127.0.0.1:16000). */
export function daemonEndpoint(
  o: { host?: string; port?: number; username?: string; password?: string },
  config: PghoardConfig | undefined,
): DaemonEndpoint {
  const listenAddress = config?.http_address;
  return {
    // A daemon listening on every address ("" / 0.0.0.0 / ::) is reached on loopback.
    host: o.host ?? (listenAddress && !["", "0.0.0.0", "::"].includes(listenAddress) ? listenAddress : "127.0.0.1"),
    port: o.port ?? config?.http_port ?? 16000,
    username: o.username ?? config?.webserver_username ?? undefined,
    password: o.password ?? config?.webserver_password ?? undefined,
  };
}

function baseUrl(e: DaemonEndpoint): string {
  return `http://${e.host.includes(":") ? `[${e.host}]` : e.host}:${e.port}`;
}

async function call(e: DaemonEndpoint, method: string, urlPath: string): Promise<{ status: number; body: string }> {
  const url = `${baseUrl(e)}${urlPath}`;
  const headers: Record<string, string> = {};
  if (e.username && e.password) {
    headers.authorization = `Basic ${Buffer.from(`${e.username}:${e.password}`).toString("base64")}`;
  }
  try {
    const response = await fetch(url, { method, headers });
    return { status: response.status, body: await response.text() };
  } catch (err) {
    const cause = (err as { cause?: { message?: string } }).cause?.message;
    throw new RestoreError(`Could not connect to ${url}: ${cause ?? (err as Error).message}`);
  }
}

/** What the state file says about the site's backups (`pg_basebackups.<site>`). */
interface SiteBackupState {
  running?: boolean;
  progress?: { name: string; phase: string; percent: number | null; bytes_done: number; bytes_total: number };
  requests?: Record<string, { status: string; basebackup?: string; error?: string }>;
}

export interface RequestOptions {
  site: string;
  wait: boolean;
  /** Seconds; 0: no limit. */
  timeoutSeconds: number;
  /** Between two /status reads. */
  pollIntervalMs?: number;
  print(line: string): void;
}

const MIB = 1024 * 1024;

function progressLine(p: NonNullable<SiteBackupState["progress"]>): string {
  const bytes =
    p.bytes_total > 0
      ? ` ${p.percent === null ? "" : `${p.percent.toFixed(0)}% `}(${(p.bytes_done / MIB).toFixed(1)} of ${(p.bytes_total / MIB).toFixed(1)} MiB)`
      : "";
  return `${p.name}: ${p.phase}${bytes}`;
}

/**
 * Asks the daemon for a basebackup; with `wait`, prints each phase (and every 10 % while it
 * streams) until the backup is stored. Resolves with the backup's name (null without `wait`);
 * throws a RestoreError when it failed, was not started, or the time ran out.
 */
export async function requestBasebackup(e: DaemonEndpoint, o: RequestOptions): Promise<string | null> {
  const put = await call(e, "PUT", `/${encodeURIComponent(o.site)}/basebackup`);
  if (put.status !== 201) {
    throw new RestoreError(
      `${baseUrl(e)} refused the basebackup request: HTTP ${put.status} ${put.body.slice(0, 200)}`,
    );
  }
  let requestId: string | undefined;
  try {
    requestId = (JSON.parse(put.body) as { request_id?: string }).request_id;
  } catch {
    // Upstream pghoard answers an empty 201.
  }
  o.print(`Requested a basebackup of site '${o.site}'${requestId ? ` (request ${requestId})` : ""}`);
  if (!o.wait) return null;
  if (!requestId) throw new RestoreError("The daemon did not name the request (upstream pghoard?): cannot --wait");
  const started = Date.now();
  const deadline = o.timeoutSeconds > 0 ? started + o.timeoutSeconds * 1000 : Infinity;
  let last = "";
  let connectionFailures = 0;
  for (;;) {
    let site: SiteBackupState | undefined;
    try {
      const status = await call(e, "GET", "/status");
      connectionFailures = 0;
      // 503: the daemon has not written its first state file yet.
      if (status.status === 200) {
        const state = JSON.parse(status.body) as { pg_basebackups?: Record<string, SiteBackupState> };
        site = state.pg_basebackups?.[o.site];
      } else if (status.status !== 503) {
        throw new RestoreError(`${baseUrl(e)}/status answered HTTP ${status.status}: ${status.body.slice(0, 200)}`);
      }
    } catch (err) {
      // A restarting daemon forgets the request: give up after a few failed attempts.
      if (!(err instanceof RestoreError) || ++connectionFailures > 5) throw err;
    }
    const request = site?.requests?.[requestId];
    const elapsed = ((Date.now() - started) / 1000).toFixed(1);
    if (request?.status === "done") {
      o.print(`Basebackup ${request.basebackup} of site '${o.site}' completed in ${elapsed} s`);
      return request.basebackup ?? "";
    }
    if (request?.status === "failed" || request?.status === "not started") {
      throw new RestoreError(
        `Basebackup request ${requestId} ${request.status === "failed" ? "failed" : "was not started"}: ${request.error ?? "see the daemon log"}`,
      );
    }
    // One line per phase, and one per 10 % while bytes flow.
    let key = "queued";
    let line = "queued: waiting for the daemon to start it";
    if (request?.status === "running") {
      const p = site?.progress;
      if (p && p.name === request.basebackup) {
        key = `${p.phase}|${p.percent === null ? -1 : Math.floor(p.percent / 10)}`;
        line = progressLine(p);
      } else {
        key = line = "starting";
      }
    }
    if (key !== last) {
      o.print(line);
      last = key;
    }
    if (Date.now() > deadline) {
      throw new RestoreError(`Basebackup request ${requestId} did not complete in ${o.timeoutSeconds} s`);
    }
    await sleep(o.pollIntervalMs ?? 1000);
  }
}

/**
 * What the parts of the daemon's HTTP API share (http-api.md): the response-as-exception and the
 * request timeout (the related-sites rule, §5, is catalog/sites.ts). The router is webserver.ts;
 * the WAL archive (PUT) and restore (GET) handlers are wal_archive.ts and wal_restore.ts.
 */

/** How long a request waits for its storage operation (upstream's 30 s). */
export const REQUEST_TIMEOUT_MS = 30_000;

export type FileType = "xlog" | "timeline";

/** Thrown (or returned) to produce a response, as upstream's HttpResponse exception. */
export class HttpResponse extends Error {
  constructor(
    readonly status: number,
    readonly body: string | Record<string, unknown> = "",
    readonly headers: Record<string, string> = {},
  ) {
    super(`HttpResponse ${status}${typeof body === "string" && body ? `: ${body}` : ""}`);
  }
}

/** Seconds on a monotonic clock (upstream stores time.monotonic() values in the state file). */
export function nowSeconds(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

/**
 * The life cycle of a daemon plugin: the parts of the daemon that live in other areas (WAL
 * streaming, basebackups, monitoring) are called from its main loop through this shape.
 *
 * Why it lives here and is generic over the site handle: the daemon composes the plugins, so a
 * plugin must not import the daemon (that made an import circle). Each plugin area instead
 * declares the narrow context and site handle it needs, next to its code (e.g.
 * `WalStreamingContext`); the daemon's DaemonContext and SiteHandle satisfy those structurally,
 * and the command that builds the daemon (`commands/pghoard.ts`) is where the compiler checks it.
 * Only this life cycle is shared, and it depends on nothing.
 */
export interface DaemonPlugin<Site> {
  readonly name: string;
  /** Every main-loop iteration (≤ 5 s apart) for every active site. Exceptions are logged, the loop goes on. */
  handleSite?(site: Site): Promise<void>;
  /** Adds or fills top-level keys of the state file just before it is written. */
  writeState?(state: Record<string, unknown>): void;
  /** After a successful SIGHUP reload (the context's `config` is already the new one). */
  configReloaded?(): void;
  /** graceful = SIGTERM (finish/stop cleanly); false = SIGINT (stop at once). */
  stop?(graceful: boolean): Promise<void>;
}

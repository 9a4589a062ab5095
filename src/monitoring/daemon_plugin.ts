/**
 * The daemon plugin of the monitoring area: feeds SiteHealth with the server's current WAL
 * position (for `pghoard.wal_archive_lag_bytes`) by running IDENTIFY_SYSTEM on the site's first
 * node over a replication connection, at most once per `probeIntervalMs` per site. The probe runs
 * in the background (never delays the main loop); a failure skips that sample and counts in
 * `pghoard.site_server_probe_failures{site}` / `pghoard.site_server_reachable{site}` = 0, where an
 * alert sees it. At creation every active site is registered (its gauges exist from the first
 * scrape) and probed, waiting up to `firstProbeWaitMs` so the first scrape already shows the outcome.
 * The command that composes the daemon passes `createMonitoringPlugin` in its plugin list.
 */
import type { Logger } from "pino";
import { siteLogger } from "../common/logger.js";
import { replicationConnectionInfo } from "../config/index.js";
import type { NodeConfig } from "../config/types.js";
import { ReplicationConnection } from "../wal/replication.js";
import type { Metrics } from "./metrics.js";

/** The parts of the daemon's context and site handle the plugin uses (DaemonContext / SiteHandle satisfy them). */
export interface MonitoringPluginContext {
  metrics: Metrics;
  log: Logger;
  /** The daemon's config: its sites are registered and probed at creation. */
  config?: { backup_sites: Record<string, MonitoringSiteHandle["siteConfig"]> };
}
export interface MonitoringSiteHandle {
  site: string;
  siteConfig: { nodes: NodeConfig[]; active?: boolean };
}

export interface MonitoringPlugin {
  readonly name: string;
  handleSite(handle: MonitoringSiteHandle): Promise<void>;
  /** Resolves when the probes already started have finished (tests). */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

export async function createMonitoringPlugin(
  ctx: MonitoringPluginContext,
  options: { probeIntervalMs?: number; firstProbeWaitMs?: number } = {},
): Promise<MonitoringPlugin> {
  const interval = options.probeIntervalMs ?? 60_000;
  const lastProbe = new Map<string, number>();
  const running = new Map<string, Promise<void>>();
  let warned = false;

  async function probe(site: string, node: NodeConfig): Promise<void> {
    let conn: ReplicationConnection | undefined;
    try {
      conn = await ReplicationConnection.connect({ connect_timeout: "10", ...replicationConnectionInfo(node) });
      const ident = await conn.identifySystem();
      ctx.metrics.siteHealth.serverPosition(site, ident.xlogpos);
      ctx.metrics.siteHealth.probeResult(site, true);
    } catch (err) {
      ctx.metrics.siteHealth.probeResult(site, false);
      // Once at warning level, then debug: the same cause (e.g. no replication access) repeats every probe.
      const message = `WAL position probe for site ${site} failed: ${(err as Error).message}`;
      if (warned) siteLogger(ctx.log, site).debug(message);
      else siteLogger(ctx.log, site).warn(message);
      warned = true;
    } finally {
      await conn?.close();
    }
  }

  function startProbe(handle: MonitoringSiteHandle): void {
    const node = handle.siteConfig.nodes[0];
    if (!node || running.has(handle.site)) return;
    ctx.metrics.siteHealth.registerSite(handle.site);
    const now = Date.now();
    if (now - (lastProbe.get(handle.site) ?? 0) < interval) return;
    lastProbe.set(handle.site, now);
    const p = probe(handle.site, node).finally(() => running.delete(handle.site));
    running.set(handle.site, p);
  }

  for (const [site, siteConfig] of Object.entries(ctx.config?.backup_sites ?? {})) {
    if (siteConfig.active !== false) startProbe({ site, siteConfig });
  }
  if (running.size > 0) {
    // Bounded: a server that does not answer must not hold up the daemon's start for long.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...running.values()]),
      new Promise((resolve) => {
        timer = setTimeout(resolve, options.firstProbeWaitMs ?? 2000);
      }),
    ]);
    clearTimeout(timer);
  }

  return {
    name: "monitoring",
    async handleSite(handle: MonitoringSiteHandle): Promise<void> {
      startProbe(handle);
    },
    async idle(): Promise<void> {
      await Promise.allSettled([...running.values()]);
    },
    async stop(): Promise<void> {
      await Promise.allSettled([...running.values()]);
    },
  };
}

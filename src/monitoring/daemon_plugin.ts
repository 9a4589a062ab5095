/**
 * The daemon plugin of the monitoring area: feeds SiteHealth with the server's current WAL
 * position (for `pghoard.wal_archive_lag_bytes`) by running IDENTIFY_SYSTEM on the site's first
 * node over a replication connection, at most once per `probeIntervalMs` per site. The probe runs
 * in the background (never delays the main loop) and a failure only skips that sample.
 * The command that composes the daemon passes `createMonitoringPlugin` in its plugin list.
 */
import type { Logger } from "pino";
import { replicationConnectionInfo } from "../config/index.js";
import type { NodeConfig } from "../config/types.js";
import { ReplicationConnection } from "../wal/replication.js";
import type { Metrics } from "./metrics.js";

/** The parts of the daemon's context and site handle the plugin uses (DaemonContext / SiteHandle satisfy them). */
export interface MonitoringPluginContext {
  metrics: Metrics;
  log: Logger;
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

export function createMonitoringPlugin(
  ctx: MonitoringPluginContext,
  options: { probeIntervalMs?: number } = {},
): MonitoringPlugin {
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
    } catch (err) {
      // Once at warning level, then debug: the same cause (e.g. no replication access) repeats every probe.
      const message = `WAL position probe for site ${site} failed: ${(err as Error).message}`;
      if (warned) ctx.log.debug(message);
      else ctx.log.warn(message);
      warned = true;
    } finally {
      await conn?.close();
    }
  }

  return {
    name: "monitoring",
    async handleSite(handle: MonitoringSiteHandle): Promise<void> {
      const node = handle.siteConfig.nodes[0];
      if (!node || running.has(handle.site)) return;
      const now = Date.now();
      if (now - (lastProbe.get(handle.site) ?? 0) < interval) return;
      lastProbe.set(handle.site, now);
      const p = probe(handle.site, node).finally(() => running.delete(handle.site));
      running.set(handle.site, p);
    },
    async idle(): Promise<void> {
      await Promise.allSettled([...running.values()]);
    },
    async stop(): Promise<void> {
      await Promise.allSettled([...running.values()]);
    },
  };
}

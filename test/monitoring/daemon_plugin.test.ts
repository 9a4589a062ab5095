/**
 * The monitoring daemon plugin probes a real PostgreSQL 15 server's WAL position, so
 * `pghoard.wal_archive_lag_bytes` is the distance from the end of the last archived segment.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { getLogger } from "../../src/common/logger.js";
import type { DaemonPluginFactory } from "../../src/daemon/plugins.js";
import { Metrics, createMonitoringPlugin } from "../../src/monitoring/index.js";
import { lsnToWalName, parseLsn } from "../../src/wal/index.js";
import { startCluster, type PgCluster } from "../helpers/pgcluster.js";

// The factory fits the daemon's plugin list as is.
const asDaemonFactory: DaemonPluginFactory = createMonitoringPlugin;
void asDaemonFactory;

describe("monitoring daemon plugin", { timeout: 120_000 }, () => {
  let cluster: PgCluster;
  before(async () => {
    cluster = await startCluster();
  });
  after(async () => {
    await cluster?.destroy();
  });

  it("reports WAL archive lag in bytes from IDENTIFY_SYSTEM and the last uploaded segment", async () => {
    const metrics = new Metrics({ prometheus: {} }, { siteHealthIntervalMs: 0 });
    const plugin = await createMonitoringPlugin({ metrics, log: getLogger("test") }, { probeIntervalMs: 60_000 });
    await cluster.query("CREATE TABLE t AS SELECT generate_series(1, 20000) AS i");
    const [row] = await cluster.query<{ lsn: string }>("SELECT pg_current_wal_flush_lsn()::text AS lsn");
    const flushed = parseLsn(row!.lsn);
    // Pretend everything before the current segment is archived.
    const current = lsnToWalName(flushed, 1);
    const previous = lsnToWalName(flushed - 16n * 1024n * 1024n, 1);
    metrics.siteHealth.walUploaded("db", previous);
    const node = { host: cluster.host, port: cluster.port, user: cluster.user };
    await plugin.handleSite({ site: "db", siteConfig: { nodes: [node] } });
    await plugin.idle();
    await plugin.handleSite({ site: "db", siteConfig: { nodes: [node] } }); // within the interval: no second probe
    metrics.siteHealth.emit();
    const body = (await metrics.renderPrometheus()) ?? "";
    await metrics.close();
    const m = /^pghoard_wal_archive_lag_bytes\{site="db"\} (\d+)$/m.exec(body);
    assert.ok(m, body);
    const lag = Number(m[1]);
    const segmentStart = flushed - (flushed % (16n * 1024n * 1024n));
    assert.ok(
      lag >= Number(flushed - segmentStart) && lag < 2 * 16 * 1024 * 1024,
      `lag ${lag} for ${row!.lsn} in ${current}`,
    );
    assert.match(body, /^pghoard_seconds_since_last_wal_upload\{site="db"\} /m);
  });

  it("skips the sample quietly when the server cannot be reached", async () => {
    const metrics = new Metrics({ prometheus: {} }, { siteHealthIntervalMs: 0 });
    const plugin = await createMonitoringPlugin({ metrics, log: getLogger("test") });
    metrics.siteHealth.walUploaded("gone", "000000010000000000000001");
    await plugin.handleSite({
      site: "gone",
      siteConfig: { nodes: [{ host: "127.0.0.1", port: 1, user: "postgres" }] },
    });
    await plugin.idle();
    metrics.siteHealth.emit();
    const body = (await metrics.renderPrometheus()) ?? "";
    await metrics.close();
    assert.doesNotMatch(body, /wal_archive_lag_bytes/);
  });
});

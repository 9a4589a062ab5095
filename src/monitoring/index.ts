/**
 * Metrics for the daemon and the basebackup code (operations.md §10).
 *
 *   const metrics = new Metrics(config, { log });       // config: the loaded PghoardConfig
 *   metrics.gauge(MetricNames.BACKUP_TIME, seconds, { basebackup_mode: "local-tar" });
 *   metrics.increase(MetricNames.UPLOAD_SIZE, bytes, { result: "ok", type: "xlog", site });
 *   metrics.unexpectedException(err, ExceptionWhere.HANDLE_UPLOAD);
 *   metrics.siteHealth.walUploaded(site, walName);       // plus basebackupCompleted, backupsListed, serverPosition
 *   const { status, contentType, body } = await metrics.httpResponse();   // GET /metrics
 *   await metrics.reconfigure(newConfig);                // SIGHUP
 *   await metrics.close();                               // shutdown
 */
export { Metrics, nullMetrics, type MetricsOptions, type MetricsHttpResponse } from "./metrics.js";
export { MetricNames, ExceptionWhere, type MetricName, type FileTypeTag } from "./names.js";
export { SiteHealth, type BackupTimes } from "./site_health.js";
export { PrometheusMetricsClient, prometheusName, prometheusLabelName } from "./prometheus.js";
export { PushgatewayMetricsClient, pushgatewayBody } from "./pushgateway.js";
export { StatsdMetricsClient } from "./statsd.js";
export type {
  Tags,
  MetricValue,
  MetricType,
  MonitoringConfig,
  StatsdConfig,
  PushgatewayConfig,
  PrometheusConfig,
  MetricsLogger,
} from "./types.js";
export { createMonitoringPlugin, type MonitoringPlugin } from "./daemon_plugin.js";

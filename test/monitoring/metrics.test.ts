import assert from "node:assert/strict";
import dgram from "node:dgram";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { Metrics, MetricNames, ExceptionWhere } from "../../src/monitoring/index.js";
import { parseExposition } from "./exposition.js";

/** Collects UDP datagrams on a free loopback port. */
async function udpListener(): Promise<{ port: number; next(count: number): Promise<string[]>; close(): void }> {
  const socket = dgram.createSocket("udp4");
  const received: string[] = [];
  const waiters: (() => void)[] = [];
  socket.on("message", (msg) => {
    received.push(msg.toString("utf8"));
    for (const w of waiters.splice(0)) w();
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  const port = (socket.address() as AddressInfo).port;
  return {
    port,
    async next(count: number) {
      const deadline = Date.now() + 5000;
      while (received.length < count) {
        if (Date.now() > deadline) throw new Error(`timed out, got ${JSON.stringify(received)}`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
      return received.splice(0, count);
    },
    close: () => socket.close(),
  };
}

describe("statsd", () => {
  let udp: Awaited<ReturnType<typeof udpListener>>;
  before(async () => {
    udp = await udpListener();
  });
  after(() => udp.close());

  it("sends telegraf lines with sorted tags, config tags merged under call tags", async () => {
    const metrics = new Metrics(
      { statsd: { host: "127.0.0.1", port: udp.port, tags: { site: "config-site", region: "eu" } } },
      { siteHealthIntervalMs: 0 },
    );
    metrics.increase(MetricNames.UPLOAD_SIZE, 5, { type: "xlog", site: "default", result: "ok" });
    metrics.gauge(MetricNames.COMPRESSED_SIZE_RATIO, 0.25, { algorithm: "snappy", type: "xlog" });
    metrics.gauge(MetricNames.BASEBACKUP_COMPLETED, true);
    metrics.unexpectedException(new TypeError("boom"), ExceptionWhere.HANDLE_UPLOAD);
    const lines = await udp.next(4);
    await metrics.close();
    assert.deepEqual(lines, [
      "pghoard.upload_size,region=eu,result=ok,site=default,type=xlog:5|c",
      "pghoard.compressed_size_ratio,algorithm=snappy,region=eu,site=config-site,type=xlog:0.25|g",
      "pghoard.basebackup_completed,region=eu,site=config-site:True|g",
      "pghoard.exception,exception=TypeError,region=eu,site=config-site,where=handle_upload:1|c",
    ]);
  });

  it("sends datadog lines; a null tag value is a bare key; no tags means no #", async () => {
    const metrics = new Metrics(
      { statsd: { host: "127.0.0.1", port: udp.port, format: "datadog", tags: { env: "test" } } },
      { siteHealthIntervalMs: 0 },
    );
    metrics.gauge(MetricNames.BACKUP_TIME, 12.5, { basebackup_mode: "local-tar", marker: null });
    metrics.increase(MetricNames.BASEBACKUP_FAILED);
    const lines = await udp.next(2);
    await metrics.close();
    assert.deepEqual(lines, [
      "pghoard.backup_time:12.5|g|#basebackup_mode:local-tar,env:test,marker",
      "pghoard.basebackup_failed:1|c|#env:test",
    ]);
    const plain = new Metrics(
      { statsd: { host: "127.0.0.1", port: udp.port, format: "datadog" } },
      { siteHealthIntervalMs: 0 },
    );
    plain.increase(MetricNames.BASEBACKUP_FAILED, 2);
    assert.deepEqual(await udp.next(1), ["pghoard.basebackup_failed:2|c"]);
    await plain.close();
  });
});

describe("prometheus", () => {
  it("renders valid exposition, accumulates counters, keeps last gauge value", async () => {
    const metrics = new Metrics({ prometheus: { tags: { "cluster-name": "c1" } } }, { siteHealthIntervalMs: 0 });
    metrics.increase(MetricNames.UPLOAD_SIZE, 100, { result: "ok", type: "xlog", site: "default" });
    metrics.increase(MetricNames.UPLOAD_SIZE, 50, { result: "ok", type: "xlog", site: "default" });
    metrics.increase(MetricNames.UPLOAD_SIZE, 7, { result: "failed", type: "xlog", site: "default" });
    metrics.gauge(MetricNames.BASEBACKUP_ESTIMATED_PROGRESS, 10, { site: "default" });
    metrics.gauge(MetricNames.BASEBACKUP_ESTIMATED_PROGRESS, 55.5, { site: "default" });
    // A label set that grows later (progress stall with and without `phase`).
    metrics.gauge(MetricNames.SECONDS_SINCE_BACKUP_PROGRESS_STALLED, 3);
    metrics.gauge(MetricNames.SECONDS_SINCE_BACKUP_PROGRESS_STALLED, 4, { phase: 'snap"shot\n' });
    metrics.unexpectedException(new RangeError("x"), ExceptionWhere.PGHOARD_RUN);
    metrics.unexpectedException(new RangeError("y"), ExceptionWhere.PGHOARD_RUN);
    const response = await metrics.httpResponse();
    await metrics.close();
    assert.equal(response.status, 200);
    assert.match(response.contentType, /^text\/plain/);
    const families = parseExposition(response.body);
    const upload = families.get("pghoard_upload_size");
    assert.equal(upload?.type, "counter");
    assert.deepEqual(upload?.samples.map((s) => [s.labels.result, s.labels.cluster_name, s.value]).sort(), [
      ["failed", "c1", 7],
      ["ok", "c1", 150],
    ]);
    const progress = families.get("pghoard_basebackup_estimated_progress");
    assert.equal(progress?.type, "gauge");
    assert.deepEqual(
      progress?.samples.map((s) => s.value),
      [55.5],
    );
    const stalled = families.get("pghoard_seconds_since_backup_progress_stalled");
    assert.deepEqual(stalled?.samples.map((s) => [s.labels.phase ?? "-", s.value]).sort(), [
      ["-", 3],
      ['snap"shot\n', 4],
    ]);
    const exc = families.get("pghoard_exception");
    assert.deepEqual(
      exc?.samples.map((s) => [s.labels.exception, s.labels.where, s.value]),
      [["RangeError", "pghoard_run", 2]],
    );
  });

  it("gives every metric a HELP line saying what it measures", async () => {
    const metrics = new Metrics({ prometheus: {} }, { siteHealthIntervalMs: 0 });
    for (const name of Object.values(MetricNames)) metrics.gauge(name, 1, { site: "default" });
    const response = await metrics.httpResponse();
    await metrics.close();
    const helps = response.body.split("\n").filter((l) => l.startsWith("# HELP "));
    assert.equal(helps.length, Object.values(MetricNames).length);
    for (const line of helps) assert.doesNotMatch(line, /pghoard metric/, line);
    assert.ok(helps.includes("# HELP pghoard_total_upload_size Bytes uploaded in total, by type"));
  });

  it("answers 501 when prometheus is not configured", async () => {
    const metrics = new Metrics({ statsd: null }, { siteHealthIntervalMs: 0 });
    assert.equal((await metrics.httpResponse()).status, 501);
    await metrics.close();
  });
});

describe("pushgateway", () => {
  it("posts each metric to <endpoint>/metrics/job/<job>/instance/<instance>", async () => {
    const posts: { method: string; url: string; body: string }[] = [];
    const server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        posts.push({ method: req.method ?? "", url: req.url ?? "", body });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const metrics = new Metrics(
        { pushgateway: { endpoint: `http://127.0.0.1:${port}/`, tags: { env: "ci" } } },
        { siteHealthIntervalMs: 0 },
      );
      metrics.gauge(MetricNames.XLOGS_SINCE_BASEBACKUP, 12, { site: "db1" });
      await metrics.flush();
      metrics.increase(MetricNames.BASEBACKUP_COMPLETED);
      await metrics.flush();
      await metrics.close();
      const custom = new Metrics(
        { pushgateway: { endpoint: `http://127.0.0.1:${port}`, job: "backup job", instance: "node-1" } },
        { siteHealthIntervalMs: 0 },
      );
      custom.gauge(MetricNames.BACKUP_TIME, 1.5, { basebackup_mode: "basic", site: "db1" });
      await custom.close();
      assert.equal(posts.length, 3);
      assert.deepEqual(posts[0], {
        method: "POST",
        url: "/metrics/job/pghoard/instance/db1",
        body: '# TYPE pghoard_xlogs_since_basebackup gauge\npghoard_xlogs_since_basebackup{env="ci",site="db1"} 12\n',
      });
      const os = await import("node:os");
      assert.equal(posts[1]?.url, `/metrics/job/pghoard/instance/${encodeURIComponent(os.hostname())}`);
      assert.equal(
        posts[1]?.body,
        '# TYPE pghoard_basebackup_completed counter\npghoard_basebackup_completed{env="ci"} 1\n',
      );
      assert.equal(posts[2]?.url, "/metrics/job/backup%20job/instance/node-1");
      assert.equal(
        posts[2]?.body,
        '# TYPE pghoard_backup_time gauge\npghoard_backup_time{basebackup_mode="basic",site="db1"} 1.5\n',
      );
    } finally {
      server.close();
    }
  });

  it("never throws or blocks when the gateway is unreachable", async () => {
    const metrics = new Metrics({ pushgateway: { endpoint: "http://127.0.0.1:1" } }, { siteHealthIntervalMs: 0 });
    metrics.gauge(MetricNames.BACKUP_TIME, 1);
    await metrics.close();
  });
});

describe("site health", () => {
  it("emits seconds since last WAL upload/basebackup, oldest restorable point and archive lag", async () => {
    const metrics = new Metrics({ prometheus: {} }, { siteHealthIntervalMs: 0 });
    const t0 = Date.now();
    metrics.siteHealth.walUploaded("db1", "000000010000000000000003", new Date(t0 - 30_000));
    metrics.siteHealth.basebackupCompleted("db1", new Date(t0 - 3600_000));
    metrics.siteHealth.backupsListed("db1", [
      {
        startTime: new Date(t0 - 7200_000).toISOString(),
        endTime: new Date(t0 - 7100_000).toISOString().replace("T", " "),
      },
      { startTime: new Date(t0 - 3600_000) },
    ]);
    // Server at 0/5000100: the archive ends at 0/4000000 (end of segment 3).
    metrics.siteHealth.serverPosition("db1", 0x5000100n);
    metrics.siteHealth.emit();
    const body = (await metrics.renderPrometheus()) ?? "";
    await metrics.close();
    const families = parseExposition(body);
    const value = (name: string) => families.get(name)?.samples.find((s) => s.labels.site === "db1")?.value;
    assert.ok(Math.abs(value("pghoard_seconds_since_last_wal_upload")! - 30) < 5);
    assert.ok(Math.abs(value("pghoard_seconds_since_last_basebackup")! - 3600) < 5);
    assert.ok(Math.abs(value("pghoard_oldest_restorable_point")! - (t0 - 7100_000) / 1000) < 1);
    assert.ok(Math.abs(value("pghoard_oldest_restorable_point_age")! - 7100) < 5);
    assert.equal(value("pghoard_wal_archive_lag_bytes"), 0x5000100 - 0x4000000);
  });
});

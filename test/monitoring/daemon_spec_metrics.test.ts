/**
 * Every metric name and tag of operations.md §10.2 from one real daemon run: a PostgreSQL 15
 * cluster archives through archive_command, the daemon takes local-tar-delta-stats, delta and pipe
 * basebackups on request (twice for the two delta flavours, so the ratios of a non-first backup
 * appear), serves a WAL download, recovers a truncated `.partial` at start and fails one backup
 * (its role does not exist), archives a timeline history file through the archive PUT, fails a
 * download whose stored segment was damaged, reads a progress file cut short at start and retries
 * chunk uploads the store refuses for a while (each counted in `pghoard.exception`).
 * Not provoked here, as no real fault reaches them (the tests run as root, so permissions cannot
 * fail a read): `PGBaseBackup` (an upload failure is retried, a server/role failure is an expected
 * BackupFailure), `check_pg_server_version` (every connection failure is an expected
 * ReplicationError), `wal_file_deleter_run` (its one failing call, unlink, is caught inside and
 * counted as wal_file_deleter_delete_unneeded_files) and `pghoard.transfer_operation_errors`
 * (in-memory progress bookkeeping).
 * A second site points at a server that does not answer: its gauges and the failing probe are in
 * the very first `GET /metrics`. Values are read back from the statsd packets (every emission) and
 * from the Prometheus exposition (what a scraper sees).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { findTarMember, TAR_METADATA_FILENAME } from "../../src/catalog/index.js";
import {
  DaemonProcess,
  decodeStoredObject,
  httpRequest,
  makeDaemonEnv,
  makeFakePgdata,
  postgresCommandBin,
  sleep,
  switchWal,
  syntheticSegment,
  waitArchived,
  type DaemonEnv,
} from "../daemon/helpers.js";
import { findFreePort, startCluster, type PgCluster } from "../helpers/pgcluster.js";
import { parseExposition } from "./exposition.js";
import { reloadSite, requestBackup, type Scenario } from "../basebackup/helpers.js";

interface StatsdLine {
  name: string;
  tags: Record<string, string>;
  value: number;
  type: string;
}

/** telegraf format: `<name>,<k>=<v>,...:<value>|<type>`. */
function parseTelegraf(line: string): StatsdLine {
  const m = /^([^,:]+)((?:,[^,:=]+=[^,:]*)*):([^|]+)\|(g|c)$/.exec(line);
  assert.ok(m, `bad statsd line ${line}`);
  const tags: Record<string, string> = {};
  for (const pair of (m[2] ?? "").split(",").filter(Boolean)) {
    const [k, v] = pair.split("=");
    tags[k!] = v!;
  }
  return { name: m[1]!, tags, value: m[3] === "True" ? 1 : m[3] === "False" ? 0 : Number(m[3]), type: m[4]! };
}

describe("daemon metrics of the spec from a real run", { timeout: 600_000 }, () => {
  let cluster: PgCluster;
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let udp: dgram.Socket;
  const lines: StatsdLine[] = [];
  let firstScrape = "";
  let downPgdata = "";
  const site = "m";

  const seen = (name: string, match: (l: StatsdLine) => boolean = () => true): StatsdLine[] =>
    lines.filter((l) => l.name === name && match(l));

  const reload = (change: (siteConfig: Record<string, unknown>) => void): Promise<void> =>
    reloadSite(env, daemon!, site, change);

  before(async () => {
    udp = dgram.createSocket("udp4");
    udp.on("message", (m) => {
      for (const l of m.toString().split("\n").filter(Boolean)) lines.push(parseTelegraf(l));
    });
    await new Promise<void>((r) => udp.bind(0, "127.0.0.1", r));
    const port = await findFreePort();
    cluster = await startCluster({
      archiveCommand: `${process.execPath} ${postgresCommandBin} --mode archive --port ${port} --site ${site} --xlog %f`,
    });
    const deadPort = await findFreePort();
    downPgdata = await makeFakePgdata();
    env = await makeDaemonEnv(
      {
        [site]: {
          pgDataDirectory: cluster.dataDir,
          extra: {
            nodes: [cluster.connectionInfo()],
            basebackup_mode: "local-tar-delta-stats",
            basebackup_chunk_size: 4 * 1024 * 1024,
            // relation files of a fresh cluster are small: hash (delta-stats) / store apart (delta) from 64 KiB
            basebackup_delta_mode_min_delta_file_size: 64 * 1024,
          },
        },
        down: {
          pgDataDirectory: downPgdata,
          extra: { nodes: [{ host: "127.0.0.1", port: deadPort, user: "postgres" }] },
        },
      },
      {
        http_port: port,
        log_level: "INFO",
        prometheus: {},
        statsd: { host: "127.0.0.1", port: (udp.address() as AddressInfo).port },
      },
    );
    // A pg_receivewal .partial cut short by a crash: truncated (and counted) at start.
    const incoming = path.join(env.backupLocation, "down", "xlog_incoming");
    await mkdir(incoming, { recursive: true });
    await writeFile(path.join(incoming, "000000010000000000000003.partial"), Buffer.alloc(8192));
    // A progress file cut short (a crash mid-write by another tool): read at start, reported, ignored.
    await writeFile(path.join(env.dir, "persisted_progress_file.json"), '{"progress": {"total_bytes_up');
    daemon = await DaemonProcess.start(env);
    firstScrape = (await httpRequest(env.port, "GET", "/metrics")).body;
  });

  after(async () => {
    await daemon?.stop();
    await cluster?.destroy();
    udp?.close();
  });

  it("shows each site's gauges and the failing probe on the first scrape", () => {
    const families = parseExposition(firstScrape);
    const reachable = families.get("pghoard_site_server_reachable")?.samples ?? [];
    assert.equal(reachable.find((s) => s.labels.site === "down")?.value, 0, firstScrape);
    assert.equal(reachable.find((s) => s.labels.site === site)?.value, 1, firstScrape);
    const failures = families.get("pghoard_site_server_probe_failures");
    assert.equal(failures?.type, "counter");
    assert.ok((failures?.samples.find((s) => s.labels.site === "down")?.value ?? 0) >= 1, firstScrape);
    assert.equal(failures?.samples.find((s) => s.labels.site === site)?.value, 0, firstScrape);
    assert.ok(families.has("pghoard_incomplete_partial_wal_segment"), firstScrape);
  });

  it("emits every metric of operations.md §10.2 with its tags", async () => {
    const s = { site, env, cluster, daemon: daemon! } as unknown as Scenario;
    // WAL through archive_command
    const seg = await switchWal(cluster);
    await waitArchived(cluster, seg);
    // local-tar-delta-stats twice (the second compares with the first), then delta twice, then pipe
    // The first backup's chunk uploads fail while a file stands where the store's chunk directory
    // goes (a store refusing writes): retried, counted (where=handle_upload), then they go through.
    const chunkDir = path.join(env.storageDir, site, "basebackup_chunk");
    await writeFile(chunkDir, "not a directory");
    const first = requestBackup(s);
    for (
      const deadline = Date.now() + 60_000;
      !seen("pghoard.exception", (l) => l.tags.where === "handle_upload").length;
    ) {
      if (Date.now() > deadline) assert.fail(`no handle_upload exception: ${daemon!.logs().slice(-3000)}`);
      await sleep(100);
    }
    await rm(chunkDir);
    await first;
    await cluster.query("CREATE TABLE grow AS SELECT generate_series(1, 50000) AS i");
    const stats = await requestBackup(s);
    // local-tar-delta-stats' delta_stats in the control object: hashes of the files, compared with the first backup
    const { data } = await decodeStoredObject(env.storageDir, path.join(site, "basebackup", stats.name), {});
    const control = JSON.parse(findTarMember(data, TAR_METADATA_FILENAME)!.toString("utf8")) as {
      delta_stats?: { hashes?: Record<string, number> };
    };
    const hashes = Object.entries(control.delta_stats?.hashes ?? {});
    assert.ok(hashes.length > 10, JSON.stringify(control.delta_stats).slice(0, 500));
    for (const [digest, size] of hashes) assert.ok(/^[0-9a-f]{64}$/.test(digest) && size >= 0, `${digest} ${size}`);
    await reload((c) => {
      c.basebackup_mode = "delta";
    });
    await requestBackup(s);
    await cluster.query("INSERT INTO grow SELECT generate_series(1, 50000)");
    await cluster.query("CHECKPOINT");
    await requestBackup(s);
    await reload((c) => {
      c.basebackup_mode = "pipe";
    });
    await requestBackup(s);
    // A WAL download as restore_command makes it (site `down`: the segment is only in the store)
    const walName = "000000010000000000000001";
    await writeFile(path.join(downPgdata, "pg_wal", walName), syntheticSegment(walName));
    assert.equal((await httpRequest(env.port, "PUT", `/down/archive/${walName}`)).status, 201);
    await rm(path.join(downPgdata, "pg_wal", walName));
    const target = path.join(downPgdata, "pg_wal", "RECOVERYXLOG");
    const got = await httpRequest(env.port, "GET", `/down/archive/${walName}`, { "x-pghoard-target-path": target });
    assert.equal(got.status, 201, got.body);
    // A timeline history file through the archive PUT, as archive_command sends it after a promotion
    const history = "00000002.history";
    await writeFile(path.join(downPgdata, "pg_wal", history), "1\t0/3000000\tno recovery target specified\n");
    assert.equal((await httpRequest(env.port, "PUT", `/down/archive/${history}`)).status, 201);
    // A stored segment that no longer decodes (damaged in the store): its download fails unexpectedly
    const damaged = "000000010000000000000002";
    await writeFile(path.join(downPgdata, "pg_wal", damaged), syntheticSegment(damaged));
    assert.equal((await httpRequest(env.port, "PUT", `/down/archive/${damaged}`)).status, 201);
    await rm(path.join(downPgdata, "pg_wal", damaged));
    await writeFile(path.join(env.storageDir, "down", "xlog", damaged), randomBytes(4096));
    const bad = await httpRequest(env.port, "GET", `/down/archive/${damaged}`, { "x-pghoard-target-path": target });
    assert.notEqual(bad.status, 201, bad.body);
    assert.notEqual(bad.status, 404, bad.body);
    // A backup that cannot start: the configured role does not exist
    await reload((c) => {
      c.basebackup_mode = "basic";
      c.nodes = [{ ...cluster.connectionInfo(), user: "no_such_role" }];
    });
    await httpRequest(env.port, "PUT", `/${site}/archive/basebackup`);
    const deadline = Date.now() + 60_000;
    while (!seen("pghoard.basebackup_failed").length || !seen("pghoard.last_upload_age").length) {
      if (Date.now() > deadline) assert.fail(`no failure / last_upload_age: ${daemon!.logs().slice(-3000)}`);
      await sleep(200);
    }

    const logs = daemon!.logs();
    const has = (name: string, match?: (l: StatsdLine) => boolean, why = ""): void =>
      assert.ok(
        seen(name, match).length > 0,
        `${name} ${why} not emitted; got ${[...new Set(lines.map((l) => l.name))]}`,
      );
    const tagged = (name: string, keys: string[]): void =>
      has(name, (l) => keys.every((k) => k in l.tags) && Object.keys(l.tags).length === keys.length, `{${keys}}`);

    tagged("pghoard.backup_stream.basebackup_requested", ["site"]);
    tagged("pghoard.basebackup_completed", []);
    assert.equal(seen("pghoard.basebackup_completed").length, 5, logs.slice(-3000));
    tagged("pghoard.basebackup_failed", []);
    for (const mode of ["local-tar-delta-stats", "delta", "pipe"]) {
      has("pghoard.backup_time", (l) => l.tags.basebackup_mode === mode, mode);
    }
    has("pghoard.basebackup_bytes_uploaded", (l) => l.tags.delta === "False" && l.value > 0, "delta=False");
    has("pghoard.basebackup_bytes_uploaded", (l) => l.tags.delta === "True" && l.value > 0, "delta=True");
    tagged("pghoard.basebackup_estimated_progress", ["site"]);
    for (const type of ["xlog", "basebackup", "basebackup_delta"]) {
      has(
        "pghoard.compressed_size_ratio",
        (l) => l.tags.type === type && l.tags.site === site && typeof l.tags.algorithm === "string",
        type,
      );
    }
    has(
      "pghoard.compressed_size_ratio",
      (l) => l.tags.type === "timeline" && l.tags.site === "down" && typeof l.tags.algorithm === "string",
      "timeline",
    );
    // Unexpected failures count by where they happened: the damaged segment's download.
    has(
      "pghoard.exception",
      (l) => l.tags.where === "handle_download" && typeof l.tags.exception === "string" && l.value === 1,
      "{where=handle_download}",
    );
    has(
      "pghoard.exception",
      (l) => l.tags.where === "read_persisted_progress" && l.tags.exception === "SyntaxError",
      "{where=read_persisted_progress}",
    );
    has("pghoard.exception", (l) => l.tags.where === "handle_upload" && typeof l.tags.exception === "string");
    for (const suffix of ["total_size", "upload_size", "total_files", "upload_files"]) {
      tagged(`pghoard.delta_backup_${suffix}`, []);
      tagged(`pghoard.planned_delta_backup_${suffix}`, []);
    }
    for (const name of [
      "pghoard.delta_backup_changed_data_files_ratio",
      "pghoard.delta_backup_changed_data_size_ratio",
      "pghoard.delta_backup_remained_data_size",
      "pghoard.planned_delta_backup_changed_data_files_ratio",
      "pghoard.planned_delta_backup_changed_data_size_ratio",
      "pghoard.planned_delta_backup_remained_data_size_raw",
    ]) {
      tagged(name, []);
    }
    has("pghoard.seconds_since_backup_progress_stalled", (l) => typeof l.tags.phase === "string", "{phase}");
    tagged("pghoard.seconds_since_backup_progress_stalled", []);
    tagged("pghoard.incomplete_partial_wal_segment", []);
    has("pghoard.last_upload_age", (l) => l.tags.site === site && l.tags.type === "xlog" && l.value >= 0);
    has("pghoard.last_upload_age", (l) => l.tags.type === "basebackup");
    tagged("pghoard.xlogs_since_basebackup", ["site"]);
    has("pghoard.total_upload_size", (l) => l.tags.type === "xlog" && l.tags.site === site);
    has("pghoard.upload_size", (l) => l.tags.result === "ok" && l.tags.type === "xlog" && l.tags.site === site);
    has("pghoard.download_size", (l) => l.tags.result === "ok" && l.tags.type === "xlog" && l.tags.site === "down");

    // The scraper sees the same names (sanitised) and tags.
    const families = parseExposition((await httpRequest(env.port, "GET", "/metrics")).body);
    for (const name of new Set(lines.map((l) => l.name))) {
      assert.ok(families.has(name.replace(/[.-]/g, "_")), `${name} missing from /metrics`);
    }
    assert.ok(
      families.get("pghoard_backup_time")?.samples.some((x) => x.labels.basebackup_mode === "pipe"),
      "backup_time{basebackup_mode=pipe}",
    );
    // The progress file is reset after the last successful backup.
    const progress = JSON.parse(await readFile(path.join(env.dir, "persisted_progress_file.json"), "utf8"));
    assert.equal(typeof progress.progress, "object");
  });
});

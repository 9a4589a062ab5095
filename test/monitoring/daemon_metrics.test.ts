/**
 * Metrics through the real daemon: with `prometheus` and `statsd` configured, archiving a segment
 * over the HTTP API makes `GET /metrics` serve valid exposition with the transfer metrics, and the
 * same metrics arrive as telegraf lines on a UDP listener.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import {
  DaemonProcess,
  httpRequest,
  makeDaemonEnv,
  makeFakePgdata,
  syntheticSegment,
  type DaemonEnv,
} from "../daemon/helpers.js";
import { parseExposition } from "./exposition.js";

describe("daemon metrics", { timeout: 120_000 }, () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess | undefined;
  let udp: dgram.Socket;
  const lines: string[] = [];

  before(async () => {
    udp = dgram.createSocket("udp4");
    udp.on("message", (m) => lines.push(m.toString()));
    await new Promise<void>((r) => udp.bind(0, "127.0.0.1", r));
    const pgdata = await makeFakePgdata();
    env = await makeDaemonEnv(
      { metricsite: { pgDataDirectory: pgdata } },
      {
        prometheus: { tags: { cluster: "c1" } },
        statsd: { host: "127.0.0.1", port: (udp.address() as AddressInfo).port, tags: { cluster: "c1" } },
      },
    );
    await writeFile(
      path.join(pgdata, "pg_wal", "000000010000000000000001"),
      syntheticSegment("000000010000000000000001"),
    );
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
    udp?.close();
  });

  it("serves valid Prometheus exposition with the upload metrics on GET /metrics", async () => {
    const put = await httpRequest(env.port, "PUT", "/metricsite/archive/000000010000000000000001");
    assert.equal(put.status, 201, put.body + (daemon?.logs() ?? ""));
    const res = await httpRequest(env.port, "GET", "/metrics");
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^text\/plain/);
    const families = parseExposition(res.body);
    const upload = families.get("pghoard_upload_size");
    assert.equal(upload?.type, "counter");
    const ok = upload?.samples.find(
      (s) => s.labels.result === "ok" && s.labels.type === "xlog" && s.labels.site === "metricsite",
    );
    assert.ok(ok && ok.value > 0, res.body);
    assert.equal(ok.labels.cluster, "c1");
    assert.ok(
      families.get("pghoard_compressed_size_ratio")?.samples.some((s) => s.labels.algorithm === "snappy"),
      res.body,
    );
    assert.ok(families.has("pghoard_xlogs_since_basebackup"));
  });

  it("sends the same metrics as telegraf statsd lines", async () => {
    const deadline = Date.now() + 5000;
    while (!lines.some((l) => l.startsWith("pghoard.upload_size,")) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    const upload = lines.find((l) => l.startsWith("pghoard.upload_size,"));
    assert.match(
      upload ?? "",
      /^pghoard\.upload_size,cluster=c1,result=ok,site=metricsite,type=xlog:\d+\|c$/,
      lines.join("\n"),
    );
  });
});

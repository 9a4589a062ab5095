/**
 * HTTP API edge cases against a running daemon (http-api.md): malformed paths and names, unknown
 * sites, WAL header checks, target-path traversal attempts, authentication, prefetch handling.
 * Nothing may be written outside the site's WAL directory and the validated targets.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, watch } from "node:fs";
import { mkdir, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { makeTempDir } from "../helpers/pgcluster.js";
import {
  DaemonProcess,
  decodeStoredObject,
  httpRequest,
  listStoredNames,
  makeDaemonEnv,
  makeFakePgdata,
  syntheticSegment,
  type DaemonEnv,
} from "./helpers.js";

const SITE = "web";
const SEG1 = "000000010000000000000011";
const SEG2 = "000000010000000000000012";

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

describe("webserver", () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess;
  let pgdata: string;
  let walDir: string;
  let outside: string;
  const seg1 = syntheticSegment(SEG1);
  const seg2 = syntheticSegment(SEG2);

  before(async () => {
    pgdata = await makeFakePgdata();
    walDir = path.join(pgdata, "pg_wal");
    outside = await makeTempDir("pghoard-outside");
    env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { restore_prefetch: 0 });
    daemon = await DaemonProcess.start(env);
    await writeFile(path.join(walDir, SEG1), seg1);
    await writeFile(path.join(walDir, SEG2), seg2);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("rejects malformed paths, names and unknown sites", async () => {
    const cases: Array<[string, string, number, string?]> = [
      ["GET", "/foo", 400, "Invalid path ['foo']"],
      ["GET", "/status/x", 400, "Invalid status request"],
      ["GET", "/metrics/x", 400, "Invalid request"],
      [
        "PUT",
        `/nosuchsite/archive/${SEG1}`,
        404,
        "Site: 'nosuchsite' not found for path ['nosuchsite', 'archive', '000000010000000000000011']",
      ],
      ["PUT", `/${SITE}/archive/foo`, 400, "Unrecognized file 'foo' for archiving"],
      // A promotion's `<SEG>.partial` is archived (404 here: there is no such file in pg_wal) but never served.
      ["PUT", `/${SITE}/archive/${SEG1}.partial`, 404],
      [
        "GET",
        `/${SITE}/archive/${SEG1}.partial`,
        400,
        "'000000010000000000000011.partial' is only accepted for archiving",
      ],
      ["PUT", `/${SITE}/xlog/${SEG1}.partial`, 400],
      ["PUT", `/${SITE}/xlog/..`, 400],
      ["PUT", `/${SITE}/xlog/../../etc/passwd`, 400],
      ["PUT", `/${SITE}/timeline/${SEG1}`, 400],
      ["PUT", `/${SITE}/xlog/00000002.history`, 400],
      ["GET", `/${SITE}/xlog/pg_control`, 400],
      ["GET", `/${SITE}/archive/${SEG1}/x`, 400],
      ["GET", `/${SITE}/whatever`, 400],
      ["GET", `/${SITE}/status`, 501],
      ["GET", "/metrics", 501],
      ["DELETE", `/${SITE}/archive/${SEG1}`, 501],
      ["GET", `/${SITE}/archive/${SEG1}`, 400, "x-pghoard-target-path header missing from download"],
    ];
    for (const [method, p, status, body] of cases) {
      const res = await httpRequest(env.port, method, p);
      assert.equal(res.status, status, `${method} ${p}: ${res.status} ${res.body}`);
      if (body !== undefined) assert.equal(res.body, body, `${method} ${p}`);
      if (status >= 300) assert.equal(res.headers["content-type"], "text/plain");
    }
    assert.deepEqual(await listStoredNames(env.storageDir, SITE, "xlog"), []);
  });

  it("archives a valid segment and refuses non-WAL bytes, missing files and symlinks", async () => {
    const ok = await httpRequest(env.port, "PUT", `/${SITE}/archive/${SEG1}`);
    assert.equal(ok.status, 201, ok.body);
    const { data } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${SEG1}`, {});
    assert.ok(data.equals(seg1));

    const bogus = "000000010000000000000020";
    await writeFile(path.join(walDir, bogus), Buffer.alloc(16 * 1024 * 1024, 0x41));
    const bad = await httpRequest(env.port, "PUT", `/${SITE}/archive/${bogus}`);
    assert.equal(bad.status, 412, bad.body);
    // A real header but for another position (a recycled segment) is refused too.
    const recycled = "000000010000000000000021";
    await writeFile(path.join(walDir, recycled), seg1);
    assert.equal((await httpRequest(env.port, "PUT", `/${SITE}/xlog/${recycled}`)).status, 412);

    assert.equal((await httpRequest(env.port, "PUT", `/${SITE}/archive/000000010000000000000030`)).status, 404);
    const outsideFile = path.join(outside, "secret");
    await writeFile(outsideFile, seg1);
    await symlink(outsideFile, path.join(walDir, "000000010000000000000031"));
    const link = await httpRequest(env.port, "PUT", `/${SITE}/archive/000000010000000000000031`);
    assert.equal(link.status, 404);
    assert.equal(link.body, "N/A");
    assert.deepEqual(await listStoredNames(env.storageDir, SITE, "xlog"), [SEG1]);
  });

  it("archives and restores timeline history files (no hash metadata, no header check)", async () => {
    const history = "1\t0/3000000\tno recovery target specified\n";
    await writeFile(path.join(walDir, "00000002.history"), history);
    const put = await httpRequest(env.port, "PUT", `/${SITE}/archive/00000002.history`);
    assert.equal(put.status, 201, put.body);
    const { data, metadata } = await decodeStoredObject(env.storageDir, `${SITE}/timeline/00000002.history`, {});
    assert.equal(data.toString(), history);
    assert.ok(!("hash" in metadata) && !("hash-algorithm" in metadata));
    assert.equal(metadata["original-file-size"], String(history.length));
    const target = path.join(walDir, "RECOVERYHISTORY");
    await rm(path.join(walDir, "00000002.history"));
    const got = await httpRequest(env.port, "GET", `/${SITE}/archive/00000002.history`, {
      "x-pghoard-target-path": target,
    });
    assert.equal(got.status, 201, got.body);
    assert.equal(await readFile(target, "utf8"), history);
    const missing = await httpRequest(env.port, "GET", `/${SITE}/archive/00000003.history`, {
      "x-pghoard-target-path": target,
    });
    assert.equal(missing.status, 404);
  });

  it("validates restore target paths", async () => {
    const passwdBefore = sha256(await readFile("/etc/passwd"));
    await mkdir(path.join(pgdata, "escape-parent"), { recursive: true });
    await symlink(outside, path.join(pgdata, "escape"));
    await symlink(path.join(outside, "file"), path.join(walDir, "escape-file"));
    const cases: Array<[string, number]> = [
      ["../../etc/passwd", 400],
      ["pg_wal/RECOVERYXLOG", 400],
      ["/etc/passwd", 400],
      ["/root/.ssh/id_rsa", 400],
      [`${pgdata}/../../../../etc/passwd`, 400],
      [pgdata, 400],
      [path.join(pgdata, "escape", "RECOVERYXLOG"), 400],
      [path.join(walDir, "escape-file"), 400],
      [path.join(walDir, "NA", "RECOVERYXLOG"), 409],
    ];
    for (const [target, status] of cases) {
      const res = await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG1}`, { "x-pghoard-target-path": target });
      assert.equal(res.status, status, `${target}: ${res.status} ${res.body}`);
    }
    assert.equal(sha256(await readFile("/etc/passwd")), passwdBefore);
    assert.deepEqual(await readdir(outside), ["secret"]);
    const head = await httpRequest(env.port, "HEAD", `/${SITE}/archive/${SEG1}`, {
      "x-pghoard-target-path": path.join(walDir, "x"),
    });
    assert.equal(head.status, 400);
  });

  it("serves from pg_wal once, then from the store, and replaces a bad prefetch file", async () => {
    const target = path.join(walDir, "RECOVERYXLOG");
    const first = await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG1}`, { "x-pghoard-target-path": target });
    assert.equal(first.status, 201);
    assert.ok((await readFile(target)).equals(seg1));
    await daemon.waitForLog(/found it in .*pg_wal, returning directly/);
    // Second request for the same name: the store (SEG1 is there), not the local copy.
    await writeFile(target, "");
    const second = await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG1}`, { "x-pghoard-target-path": target });
    assert.equal(second.status, 201);
    assert.ok((await readFile(target)).equals(seg1));
    assert.ok(existsSync(path.join(walDir, SEG1)), "the pg_wal copy is never moved away");

    // A corrupt .pghoard.prefetch is deleted and the file fetched again (upstream answers 503).
    await writeFile(path.join(walDir, `${SEG1}.pghoard.prefetch`), Buffer.alloc(16 * 1024 * 1024, 0x42));
    const third = await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG1}`, { "x-pghoard-target-path": target });
    assert.equal(third.status, 201, third.body);
    assert.ok((await readFile(target)).equals(seg1));
    assert.ok(!existsSync(path.join(walDir, `${SEG1}.pghoard.prefetch`)));
    const leftovers = (await readdir(walDir)).filter((n) => n.includes(".pghoard.tmp"));
    assert.deepEqual(leftovers, []);

    // Not in the archive at all.
    const missing = await httpRequest(env.port, "GET", `/${SITE}/archive/0000000100000000000000AA`, {
      "x-pghoard-target-path": target,
    });
    assert.equal(missing.status, 404);
    assert.equal((await httpRequest(env.port, "HEAD", `/${SITE}/archive/0000000100000000000000AA`)).status, 404);
  });

  it("lists and requests basebackups", async () => {
    const list = await httpRequest(env.port, "GET", `/${SITE}/basebackup`);
    assert.equal(list.status, 200);
    assert.equal(list.headers["content-type"], "application/json");
    assert.deepEqual(JSON.parse(list.body), { basebackups: [] });
    assert.equal((await httpRequest(env.port, "PUT", `/${SITE}/archive/basebackup`)).status, 201);
  });
});

describe("webserver authentication", () => {
  let env: DaemonEnv;
  let daemon: DaemonProcess;

  before(async () => {
    const pgdata = await makeFakePgdata();
    env = await makeDaemonEnv(
      { [SITE]: { pgDataDirectory: pgdata } },
      { webserver_username: "hoard", webserver_password: "s3cret pw", prometheus: {} },
    );
    daemon = await DaemonProcess.start(env);
  });

  after(async () => {
    await daemon?.stop();
  });

  it("requires exactly the configured Basic credentials on every path", async () => {
    const good = `Basic ${Buffer.from("hoard:s3cret pw").toString("base64")}`;
    const bad = `Basic ${Buffer.from("hoard:wrong").toString("base64")}`;
    for (const p of ["/status", "/metrics", `/${SITE}/basebackup`, `/nosuchsite/archive/x`, "/foo"]) {
      const none = await httpRequest(env.port, "GET", p);
      assert.equal(none.status, 401, p);
      assert.equal(none.headers["www-authenticate"], 'Basic realm="pghoard"');
      assert.equal(none.body, "Authentication required");
      assert.equal((await httpRequest(env.port, "GET", p, { authorization: bad })).status, 401, p);
    }
    assert.equal((await httpRequest(env.port, "GET", "/status", { authorization: good })).status, 200);
    const metrics = await httpRequest(env.port, "GET", "/metrics", { authorization: good });
    assert.equal(metrics.status, 200);
    assert.equal((await httpRequest(env.port, "GET", "/nosuchsite/archive/x", { authorization: good })).status, 404);
  });
});

describe("webserver related sites (moved_from)", () => {
  it("serves and finds WAL archived under an older site name, in both directions", async () => {
    // Both names describe the same cluster (e.g. a new bucket), so they share the data directory:
    // the target path is validated against each related site's pg_data_directory, as upstream does.
    const oldData = await makeFakePgdata();
    const newData = oldData;
    const seg = syntheticSegment(SEG1);
    await writeFile(path.join(oldData, "pg_wal", SEG1), seg);
    const env = await makeDaemonEnv({
      old: { pgDataDirectory: oldData, extra: { active: false } },
      new: { pgDataDirectory: newData, extra: { moved_from: ["old"] } },
    });
    const daemon = await DaemonProcess.start(env);
    try {
      assert.equal((await httpRequest(env.port, "PUT", `/old/archive/${SEG1}`)).status, 201);
      assert.equal((await httpRequest(env.port, "HEAD", `/new/archive/${SEG1}`)).status, 200);
      assert.equal((await httpRequest(env.port, "HEAD", `/old/archive/${SEG1}`)).status, 200);
      const target = path.join(newData, "pg_wal", "RECOVERYXLOG");
      await rm(path.join(oldData, "pg_wal", SEG1)); // make the store the only source
      const got = await httpRequest(env.port, "GET", `/new/archive/${SEG1}`, { "x-pghoard-target-path": target });
      assert.equal(got.status, 201, got.body);
      assert.ok((await readFile(target)).equals(seg));
      const list = await httpRequest(env.port, "GET", "/new/basebackup");
      assert.equal(list.status, 200);
    } finally {
      await daemon.stop();
    }
  });
});

describe("webserver prefetch and compression algorithms", () => {
  it("prefetches the true next segments across a log id boundary", async () => {
    const pgdata = await makeFakePgdata();
    const walDir = path.join(pgdata, "pg_wal");
    const names = ["0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000"];
    const contents = new Map(names.map((n) => [n, syntheticSegment(n)]));
    const env = await makeDaemonEnv({ [SITE]: { pgDataDirectory: pgdata } }, { restore_prefetch: 2 });
    const daemon = await DaemonProcess.start(env);
    try {
      for (const name of names) {
        await writeFile(path.join(walDir, name), contents.get(name)!);
        assert.equal((await httpRequest(env.port, "PUT", `/${SITE}/archive/${name}`)).status, 201);
        await rm(path.join(walDir, name));
      }
      const target = path.join(walDir, "RECOVERYXLOG");
      // The requested segment goes from its download's temp file straight to the target (not
      // fsync'd: PostgreSQL asks again after a crash); it never appears as a prefetch file.
      const seen = new Set<string>();
      const watcher = watch(walDir, (_event, file) => seen.add(String(file)));
      const first = await httpRequest(env.port, "GET", `/${SITE}/archive/${names[0]}`, {
        "x-pghoard-target-path": target,
      });
      assert.equal(first.status, 201);
      assert.ok((await readFile(target)).equals(contents.get(names[0])!));
      // inotify reports in order: once the target's rename is seen, every earlier event is too.
      for (const deadline = Date.now() + 20_000; !seen.has("RECOVERYXLOG");) {
        assert.ok(Date.now() < deadline, [...seen].join(" "));
        await new Promise((r) => setTimeout(r, 20));
      }
      watcher.close();
      assert.ok(
        [...seen].some((f) => f.startsWith(`${names[0]}.`) && f.endsWith(".pghoard.tmp")),
        [...seen].join(" "),
      );
      assert.ok(!seen.has(`${names[0]}.pghoard.prefetch`), [...seen].join(" "));
      for (const next of names.slice(1)) {
        const prefetch = path.join(walDir, `${next}.pghoard.prefetch`);
        const deadline = Date.now() + 20_000;
        while (!existsSync(prefetch)) {
          assert.ok(Date.now() < deadline, `${next} was not prefetched`);
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok((await readFile(prefetch)).equals(contents.get(next)!));
      }
      // Served from the prefetch file, which is consumed.
      const second = await httpRequest(env.port, "GET", `/${SITE}/archive/${names[1]}`, {
        "x-pghoard-target-path": target,
      });
      assert.equal(second.status, 201);
      assert.ok(!existsSync(path.join(walDir, `${names[1]}.pghoard.prefetch`)));
      assert.ok((await readFile(target)).equals(contents.get(names[1])!));
      // No request ever asked for the non-existent segment upstream's arithmetic would produce.
      assert.ok(!daemon.logs().includes("000000010000000000000100"));
    } finally {
      await daemon.stop();
    }
  });

  for (const algorithm of ["zstd", "lzma"]) {
    it(`archives and restores with ${algorithm}`, async () => {
      const pgdata = await makeFakePgdata();
      const walDir = path.join(pgdata, "pg_wal");
      const env = await makeDaemonEnv(
        { [SITE]: { pgDataDirectory: pgdata } },
        { compression: { algorithm, thread_count: 1 } },
      );
      const daemon = await DaemonProcess.start(env);
      try {
        const seg = syntheticSegment(SEG2);
        await writeFile(path.join(walDir, SEG2), seg);
        assert.equal((await httpRequest(env.port, "PUT", `/${SITE}/archive/${SEG2}`)).status, 201);
        const { data, metadata } = await decodeStoredObject(env.storageDir, `${SITE}/xlog/${SEG2}`, {});
        assert.equal(metadata["compression-algorithm"], algorithm);
        assert.ok(data.equals(seg));
        await rm(path.join(walDir, SEG2));
        const target = path.join(walDir, "RECOVERYXLOG");
        assert.equal(
          (await httpRequest(env.port, "GET", `/${SITE}/archive/${SEG2}`, { "x-pghoard-target-path": target })).status,
          201,
        );
        assert.ok((await readFile(target)).equals(seg));
      } finally {
        await daemon.stop();
      }
    });
  }
});

/**
 * pghoard_restore as a user runs it: listing output (exact text), usage errors, and bad input:
 * non-empty target, unknown backup, two targets, missing private key, truncated and tampered
 * objects, crafted archives trying to write outside the target. Each one fails with a clear
 * message and leaves nothing behind, inside or outside the target.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { cp, mkdir, open, readFile, readdir, readlink, rm, truncate, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import tarStream from "tar-stream";

import { createStorage } from "../../src/storage/index.js";
import { DaemonProcess, makeDaemonEnv } from "../daemon/helpers.js";
import { hasShared } from "../helpers/paths.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { pghoardMadeDir, runRestoreCli, writeFixtureConfig } from "./helpers.js";

const skipShared =
  hasShared && existsSync(pghoardMadeDir) ? false : "shared fixtures (../shared/fixtures/pghoard-made) absent";

describe("pghoard_restore command line", () => {
  let work: string;
  before(async () => {
    work = await makeTempDir("restore-cli");
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it("usage errors exit 2, no sub-command exits 1, --version exits 0", async () => {
    assert.equal((await runRestoreCli(["get-basebackup", "--config", "x"])).code, 2, "missing --target-dir");
    assert.equal((await runRestoreCli(["list-basebackups", "--bogus"])).code, 2);
    assert.equal(
      (
        await runRestoreCli([
          "get-basebackup",
          "--config",
          "x",
          "--target-dir",
          "y",
          "--recovery-target-action",
          "nope",
        ])
      ).code,
      2,
    );
    assert.equal((await runRestoreCli(["list-basebackups-http"])).code, 2, "missing --site");
    // As upstream's parser.print_help(): the help on stdout (not stderr), exit 1.
    const none = await runRestoreCli([]);
    assert.equal(none.code, 1);
    assert.match(none.stdout, /^Usage: pghoard_restore /);
    assert.match(none.stdout, /request-basebackup/);
    assert.equal(none.stderr, "");
    const version = await runRestoreCli(["--version"]);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
  });

  it("a missing configuration is an InvalidConfigurationError", async () => {
    const result = await runRestoreCli(["list-basebackups", "--config", path.join(work, "nope.json")]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /^FATAL: InvalidConfigurationError: .*does not exist/m);
  });

  describe("with the upstream-made fixtures", { skip: skipShared }, () => {
    it("list-basebackups prints upstream's exact format", async () => {
      const config = await writeFixtureConfig("snappy-plain-basic", work);
      const result = await runRestoreCli(["list-basebackups", "--config", config]);
      assert.equal(result.code, 0, result.stdout);
      assert.equal(
        result.stdout,
        "Available 'snappy-plain-basic' basebackups: \n" +
          "\n" +
          "Basebackup                                Backup size    Orig size  Start time          \n" +
          "----------------------------------------  -----------  -----------  --------------------\n" +
          "snappy-plain-basic/basebackup/2026-11-24_06-21_0         7 MB        38 MB  2026-11-24T06:23:22Z\n",
      );
      const verbose = await runRestoreCli(["list-basebackups", "--config", config, "--verbose"]);
      assert.match(
        verbose.stdout,
        /\n    metadata: \{'backup-decision-time': '2026-11-24T06:21:44.900468\+00:00', 'backup-reason': 'requested', /,
      );
    });

    it("list-basebackups-http shows the daemon's list in the same format", async () => {
      const env = await makeDaemonEnv({ "snappy-plain-basic": { pgDataDirectory: path.join(work, "none") } });
      const site = (env.config.backup_sites as Record<string, Record<string, unknown>>)["snappy-plain-basic"];
      site.object_storage = {
        storage_type: "local",
        directory: path.join(pghoardMadeDir, "snappy-plain-basic", "store"),
      };
      site.active = false;
      await env.writeConfig();
      const daemon = await DaemonProcess.start(env);
      try {
        const result = await runRestoreCli([
          "list-basebackups-http",
          "--port",
          String(env.port),
          "--site",
          "snappy-plain-basic",
        ]);
        assert.equal(result.code, 0, result.stdout + result.stderr);
        assert.match(result.stdout, /^Available 'snappy-plain-basic' basebackups: \n\n/);
        assert.match(
          result.stdout,
          /\nsnappy-plain-basic\/basebackup\/2026-11-24_06-21_0         7 MB        38 MB  2026-11-24T06:23:22Z\n$/,
        );
        // Without --port, the daemon's port (and credentials) come from --config.
        const fromConfig = await runRestoreCli([
          "list-basebackups-http",
          "--config",
          env.configPath,
          "--site",
          "snappy-plain-basic",
        ]);
        assert.equal(fromConfig.code, 0, fromConfig.stdout + fromConfig.stderr);
        assert.equal(fromConfig.stdout, result.stdout);
      } finally {
        await daemon.stop();
        await rm(env.dir, { recursive: true, force: true });
      }
    });

    it("refuses a non-empty target without --overwrite and leaves it alone; --overwrite replaces it", async () => {
      const config = await writeFixtureConfig("zstd-plain-localtar", work);
      const target = path.join(work, "nonempty");
      await mkdir(target);
      await writeFile(path.join(target, "keep-me"), "x");
      const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target]);
      assert.equal(result.code, 1);
      assert.match(
        result.stdout,
        /FATAL: RestoreError: \$PGDATA target directory '.*nonempty' exists, is not empty and --overwrite not specified, aborting\./,
      );
      assert.deepEqual(await readdir(target), ["keep-me"]);
      const status = path.join(work, "status.json");
      const ok = await runRestoreCli([
        "--status-output-file",
        status,
        "get-basebackup",
        "--config",
        config,
        "--target-dir",
        target,
        "--overwrite",
      ]);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.ok(!existsSync(path.join(target, "keep-me")));
      assert.ok(existsSync(path.join(target, "global", "pg_control")));
      assert.ok(existsSync(path.join(target, "standby.signal")));
      assert.match(ok.stdout, /Download progress: 100\.00% \(4 \/ 4 MiB\)\n/);
      const statusJson = JSON.parse(await readFile(status, "utf8")) as Record<string, number>;
      assert.deepEqual(Object.keys(statusJson), ["downloaded_bytes", "progress_percent", "total_bytes"]);
      assert.equal(statusJson.progress_percent, 1);
      assert.equal(statusJson.downloaded_bytes, statusJson.total_bytes);
    });

    it("unknown backup name, two targets, bad time, unknown tablespace: clear errors, nothing created", async () => {
      const config = await writeFixtureConfig("zstd-plain-localtar", work);
      const target = path.join(work, "never");
      const cases: Array<[string[], RegExp]> = [
        [["--basebackup", "2026-11-24_06-21_0"], /FATAL: RestoreError: No applicable basebackup found, exiting/],
        [
          ["--recovery-target-name", "a", "--recovery-target-xid", "5"],
          /FATAL: RestoreError: Specify at most one of recovery_target_name, recovery_target_time or recovery_target_xid\n/,
        ],
        [
          ["--recovery-target-lsn", "0/1", "--recovery-target-immediate"],
          /FATAL: RestoreError: Specify at most one of/,
        ],
        [["--recovery-target-time", "not a time"], /FATAL: RestoreError: recovery_target_time 'not a time': /],
        [["--recovery-target-time", "2020-01-01"], /FATAL: RestoreError: No applicable basebackups found, exiting/],
        [
          ["--tablespace-dir", "nosuch=/tmp"],
          /Tablespace mapping for \['nosuch'\] was requested, but the tablespaces are not present in the backup/,
        ],
        [["--tablespace-dir", "nosuch"], /Invalid tablespace mapping/],
      ];
      for (const [args, expected] of cases) {
        const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target, ...args]);
        assert.equal(result.code, 1, `${args.join(" ")}: ${result.stdout}`);
        assert.match(result.stdout, expected);
        assert.ok(!existsSync(target), `${args.join(" ")} created the target`);
      }
    });

    it("a missing private key names the object and the key; nothing is created", async () => {
      const config = await writeFixtureConfig("snappy-enc-localtar", work, {});
      const raw = JSON.parse(await readFile(config, "utf8")) as {
        backup_sites: Record<string, { encryption_keys: Record<string, Record<string, string>> }>;
      };
      delete raw.backup_sites["snappy-enc-localtar"].encryption_keys["snappy-enc-localtar-key"].private;
      await writeFile(config, JSON.stringify(raw));
      const target = path.join(work, "nokey");
      const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target]);
      assert.equal(result.code, 1);
      assert.match(
        result.stdout,
        /FATAL: RestoreError: Object 'snappy-enc-localtar\/basebackup\/2026-11-24_06-19_0.00000000.pghoard' is encrypted with key 'snappy-enc-localtar-key', but no private key for it is configured/,
      );
      assert.ok(!existsSync(target));
    });

    it("moved_from: backups of the earlier site are listed and restored through its own store", async () => {
      const config = path.join(work, "moved.json");
      const newStore = path.join(work, "new-store");
      await mkdir(newStore, { recursive: true });
      await writeFile(
        config,
        JSON.stringify({
          backup_location: path.join(work, "moved-spool"),
          backup_sites: {
            current: {
              object_storage: { storage_type: "local", directory: newStore },
              moved_from: ["zstd-plain-localtar"],
              nodes: [],
            },
            "zstd-plain-localtar": {
              active: false,
              object_storage: {
                storage_type: "local",
                directory: path.join(pghoardMadeDir, "zstd-plain-localtar", "store"),
              },
              nodes: [],
            },
          },
        }),
      );
      const list = await runRestoreCli(["list-basebackups", "--config", config, "--site", "current"]);
      assert.equal(list.code, 0, list.stdout);
      assert.match(list.stdout, /^Available 'current' basebackups: \n/);
      assert.match(
        list.stdout,
        /\nzstd-plain-localtar\/basebackup\/2026-11-24_06-21_0\.00000000\.pghoard +3 MB +39 MB  2026-11-24T06:21:20Z\n$/,
      );
      const target = path.join(work, "moved-restore");
      const result = await runRestoreCli([
        "get-basebackup",
        "--config",
        config,
        "--site",
        "current",
        "--target-dir",
        target,
      ]);
      assert.equal(result.code, 0, result.stdout + result.stderr);
      assert.ok(existsSync(path.join(target, "global", "pg_control")));
      assert.match(await readFile(path.join(target, "postgresql.auto.conf"), "utf8"), /--site current --output %p/);
    });

    it("--preserve-until writes a preservation request, cancelled after success unless told otherwise", async () => {
      const copy = path.join(work, "store-preserve");
      await cp(path.join(pghoardMadeDir, "zstd-plain-localtar", "store"), copy, { recursive: true });
      const config = await writeFixtureConfig("zstd-plain-localtar", work);
      const raw = JSON.parse(await readFile(config, "utf8")) as {
        backup_sites: Record<string, { object_storage: { directory: string } }>;
      };
      raw.backup_sites["zstd-plain-localtar"].object_storage.directory = copy;
      await writeFile(config, JSON.stringify(raw));
      const requests = path.join(copy, "zstd-plain-localtar", "preservation_request");
      const keep = await runRestoreCli([
        "get-basebackup",
        "--config",
        config,
        "--target-dir",
        path.join(work, "preserve-1"),
        "--preserve-until",
        "2030-01-02T03:04:05Z",
        "--no-cancel-preserve-on-success",
      ]);
      assert.equal(keep.code, 0, keep.stdout + keep.stderr);
      const name = "2026-11-24_06-21_0.00000000.pghoard_2030-01-02 03:04:05+00:00";
      assert.deepEqual((await readdir(requests)).sort(), [name, `${name}.metadata`]);
      const metadata = JSON.parse(await readFile(path.join(requests, `${name}.metadata`), "utf8")) as Record<
        string,
        string
      >;
      assert.equal(metadata["preserve-backup"], "2026-11-24_06-21_0.00000000.pghoard");
      assert.equal(metadata["preserve-until"], "2030-01-02 03:04:05+00:00");
      const cancel = await runRestoreCli([
        "get-basebackup",
        "--config",
        config,
        "--target-dir",
        path.join(work, "preserve-2"),
        "--preserve-until",
        "2031-01-01",
      ]);
      assert.equal(cancel.code, 0, cancel.stdout + cancel.stderr);
      assert.deepEqual(
        (await readdir(requests)).sort(),
        [name, `${name}.metadata`],
        "the second request was cancelled",
      );
    });

    for (const damage of ["truncated", "tampered"] as const) {
      it(`a ${damage} chunk stops the restore naming the object; the target is removed`, async () => {
        const set = damage === "truncated" ? "zstd-plain-localtar" : "snappy-enc-localtar";
        const copy = path.join(work, `store-${damage}`);
        await cp(path.join(pghoardMadeDir, set, "store"), copy, { recursive: true });
        const chunkDir = path.join(copy, set, "basebackup_chunk");
        const [backupDir] = await readdir(chunkDir);
        const chunk = (await readdir(path.join(chunkDir, backupDir))).filter((n) => !n.endsWith(".metadata")).sort()[3];
        const chunkPath = path.join(chunkDir, backupDir, chunk);
        if (damage === "truncated") {
          await truncate(chunkPath, 50_000);
        } else {
          const fh = await open(chunkPath, "r+");
          const byte = Buffer.alloc(1);
          await fh.read(byte, 0, 1, 5000);
          byte[0] ^= 0x55;
          await fh.write(byte, 0, 1, 5000);
          await fh.close();
        }
        const config = await writeFixtureConfig(set, work);
        const raw = JSON.parse(await readFile(config, "utf8")) as {
          backup_sites: Record<string, { object_storage: { directory: string } }>;
        };
        raw.backup_sites[set].object_storage.directory = copy;
        await writeFile(config, JSON.stringify(raw));
        const target = path.join(work, `damaged-${damage}`);
        const result = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target]);
        assert.equal(result.code, 1, result.stdout);
        const key = `${set}/basebackup_chunk/${backupDir}/${chunk}`;
        assert.ok(
          result.stdout.includes(
            `FATAL: RestoreError: Backup download/extraction failed with 1 errors: Object '${key}' is corrupt or was tampered with: `,
          ),
          result.stdout,
        );
        assert.match(result.stderr, /failed\. Removed '.*'.*run pghoard_restore get-basebackup again/s);
        assert.ok(!existsSync(target), "the half-restored target is removed");
      });
    }
  });

  it("v2 backup with a tablespace whose path is gone: --tablespace-base-dir places it in <base>/<oid>", async () => {
    const store = path.join(work, "ts-store");
    const storage = await createStorage({ storage_type: "local", directory: store });
    const tarOf = async (
      members: Array<{ name: string; type?: "file" | "directory"; data?: string }>,
    ): Promise<Buffer> => {
      const pack = tarStream.pack();
      const chunks: Buffer[] = [];
      pack.on("data", (c: unknown) => {
        chunks.push(c as Buffer);
      });
      const done = new Promise<void>((resolve) => pack.on("end", () => resolve()));
      for (const m of members)
        pack.entry(
          { name: m.name, type: m.type ?? "file", mode: m.type === "directory" ? 0o700 : 0o600 },
          m.data ?? "",
        );
      pack.finalize();
      await done;
      return Buffer.concat(chunks);
    };
    const chunk = await tarOf([
      { name: "pgdata/PG_VERSION", data: "15\n" },
      { name: "pgdata/base", type: "directory" },
      { name: "tablespaces/space", type: "directory" },
      { name: "tablespaces/space/PG_15_202209061/5/16401", data: "table data" },
    ]);
    await storage.storeFileFromMemory("tssite/basebackup_chunk/bb/bb.00000001.pghoard", chunk, {
      format: "pghoard-bb-v2",
      "original-file-size": String(chunk.length),
    });
    const controlJson = JSON.stringify({
      pgdata: "/old/pgdata",
      pghoard_object: "basebackup",
      tablespaces: { space: { path: path.join(work, "gone", "space"), oid: 16400 } },
      chunks: [
        { chunk_filename: "bb/bb.00000001.pghoard", input_size: chunk.length, result_size: chunk.length, files: [] },
      ],
    });
    const control = await tarOf([
      { name: ".pghoard_tar_metadata.json", data: controlJson },
      { name: "pgdata/global/pg_control", data: "control" },
      { name: "pgdata/backup_label", data: "label" },
      { name: "pgdata/pg_wal", type: "directory" },
    ]);
    await storage.storeFileFromMemory("tssite/basebackup/bb.00000000.pghoard", control, {
      format: "pghoard-bb-v2",
      "start-time": "2026-01-01T00:00:00+00:00",
      "original-file-size": String(control.length),
      "total-size-enc": String(chunk.length),
    });
    await storage.close();
    const config = path.join(work, "ts.json");
    await writeFile(
      config,
      JSON.stringify({
        backup_location: path.join(work, "ts-spool"),
        backup_sites: { tssite: { object_storage: { storage_type: "local", directory: store }, nodes: [] } },
      }),
    );
    const base = path.join(work, "ts-base");
    await mkdir(base);
    const target = path.join(work, "ts-restore");
    const missing = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target]);
    assert.equal(missing.code, 1);
    assert.match(missing.stdout, /Tablespace 'space' target directory '.*gone\/space' does not exist, aborting\./);
    const result = await runRestoreCli([
      "get-basebackup",
      "--config",
      config,
      "--target-dir",
      target,
      "--tablespace-base-dir",
      base,
    ]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.match(result.stdout, /Using existing empty directory '.*ts-base\/16400' for tablespace 'space'/);
    assert.equal(await readFile(path.join(base, "16400", "PG_15_202209061", "5", "16401"), "utf8"), "table data");
    assert.equal(await readlink(path.join(target, "pg_tblspc", "16400")), path.join(base, "16400"));
    assert.equal(await readFile(path.join(target, "global", "pg_control"), "utf8"), "control");
    assert.ok(!existsSync(path.join(target, "tablespaces")) && !existsSync(path.join(target, "pgdata")));
    assert.ok(!existsSync(path.join(target, "global", "pg_control.pghoard_restore_incomplete")));
  });

  describe("crafted archives", () => {
    let store: string;
    let config: string;
    let outside: string;

    async function addBackup(
      name: string,
      members: Array<{ header: Partial<tarStream.Header> & { name: string }; data?: string }>,
    ): Promise<void> {
      const pack = tarStream.pack();
      const chunks: Buffer[] = [];
      pack.on("data", (c: unknown) => {
        chunks.push(c as Buffer);
      });
      const done = new Promise<void>((resolve) => pack.on("end", () => resolve()));
      for (const member of members) pack.entry(member.header, member.data ?? "");
      pack.finalize();
      await done;
      const data = Buffer.concat(chunks);
      const storage = await createStorage({ storage_type: "local", directory: store });
      await storage.storeFileFromMemory(`crafted/basebackup/${name}`, data, {
        "start-time": "2026-01-01T00:00:00+00:00",
        "original-file-size": String(data.length),
      });
      await storage.close();
    }

    before(async () => {
      store = path.join(work, "crafted-store");
      outside = path.join(work, "outside");
      await mkdir(outside);
      const pgVersion = { header: { name: "PG_VERSION", type: "file" as const, mode: 0o600 }, data: "15\n" };
      const control = { header: { name: "global/pg_control", type: "file" as const, mode: 0o600 }, data: "x" };
      await addBackup("dotdot", [
        pgVersion,
        { header: { name: `../outside/dotdot`, type: "file" }, data: "evil" },
        control,
      ]);
      await addBackup("absolute", [
        pgVersion,
        { header: { name: `${outside}/absolute`, type: "file" }, data: "evil" },
        control,
      ]);
      await addBackup("symlink-escape", [
        pgVersion,
        { header: { name: "evil", type: "symlink", linkname: outside } },
        { header: { name: "evil/through-link", type: "file" }, data: "evil" },
        control,
      ]);
      await addBackup("symlink-relative-escape", [
        pgVersion,
        { header: { name: "base/evil", type: "symlink", linkname: "../../outside" } },
        control,
      ]);
      await addBackup("symlink-then-write", [
        pgVersion,
        { header: { name: "inner", type: "symlink", linkname: "base" } },
        { header: { name: "inner/file", type: "file" }, data: "x" },
        control,
      ]);
      await addBackup("hardlink", [
        pgVersion,
        { header: { name: "hard", type: "link", linkname: "/etc/passwd" } },
        control,
      ]);
      await addBackup("fifo", [pgVersion, { header: { name: "fifo", type: "fifo" } }, control]);
      config = path.join(work, "crafted.json");
      await writeFile(
        config,
        JSON.stringify({
          backup_location: path.join(work, "crafted-spool"),
          backup_sites: { crafted: { object_storage: { storage_type: "local", directory: store }, nodes: [] } },
        }),
      );
    });

    const cases: Array<[string, RegExp]> = [
      [
        "dotdot",
        /Refusing to extract '\.\.\/outside\/dotdot' from object 'crafted\/basebackup\/dotdot': '\.\.' in a member name/,
      ],
      [
        "absolute",
        /Refusing to extract absolute member name '.*\/outside\/absolute' from object 'crafted\/basebackup\/absolute'/,
      ],
      [
        "symlink-escape",
        /Refusing to create symlink 'evil' -> '.*outside' from object 'crafted\/basebackup\/symlink-escape': it points outside the target directory/,
      ],
      ["symlink-relative-escape", /Refusing to create symlink 'base\/evil' -> '\.\.\/\.\.\/outside'/],
      ["symlink-then-write", /Refusing to extract 'inner\/file' .*goes through the symlink/],
      ["hardlink", /Refusing to extract hard link 'hard'/],
      ["fifo", /Unsupported tar member type 'fifo'/],
    ];
    for (const [name, expected] of cases) {
      it(`${name}: refused, nothing written outside, target removed`, async () => {
        const target = path.join(work, `crafted-${name}`);
        const result = await runRestoreCli([
          "get-basebackup",
          "--config",
          config,
          "--target-dir",
          target,
          "--basebackup",
          `crafted/basebackup/${name}`,
        ]);
        assert.equal(result.code, 1, result.stdout);
        assert.match(result.stdout, expected);
        assert.deepEqual(await readdir(outside), []);
        assert.ok(!existsSync(target));
      });
    }
  });
});

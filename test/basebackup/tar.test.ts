import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { buildControlTar } from "../../src/basebackup/control.js";
import { findTarMember, TAR_METADATA_FILENAME } from "../../src/catalog/index.js";
import {
  findFilesToBackup,
  splitFilesToChunks,
  tarChunk,
  type ChunkEntry,
  type WalkItem,
} from "../../src/basebackup/files.js";
import { jsonCompact, parseBackupLabel } from "../../src/basebackup/label.js";
import { handleReader, RECORD_SIZE, TarBuffer } from "../../src/basebackup/tar.js";

const quiet = { warn: () => undefined };

async function collect(gen: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of gen) parts.push(b);
  return Buffer.concat(parts);
}

async function toArray<T>(gen: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of gen) out.push(x);
  return out;
}

describe("tar writer", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "bb-tar-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("writes chunks GNU tar extracts exactly (long and non-ASCII names, symlinks, empty files, dirs)", async () => {
    const src = path.join(dir, "src");
    const longDir = path.join(src, "d".repeat(60), "e".repeat(60));
    await mkdir(longDir, { recursive: true });
    await writeFile(path.join(longDir, "f".repeat(90)), Buffer.alloc(3000, 7));
    await writeFile(path.join(src, "ünïcode"), "x");
    await writeFile(path.join(src, "empty"), "");
    const big = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    await writeFile(path.join(src, "big"), big);
    await symlink("big", path.join(src, "link"));
    const entries: ChunkEntry[] = [
      { archivePath: "pgdata", localPath: src, missingOk: false },
      { archivePath: `pgdata/${"d".repeat(60)}`, localPath: path.dirname(longDir), missingOk: false },
      { archivePath: `pgdata/${"d".repeat(60)}/${"e".repeat(60)}`, localPath: longDir, missingOk: false },
      {
        archivePath: `pgdata/${"d".repeat(60)}/${"e".repeat(60)}/${"f".repeat(90)}`,
        localPath: path.join(longDir, "f".repeat(90)),
        missingOk: false,
      },
      { archivePath: "pgdata/ünïcode", localPath: path.join(src, "ünïcode"), missingOk: false },
      { archivePath: "pgdata/empty", localPath: path.join(src, "empty"), missingOk: false },
      { archivePath: "pgdata/big", localPath: path.join(src, "big"), missingOk: false },
      { archivePath: "pgdata/link", localPath: path.join(src, "link"), missingOk: false },
      { archivePath: "pgdata/gone", localPath: path.join(src, "gone"), missingOk: true },
    ];
    const stats = { files: [] as string[], vanished: 0, dataBytes: 0 };
    const tar = await collect(tarChunk(entries, { log: quiet, bufferSize: 64 * 1024 }, stats));
    assert.equal(tar.length % RECORD_SIZE, 0);
    assert.equal(stats.vanished, 1);
    const out = path.join(dir, "out");
    await mkdir(out);
    await writeFile(path.join(dir, "chunk.tar"), tar);
    execFileSync("tar", ["-xf", path.join(dir, "chunk.tar"), "-C", out]);
    assert.deepEqual(await readFile(path.join(out, "pgdata", "big")), big);
    assert.equal(
      (await readFile(path.join(out, "pgdata", "d".repeat(60), "e".repeat(60), "f".repeat(90)))).length,
      3000,
    );
    assert.equal(await readFile(path.join(out, "pgdata", "ünïcode"), "utf8"), "x");
    assert.equal((await readFile(path.join(out, "pgdata", "empty"))).length, 0);
    const listing = execFileSync("tar", ["-tvf", path.join(dir, "chunk.tar")], { encoding: "utf8" });
    assert.match(listing, /pgdata\/link -> big/);
  });

  it("zero-pads a file that is shorter than its header size", async () => {
    const file = path.join(dir, "short");
    await writeFile(file, "abc");
    const tb = new TarBuffer(1024);
    tb.addEntry({ name: "x", type: "file", size: 2000, mode: 0o600, mtime: 0 });
    const handle = await open(file, "r");
    const read = await tb.appendFileData(handleReader(handle), 2000);
    await handle.close();
    assert.equal(read, 3);
    const tar = Buffer.concat([...tb.takeFull(), ...tb.finish()]);
    await writeFile(path.join(dir, "short.tar"), tar);
    const content = execFileSync("tar", ["-xOf", path.join(dir, "short.tar"), "x"]);
    assert.equal(content.length, 2000);
    assert.equal(content.subarray(0, 3).toString(), "abc");
    assert.ok(content.subarray(3).every((x) => x === 0));
  });

  it("walks $PGDATA with upstream's exclusions and splits chunks with open directories", async () => {
    const pgdata = path.join(dir, "pgdata");
    await mkdir(path.join(pgdata, "base", "1"), { recursive: true });
    await mkdir(path.join(pgdata, "pg_wal"), { recursive: true });
    await mkdir(path.join(pgdata, "global"), { recursive: true });
    for (let i = 0; i < 6; i++) await writeFile(path.join(pgdata, "base", "1", String(1000 + i)), Buffer.alloc(100));
    await writeFile(path.join(pgdata, "global", "pg_control"), "c");
    await writeFile(path.join(pgdata, "global", "1262"), "x");
    for (const n of [
      "postmaster.pid",
      "postmaster.opts",
      "backup_label",
      "tablespace_map",
      "a.tmp",
      "b.old",
      "c~",
      "pgsql_tmp1",
      "PG_VERSION",
    ]) {
      await writeFile(path.join(pgdata, n), "1");
    }
    await writeFile(path.join(pgdata, "base", "1", "pgsql_tmp123"), "1");
    const items: WalkItem[] = await toArray(findFilesToBackup(pgdata, {}, quiet));
    const archived = items
      .filter((i) => i.op !== "leave")
      .map((i) => i.archivePath)
      .sort();
    assert.deepEqual(archived, [
      "pgdata/PG_VERSION",
      "pgdata/base",
      "pgdata/base/1",
      ...Array.from({ length: 6 }, (_, i) => `pgdata/base/1/${1000 + i}`),
      "pgdata/global",
      "pgdata/global/1262",
    ]);
    async function* gen(): AsyncGenerator<WalkItem> {
      yield* items;
    }
    // every item 100 bytes except dirs (4096) — force several chunks
    const { chunks, totalFileCount } = await splitFilesToChunks(gen(), 250);
    assert.equal(totalFileCount, archived.length);
    assert.ok(chunks.length > 2);
    // a chunk that starts inside base/1 begins with the open directories
    const inner = chunks.find((c, idx) => idx > 0 && c.some((e) => e.archivePath.startsWith("pgdata/base/1/")));
    assert.ok(inner);
    assert.deepEqual(
      inner.slice(0, 2).map((e) => e.archivePath),
      ["pgdata/base", "pgdata/base/1"],
    );
  });

  it("builds the control tar in upstream's member order with compact JSON", async () => {
    const metadata = {
      backup_end_time: "2024-05-01T13:57:00.123456Z",
      backup_end_wal_segment: "000000010000000000000003",
      backup_start_time: "2024-05-01T13:56:02+00:00",
      backup_start_wal_segment: "000000010000000000000002",
      pgdata: "/var/lib/pg",
      pghoard_object: "basebackup" as const,
      pghoard_version: "x",
      tablespaces: { ts1: { path: "/ts", oid: 16384 } },
      host: "h",
      chunks: [],
    };
    const tar = buildControlTar({ metadata, pgControl: Buffer.from("ctl"), backupLabel: Buffer.from("label") });
    const json = findTarMember(tar, TAR_METADATA_FILENAME);
    assert.equal(json?.toString(), JSON.stringify(metadata));
    assert.equal(findTarMember(tar, "pgdata/global/pg_control")?.toString(), "ctl");
    await writeFile(path.join(dir, "control.tar"), tar);
    const names = execFileSync("tar", ["-tf", path.join(dir, "control.tar")], { encoding: "utf8" })
      .trim()
      .split("\n");
    assert.deepEqual(names, [
      TAR_METADATA_FILENAME,
      "pgdata/global/pg_control",
      "pgdata/backup_label",
      "pgdata/pg_dynshmem/",
      "pgdata/pg_log/",
      "pgdata/pg_replslot/",
      "pgdata/pg_snapshot/",
      "pgdata/pg_stat_tmp/",
      "pgdata/pg_tblspc/",
      "pgdata/pg_wal/",
      "pgdata/pg_wal/archive_status/",
      "pgdata/pg_xlog/",
      "pgdata/pg_xlog/archive_status/",
    ]);
  });
});

describe("label and JSON", () => {
  it("parses backup_label like upstream", () => {
    const label =
      "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n" +
      "BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2024-05-01 13:56:02 UTC\nLABEL: pghoard_base_backup\nSTART TIMELINE: 1\n";
    assert.deepEqual(parseBackupLabel(label), {
      startWalSegment: "000000010000000000000002",
      startTime: "2024-05-01T13:56:02+00:00",
    });
  });
  it("writes bigints as integers and escapes non-ASCII like Python", () => {
    assert.equal(jsonCompact({ a: 1700000000123456789n, b: "é" }), '{"a":1700000000123456789,"b":"\\u00e9"}');
  });
});

/**
 * Every basebackup format × every compression × with and without encryption, written with this
 * port's encoder into a local store and restored with `node bin/pghoard_restore.js`:
 * no format (one tarball), pghoard-bb-v1 (one tar with pgdata/ names and a tablespace in the
 * metadata), pghoard-bb-v2 (control tar + chunks), pghoard-delta-v1 (hash objects + embedded
 * files) and pghoard-delta-v2 (+ bundles and empty_dirs). The restored tree must be exact.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import tarStream from "tar-stream";

import { encodeBuffer, encodingMetadata, type CompressionAlgorithm } from "../../src/fileformat/index.js";
import { createStorage } from "../../src/storage/index.js";
import type { StorageBackend } from "../../src/storage/types.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { directoryManifest, runRestoreCli, type ManifestEntry } from "./helpers.js";

interface Member {
  name: string;
  type?: "file" | "directory" | "symlink";
  data?: Buffer;
  linkname?: string;
}

async function tarOf(members: Member[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  pack.on("data", (c: unknown) => {
    chunks.push(c as Buffer);
  });
  const done = new Promise<void>((resolve) => pack.on("end", () => resolve()));
  for (const m of members) {
    const type = m.type ?? "file";
    pack.entry(
      { name: m.name, type, linkname: m.linkname, mode: type === "directory" ? 0o700 : 0o600 },
      m.data ?? Buffer.alloc(0),
    );
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const blake2s = (data: Buffer): string => createHash("blake2s256").update(data).digest("hex");
const sha256 = (data: Buffer): string => createHash("sha256").update(data).digest("hex");

// The data directory every format restores to.
const files: Record<string, Buffer> = {
  PG_VERSION: Buffer.from("15\n"),
  "global/pg_control": randomBytes(8192),
  backup_label: Buffer.from("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
  "base/1/1259": randomBytes(300 * 1024),
  "base/1/2608": Buffer.alloc(64 * 1024, 7),
  "base/1/tiny": Buffer.from("tiny"),
  "base/1/empty": Buffer.alloc(0),
};
const tablespaceFile = { name: "PG_15_202209061/5/16401", data: randomBytes(20_000) };

function expectedManifest(withSymlink: boolean, tsLink?: string): ManifestEntry[] {
  const entries: ManifestEntry[] = Object.entries(files).map(([p, d]) => ({
    path: p,
    size: d.length,
    sha256: sha256(d),
  }));
  entries.push({ path: "pg_wal/", empty_dir: true });
  if (withSymlink) entries.push({ path: "base/link", symlink: "1" });
  if (tsLink) entries.push({ path: "pg_tblspc/16400", symlink: tsLink });
  return entries;
}

const ALGORITHMS: Array<CompressionAlgorithm | null> = ["snappy", "zstd", "lzma", null];

describe("restoring every format, compression and encryption written by this port", () => {
  let work: string;
  let storage: StorageBackend;
  let configPath: string;
  const keyId = "formats-key";
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const publicPem = publicKey.export({ type: "spki", format: "pem" }).toString();
  const privatePem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();

  before(async () => {
    work = await makeTempDir("restore-formats");
    storage = await createStorage({ storage_type: "local", directory: path.join(work, "store") });
    configPath = path.join(work, "pghoard.json");
    await writeFile(
      configPath,
      JSON.stringify({
        backup_location: path.join(work, "spool"),
        backup_sites: {
          site: {
            object_storage: { storage_type: "local", directory: path.join(work, "store") },
            encryption_key_id: keyId,
            encryption_keys: { [keyId]: { public: publicPem, private: privatePem } },
            nodes: [],
          },
        },
      }),
    );
  });
  after(async () => {
    await storage.close();
    await rm(work, { recursive: true, force: true });
  });

  async function put(
    key: string,
    plain: Buffer,
    algorithm: CompressionAlgorithm | null,
    encrypted: boolean,
    extra: Record<string, string>,
  ): Promise<number> {
    const opts = {
      algorithm,
      level: 0,
      encryptionKeyId: encrypted ? keyId : null,
      publicKeyPem: encrypted ? publicPem : null,
    };
    const stored = await encodeBuffer(plain, opts);
    await storage.storeFileFromMemory(`site/${key}`, stored, {
      ...encodingMetadata(opts),
      "original-file-size": String(plain.length),
      ...extra,
    });
    return stored.length;
  }

  const pgdataMembers = (prefix: string): Member[] => [
    { name: `${prefix}base`, type: "directory" },
    ...Object.entries(files)
      .filter(([p]) => p !== "global/pg_control" && p !== "backup_label")
      .map(([p, data]) => ({ name: prefix + p, data })),
    { name: `${prefix}base/link`, type: "symlink", linkname: "1" },
  ];
  const controlMembers = (json: object): Member[] => [
    { name: ".pghoard_tar_metadata.json", data: Buffer.from(JSON.stringify(json)) },
    { name: "pgdata/global/pg_control", data: files["global/pg_control"] },
    { name: "pgdata/backup_label", data: files.backup_label },
    { name: "pgdata/pg_wal", type: "directory" },
  ];

  async function writeBackup(
    format: string,
    name: string,
    algorithm: CompressionAlgorithm | null,
    encrypted: boolean,
    tsPath: string,
  ): Promise<void> {
    const startTime = { "start-time": "2026-01-01T00:00:00+00:00" };
    if (format === "none") {
      const tar = await tarOf([
        ...pgdataMembers(""),
        { name: "global/pg_control", data: files["global/pg_control"] },
        { name: "backup_label", data: files.backup_label },
        { name: "pg_wal", type: "directory" },
      ]);
      await put(`basebackup/${name}`, tar, algorithm, encrypted, startTime);
    } else if (format === "pghoard-bb-v1") {
      const tar = await tarOf([
        { name: ".pghoard_tar_metadata.json", data: Buffer.from("{}") },
        ...pgdataMembers("pgdata/"),
        { name: "tablespaces/space", type: "directory" },
        { name: `tablespaces/space/${tablespaceFile.name}`, data: tablespaceFile.data },
        ...controlMembers({}).slice(1),
      ]);
      await put(`basebackup/${name}`, tar, algorithm, encrypted, {
        ...startTime,
        format,
        "tablespace-name-16400": "space",
        "tablespace-path-16400": tsPath,
      });
    } else if (format === "pghoard-bb-v2") {
      const members = pgdataMembers("pgdata/");
      const chunkTars = [
        await tarOf(members.slice(0, 3)),
        await tarOf([{ name: "pgdata/base", type: "directory" }, ...members.slice(3)]),
        await tarOf([
          { name: "tablespaces/space", type: "directory" },
          { name: `tablespaces/space/${tablespaceFile.name}`, data: tablespaceFile.data },
        ]),
      ];
      const chunks = [];
      for (const [i, tar] of chunkTars.entries()) {
        const chunkFilename = `${name}/${name}.0000000${i + 1}.pghoard`;
        const resultSize = await put(`basebackup_chunk/${chunkFilename}`, tar, algorithm, encrypted, { format });
        chunks.push({ chunk_filename: chunkFilename, input_size: tar.length, result_size: resultSize, files: [] });
      }
      const control = await tarOf(
        controlMembers({
          pgdata: "/old",
          pghoard_object: "basebackup",
          tablespaces: { space: { path: tsPath, oid: 16400 } },
          chunks,
        }),
      );
      await put(`basebackup/${name}.00000000.pghoard`, control, algorithm, encrypted, { ...startTime, format });
    } else {
      // delta: big files as hash objects, small ones embedded, middle ones in a bundle (v2)
      const manifestFiles = [];
      const bundle: Member[] = [];
      for (const [p, data] of Object.entries(files)) {
        if (p === "global/pg_control" || p === "backup_label") continue;
        const entry = {
          relative_path: p,
          file_size: data.length,
          stored_file_size: 0,
          mtime_ns: 0,
          hexdigest: "",
          content_b64: null as string | null,
          should_be_bundled: false,
          missing_ok: false,
        };
        if (data.length <= 150) entry.content_b64 = data.toString("base64");
        else if (format === "pghoard-delta-v2" && data.length < 100 * 1024) {
          entry.should_be_bundled = true;
          bundle.push({ name: p, data });
        } else {
          entry.hexdigest = blake2s(data);
          entry.stored_file_size = await put(`basebackup_delta/${entry.hexdigest}`, data, algorithm, encrypted, {
            format,
          });
        }
        manifestFiles.push(
          format === "pghoard-delta-v1" ? { ...entry, should_be_bundled: undefined, missing_ok: undefined } : entry,
        );
      }
      const chunks = [];
      if (bundle.length > 0) {
        const tar = await tarOf(bundle);
        const chunkFilename = `${name}/${name}.00000001.pghoard`;
        const resultSize = await put(`basebackup_delta_chunk/${chunkFilename}`, tar, algorithm, encrypted, {
          format: "pghoard-bb-v2",
        });
        chunks.push({ chunk_filename: chunkFilename, input_size: tar.length, result_size: resultSize, files: [] });
      }
      const manifest = {
        start: "",
        end: "",
        snapshot_result: {
          state: {
            root_globs: ["**/*"],
            files: manifestFiles,
            empty_dirs: [".", "base", "base/1", "global", "pg_wal"],
          },
        },
      };
      const control = await tarOf(
        controlMembers({ pgdata: "/old", pghoard_object: "basebackup", tablespaces: {}, manifest, chunks }),
      );
      await put(`basebackup/${name}.00000000.pghoard`, control, algorithm, encrypted, { ...startTime, format });
    }
  }

  it("an unknown format is refused before anything is written", async () => {
    await put("basebackup/future", await tarOf([{ name: "PG_VERSION", data: Buffer.from("15\n") }]), null, false, {
      "start-time": "2026-01-01T00:00:00+00:00",
      format: "pghoard-bb-v9",
    });
    const target = path.join(work, "restore-future");
    const result = await runRestoreCli([
      "get-basebackup",
      "--config",
      configPath,
      "--target-dir",
      target,
      "--basebackup",
      "site/basebackup/future",
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /FATAL: RestoreError: Unrecognized basebackup format 'pghoard-bb-v9'\n/);
    assert.ok(!existsSync(target));
  });

  for (const format of ["none", "pghoard-bb-v1", "pghoard-bb-v2", "pghoard-delta-v1", "pghoard-delta-v2"]) {
    for (const algorithm of ALGORITHMS) {
      for (const encrypted of [true, false]) {
        const label = `${format} ${algorithm ?? "uncompressed"} ${encrypted ? "encrypted" : "plain"}`;
        it(label, async () => {
          const name = `${format}-${algorithm ?? "none"}-${encrypted ? "enc" : "plain"}`;
          const hasTablespace = format === "pghoard-bb-v1" || format === "pghoard-bb-v2";
          const tsOriginal = path.join(work, `ts-original-${name}`);
          await writeBackup(format, name, algorithm, encrypted, tsOriginal);
          const target = path.join(work, `restore-${name}`);
          const tsTarget = path.join(work, `ts-${name}`);
          if (hasTablespace) await mkdir(tsTarget);
          const key =
            format === "none" || format === "pghoard-bb-v1"
              ? `site/basebackup/${name}`
              : `site/basebackup/${name}.00000000.pghoard`;
          const result = await runRestoreCli([
            "get-basebackup",
            "--config",
            configPath,
            "--target-dir",
            target,
            "--basebackup",
            key,
            ...(hasTablespace ? ["--tablespace-dir", `space=${tsTarget}`] : []),
          ]);
          assert.equal(result.code, 0, result.stdout + result.stderr);
          const actual = (await directoryManifest(target)).filter(
            (e) => !["postgresql.auto.conf", "standby.signal"].includes(e.path),
          );
          const expected = expectedManifest(!format.startsWith("pghoard-delta"), hasTablespace ? tsTarget : undefined);
          assert.deepEqual(
            actual,
            expected.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
          );
          if (hasTablespace) {
            assert.equal(sha256(await readFile(path.join(tsTarget, tablespaceFile.name))), sha256(tablespaceFile.data));
          }
          assert.match(
            await readFile(path.join(target, "postgresql.auto.conf"), "utf8"),
            /^# pghoard created recovery.conf\n/,
          );
          await rm(target, { recursive: true, force: true });
        });
      }
    }
  }
});

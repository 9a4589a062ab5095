/** Objects written by upstream (Python) pghoard/rohmu decode to the recorded ground truth. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { FileFormatPool, createDecodeStream, decodeBuffer, type Metadata } from "../../src/fileformat/index.js";
import { fixturesDir, hasShared, sharedDir } from "../helpers/paths.js";
import { decodeIndependently } from "./support.js";
import { pipeline } from "node:stream/promises";
import { Readable, Writable } from "node:stream";

interface SiteConfig {
  backup_sites: Record<string, { encryption_keys?: Record<string, { private?: string; public?: string }> }>;
}

function keysOf(configPath: string): Map<string, string> {
  const config = JSON.parse(readFileSync(configPath, "utf8")) as SiteConfig;
  const keys = new Map<string, string>();
  for (const site of Object.values(config.backup_sites)) {
    for (const [id, pair] of Object.entries(site.encryption_keys ?? {})) if (pair.private) keys.set(id, pair.private);
  }
  return keys;
}

const sha256 = (data: Buffer): string => createHash("sha256").update(data).digest("hex");

/** Decodes through the main-thread stream in small odd-sized writes (exercises carry-over paths). */
async function decodeInPieces(stored: Buffer, metadata: Metadata, keys: Map<string, string>): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (let offset = 0, step = 1; offset < stored.length; offset += step, step = (step * 7 + 3) % 4099 || 1) {
    pieces.push(stored.subarray(offset, offset + step));
  }
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(pieces),
    createDecodeStream(metadata, (id) => keys.get(id)),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        out.push(chunk);
        cb();
      },
    }),
  );
  return Buffer.concat(out);
}

let pool: FileFormatPool;
let scratch: string;
before(async () => {
  pool = new FileFormatPool(2);
  scratch = await mkdtemp(path.join(os.tmpdir(), "ff-fixtures-"));
});
after(async () => {
  await pool.close();
  await rm(scratch, { recursive: true, force: true });
});

describe("upstream test data (test/fixtures/upstream-testdata)", () => {
  const root = path.join(fixturesDir, "upstream-testdata");
  const truth = JSON.parse(readFileSync(path.join(root, "decoded-ground-truth.json"), "utf8")) as Record<
    string,
    { objects?: Array<{ file: string; metadata: Metadata; decoded_size: number; decoded_sha256: string }> }
  >;
  for (const [dir, entry] of Object.entries(truth)) {
    if (!entry.objects) continue;
    const keys = keysOf(path.join(root, "data", dir, "config.json"));
    for (const object of entry.objects) {
      it(`${dir}/${object.file}`, async () => {
        const file = path.join(root, "data", dir, "chunks", object.file);
        const sidecar = JSON.parse(readFileSync(`${file}.metadata`, "utf8")) as Metadata;
        assert.deepEqual(sidecar, object.metadata);
        const stored = readFileSync(file);
        const decoded = await decodeBuffer(stored, sidecar, (id) => keys.get(id));
        assert.equal(decoded.length, object.decoded_size);
        assert.equal(sha256(decoded), object.decoded_sha256);
        assert.equal(sha256(await decodeInPieces(stored, sidecar, keys)), object.decoded_sha256);
        const keyId = sidecar["encryption-key-id"];
        const out = path.join(scratch, `${dir}-${object.file}`);
        const { size } = await pool.decodeFile(file, out, sidecar, keyId ? keys.get(keyId)! : null);
        assert.equal(size, object.decoded_size);
        assert.equal(sha256(await readFile(out)), object.decoded_sha256);
        // the independent decoder agrees, so the ground truth and our test parser are consistent
        const independent = decodeIndependently(
          stored,
          sidecar["compression-algorithm"] || null,
          keyId ? keys.get(keyId)! : null,
        );
        assert.equal(sha256(independent), object.decoded_sha256);
      });
    }
  }
});

describe(
  "objects made by upstream pghoard (../shared/fixtures/pghoard-made)",
  { skip: hasShared ? false : "../shared/fixtures is absent" },
  () => {
    const root = path.join(sharedDir, "fixtures", "pghoard-made");
    const sets = hasShared
      ? readdirSync(root).filter((name) => existsSync(path.join(root, name, "ground-truth.json")))
      : [];
    for (const set of sets) {
      it(`${set}: every stored object decodes to the recorded bytes`, async () => {
        const truth = JSON.parse(readFileSync(path.join(root, set, "ground-truth.json"), "utf8")) as {
          objects: Array<{
            key: string;
            metadata: Metadata;
            decoded_size: number;
            decoded_sha256: string;
            stored_size: number;
          }>;
        };
        const keys = keysOf(path.join(root, set, "pghoard.json"));
        assert.ok(truth.objects.length > 0);
        await Promise.all(
          truth.objects.map(async (object) => {
            const file = path.join(root, set, "store", object.key);
            const metadata = JSON.parse(await readFile(`${file}.metadata`, "utf8")) as Metadata;
            const keyId = metadata["encryption-key-id"];
            const out = path.join(scratch, `${set}-${object.key.replaceAll("/", "_")}`);
            const { size } = await pool.decodeFile(file, out, metadata, keyId ? keys.get(keyId)! : null);
            assert.equal(size, object.decoded_size, object.key);
            assert.equal(sha256(await readFile(out)), object.decoded_sha256, object.key);
            await rm(out);
            if (object.stored_size < 4 * 1024 * 1024) {
              const decoded = await decodeBuffer(await readFile(file), metadata, (id) => keys.get(id));
              assert.equal(sha256(decoded), object.decoded_sha256, object.key);
            }
          }),
        );
      });
    }
  },
);

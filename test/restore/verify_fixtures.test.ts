/**
 * `pghoard_restore verify` and `info` on backups written by upstream pghoard (../shared/fixtures/
 * pghoard-made): every set verifies, `info` finds the window the fixture's WAL allows, and a copy of
 * a store with one chunk, WAL segment or control object flipped, truncated or deleted fails with
 * that object named. The WAL segment checker alone catches a flipped byte in a record.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { cp, readFile, rm, stat, truncate, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { decodeBuffer } from "../../src/fileformat/index.js";
import { WalSegmentChecker } from "../../src/wal/index.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { FIXTURE_SETS, pghoardMadeDir, restoreCli, writeFixtureConfig } from "./helpers.js";

const skip = existsSync(pghoardMadeDir) ? false : "../shared/fixtures/pghoard-made is missing";

interface VerifyJson {
  ok: boolean;
  backups: Array<{ name: string; ok: boolean }>;
  wal: { segments: number; timelines: number[] };
  problems: Array<{ object: string; problem: string }>;
}

describe("verify and info on upstream-written backups", { skip }, () => {
  let work: string;
  before(async () => {
    work = await makeTempDir("verify-fixtures");
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  for (const set of FIXTURE_SETS) {
    it(`verifies every object of ${set}`, async () => {
      const config = await writeFixtureConfig(set, work);
      const { code, stdout } = await restoreCli(["verify", "--config", config, "--basebackup", "all", "--json"]);
      const report = JSON.parse(stdout) as VerifyJson;
      assert.deepEqual(report.problems, []);
      assert.equal(code, 0);
      assert.ok(report.backups.length >= 1 && report.backups.every((b) => b.ok));
      assert.ok(report.wal.segments >= 2);
    });
  }

  it("follows the timeline switch of snappy-enc-localtar and reports the window", async () => {
    const config = await writeFixtureConfig("snappy-enc-localtar", work);
    const { code, stdout } = await restoreCli(["info", "--config", config, "--json"]);
    assert.equal(code, 0);
    const info = JSON.parse(stdout) as {
      basebackups: Array<{ wal_chain_complete: boolean; encryption_key_id: string; start_lsn: string }>;
      wal: { chain: number[]; newest_segment: string; timelines: Array<{ timeline: number; gaps: unknown[] }> };
      recoverable_window: { earliest: { time: string }; latest: { time: string; segment: string } };
    };
    assert.deepEqual(info.wal.chain, [1, 2]);
    assert.equal(info.wal.newest_segment, "000000020000000000000007");
    assert.equal(info.basebackups[0].wal_chain_complete, true);
    assert.equal(info.basebackups[0].encryption_key_id, "snappy-enc-localtar-key");
    assert.equal(info.basebackups[0].start_lsn, "0/5000000");
    assert.equal(info.recoverable_window.earliest.time, "2026-11-24T06:19:37.990144+00:00");
    assert.equal(info.recoverable_window.latest.segment, "000000020000000000000007");
    assert.ok(info.recoverable_window.latest.time > info.recoverable_window.earliest.time);
    const text = await restoreCli(["info", "--config", config]);
    assert.match(text.stdout, /recovery follows timelines 1 -> 2/);
  });

  it("list-basebackups --json lists the same backups as the text", async () => {
    const config = await writeFixtureConfig("snappy-plain-basic", work);
    const json = JSON.parse((await restoreCli(["list-basebackups", "--config", config, "--json"])).stdout) as {
      basebackups: Array<{ name: string; size: number; metadata: Record<string, string> }>;
    };
    const text = (await restoreCli(["list-basebackups", "--config", config])).stdout;
    assert.equal(json.basebackups.length, 1);
    assert.ok(text.includes(json.basebackups[0].name));
    assert.equal(json.basebackups[0].metadata["basebackup-mode"], "basic");
  });

  describe("damaged copies of zstd-plain-localtar", () => {
    const set = "zstd-plain-localtar";
    let config: string;
    let store: string;
    before(async () => {
      store = path.join(work, "damaged-store");
      await cp(path.join(pghoardMadeDir, set, "store"), store, { recursive: true });
      config = await writeFixtureConfig(set, work);
      const raw = JSON.parse(await readFile(config, "utf8")) as {
        backup_sites: Record<string, { object_storage: { directory: string } }>;
      };
      raw.backup_sites[set].object_storage.directory = store;
      await writeFile(config, JSON.stringify(raw));
    });

    const bb = "2026-11-24_06-21_0";
    const objects = {
      chunk: `${set}/basebackup_chunk/${bb}/${bb}.00000003.pghoard`,
      control: `${set}/basebackup/${bb}.00000000.pghoard`,
      wal: `${set}/xlog/000000010000000000000013`,
    };
    const damages = {
      flipped: async (file: string) => {
        const data = await readFile(file);
        data[Math.floor(data.length / 2)] ^= 0x01;
        await writeFile(file, data);
      },
      truncated: async (file: string) => {
        const { size } = await stat(file);
        await truncate(file, Math.floor(size * 0.9));
      },
      missing: async (file: string) => unlink(file),
    };
    for (const [kind, key] of Object.entries(objects)) {
      for (const [damage, apply] of Object.entries(damages)) {
        it(`names the ${kind} when it is ${damage}`, async () => {
          const file = path.join(store, key);
          const original = await readFile(file);
          await apply(file);
          try {
            // A backup without its control object is not listed: name it.
            const args = ["verify", "--config", config, "--basebackup", bb];
            const { code, stdout } = await restoreCli([...args, "--json"]);
            const report = JSON.parse(stdout) as VerifyJson;
            assert.equal(code, 1);
            assert.equal(report.ok, false);
            const named = report.problems.filter((p) => p.object === key);
            assert.equal(named.length, 1, JSON.stringify(report.problems));
            if (damage === "missing") assert.match(named[0].problem, /missing/);
            const text = await restoreCli(args);
            assert.equal(text.code, 1);
            assert.match(text.stdout, new RegExp(`^  ${key.replace(/\./g, "\\.")}: `, "m"));
          } finally {
            await writeFile(file, original);
          }
        });
      }
    }

    it("passes again once every object is back", async () => {
      const { code } = await restoreCli(["verify", "--config", config]);
      assert.equal(code, 0);
    });
  });

  it("the WAL segment checker finds one flipped byte inside a record", async () => {
    const dir = path.join(pghoardMadeDir, "zstd-plain-localtar", "store", "zstd-plain-localtar", "xlog");
    const name = "000000010000000000000014";
    const metadata = JSON.parse(await readFile(path.join(dir, `${name}.metadata`), "utf8")) as Record<string, string>;
    const plain = await decodeBuffer(await readFile(path.join(dir, name)), metadata, () => undefined);
    const intact = new WalSegmentChecker(name);
    intact.update(plain);
    assert.ok(intact.finish().records > 1000);
    const damaged = Buffer.from(plain);
    damaged[100_000] ^= 0x10;
    const checker = new WalSegmentChecker(name);
    assert.throws(() => {
      checker.update(damaged);
      checker.finish();
    }, /CRC mismatch|pageaddr|magic|continuation|invalid length/);
  });
});

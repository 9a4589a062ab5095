/**
 * Bad command-line input and a broken key in the configuration: a usage error or one line naming
 * what is wrong, never a stack trace, and nothing written.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { describe, it } from "node:test";
import { ConfigError, loadConfig } from "../../src/config/index.js";
import { makeKeyPair, makeFakePgdata, runPostgresCommand } from "../daemon/helpers.js";
import { hasShared } from "../helpers/paths.js";
import { makeTempDir } from "../helpers/pgcluster.js";
import { pghoardMadeDir, runRestoreCli, writeFixtureConfig } from "../restore/helpers.js";

const ENC_SET = "snappy-enc-localtar";

/** A PEM whose base64 body lost some characters: still PEM-shaped, no longer a key. */
function damagedPem(pem: string): string {
  return pem.replace(/\n[A-Za-z0-9+/]{20}/, "\nAAAA");
}

describe("bad input", () => {
  it("pghoard_postgres_command --port 99999 is a usage error (exit 5), no RangeError", async () => {
    for (const port of ["99999", "-1", "65536"]) {
      const r = await runPostgresCommand([
        "--port",
        port,
        "--site",
        "s",
        "--xlog",
        "000000010000000000000001",
        "--output",
        "pg_wal/RECOVERYXLOG",
        "--mode",
        "restore",
      ]);
      assert.equal(r.code, 5, r.stderr);
      assert.match(r.stderr, new RegExp(`error: argument --port: ${port} is not a port number \\(0-65535\\)\\n$`));
      assert.doesNotMatch(r.stderr + r.stdout, /RangeError|\n\s+at /);
    }
  });

  it("pghoard_restore list-basebackups-http --port abc is a usage error (exit 2)", async () => {
    for (const port of ["abc", "70000"]) {
      const r = await runRestoreCli(["list-basebackups-http", "--site", "s", "--port", port]);
      assert.equal(r.code, 2, r.stdout + r.stderr);
      assert.match(r.stderr, /pghoard_restore list-basebackups-http: error: argument --port: /);
      assert.equal(r.stdout, "");
    }
  });

  it("a malformed private key in the config is reported naming the key, without the key", async () => {
    const dir = await makeTempDir("bad-key");
    const keys = makeKeyPair();
    const broken = damagedPem(keys.privatePem);
    const file = path.join(dir, "pghoard.json");
    await writeFile(
      file,
      JSON.stringify({
        backup_location: path.join(dir, "spool"),
        backup_sites: {
          s: {
            pg_data_directory: await makeFakePgdata(),
            nodes: [{ host: "127.0.0.1" }],
            encryption_key_id: "k1",
            encryption_keys: { k1: { public: keys.publicPem, private: broken } },
            object_storage: { storage_type: "local", directory: path.join(dir, "store") },
          },
        },
      }),
    );
    for (const tool of ["daemon", "restore"] as const) {
      await assert.rejects(loadConfig(file, { tool }), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /^backup_sites\.s\.encryption_keys\.k1\.private: not a usable RSA private key PEM: /);
        assert.ok(!err.message.includes(broken.split("\n")[2]), "no key material in the message");
        return true;
      });
    }
  });

  it(
    "pghoard_restore with a malformed private key: FATAL naming the key, not a corrupt object; nothing restored",
    { skip: hasShared && existsSync(path.join(pghoardMadeDir, ENC_SET)) ? false : "shared fixtures absent" },
    async () => {
      const work = await makeTempDir("bad-key-restore");
      const config = await writeFixtureConfig(ENC_SET, work);
      const raw = JSON.parse(await readFile(config, "utf8")) as {
        backup_sites: Record<string, { encryption_keys: Record<string, { private: string }> }>;
      };
      const keys = raw.backup_sites[ENC_SET].encryption_keys;
      const keyId = Object.keys(keys)[0];
      keys[keyId].private = damagedPem(keys[keyId].private);
      await writeFile(config, JSON.stringify(raw));
      const target = path.join(work, "pgdata");
      const r = await runRestoreCli(["get-basebackup", "--config", config, "--target-dir", target]);
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.equal(
        r.stdout.trim(),
        `FATAL: InvalidConfigurationError: backup_sites.${ENC_SET}.encryption_keys.${keyId}.private: not a usable RSA private key PEM: ${/PEM: (.*)$/.exec(r.stdout.trim())?.[1] ?? ""}`,
      );
      assert.doesNotMatch(r.stdout, /corrupt|tampered/);
      assert.equal(existsSync(target), false);
    },
  );
});

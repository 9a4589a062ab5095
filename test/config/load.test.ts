import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  ConfigError,
  connectionStringUsingPgpass,
  findPgBinary,
  getSiteFromConfig,
  loadConfig,
  nodeConnectionString,
  parsePgCommandVersion,
  pgMajorFromNumber,
  pgWalDirectory,
  privateKeyLookup,
  replicationConnectionInfo,
  resolveConfigPath,
  siteObjectStorageConfig,
  validateConfig,
  writePgpassEntry,
  type PghoardConfig,
  type SiteConfig,
} from "../../src/config/index.js";
import { hasShared, sharedDir } from "../helpers/paths.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-config-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function writeJson(name: string, value: unknown): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, typeof value === "string" ? value : JSON.stringify(value));
  return file;
}

async function rejectsWith(promise: Promise<unknown>, expected: string | RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `not a ConfigError: ${String(err)}`);
    if (typeof expected === "string") assert.equal(err.message, expected);
    else assert.match(err.message, expected);
    return true;
  });
}

describe("loadConfig", () => {
  test("missing file", async () => {
    const file = path.join(dir, "nope.json");
    await rejectsWith(loadConfig(file), `Configuration file '${file}' does not exist`);
  });

  test("invalid JSON carries the parser message and position", async () => {
    const file = await writeJson("bad.json", '{\n  "backup_location": "/b",\n  "http_port": ,\n}');
    await rejectsWith(
      loadConfig(file),
      new RegExp(`^Configuration file '${file}' does not contain valid JSON: .+line 3 column`),
    );
  });

  test("unreadable path", async () => {
    await rejectsWith(loadConfig(dir), `Configuration file '${dir}' can't be opened: IsADirectoryError (EISDIR)`);
  });

  test("PG_VERSION is read; unreadable is fatal for the daemon's active sites only", async () => {
    const pgdata = path.join(dir, "pgdata");
    await mkdir(pgdata, { recursive: true });
    const raw = {
      backup_location: path.join(dir, "spool"),
      backup_sites: {
        s: { pg_data_directory: pgdata, object_storage: { storage_type: "local", directory: path.join(dir, "store") } },
      },
    };
    const file = await writeJson("pg.json", raw);
    await rejectsWith(
      loadConfig(file, { tool: "daemon" }),
      /^backup_sites\.s\.pg_data_directory: Site 's': cannot read '.*PG_VERSION' \(ENOENT\)$/,
    );
    const restoreConfig = await loadConfig(file, { tool: "restore" });
    assert.equal(restoreConfig.backup_sites.s?.pg_data_directory_version, undefined);

    await writeFile(path.join(pgdata, "PG_VERSION"), "15\n");
    const cfg = await loadConfig(file, { tool: "daemon" });
    assert.equal(cfg.backup_sites.s?.pg_data_directory_version, "15");
    assert.equal(pgWalDirectory(cfg.backup_sites.s!), path.join(pgdata, "pg_wal"));

    await writeFile(path.join(pgdata, "PG_VERSION"), "9.6\n");
    const old = await loadConfig(file, { tool: "daemon" });
    assert.equal(pgWalDirectory(old.backup_sites.s!), path.join(pgdata, "pg_xlog"));
  });

  test("the spec's example configuration (config.md §8) loads", async () => {
    const example = {
      backup_location: "/var/lib/pghoard",
      alert_file_dir: "/var/lib/pghoard",
      json_state_file_path: "/var/lib/pghoard/pghoard_state.json",
      maintenance_mode_file: "/var/lib/pghoard/maintenance_mode_file",
      http_address: "127.0.0.1",
      http_port: 16000,
      compression: { algorithm: "snappy", level: 0 },
      hash_algorithm: "sha1",
      tar_executable: "pghoard_gnutaremu",
      backup_sites: {
        default: {
          active_backup_mode: "pg_receivexlog",
          basebackup_mode: "basic",
          basebackup_count: 2,
          basebackup_interval_hours: 24,
          nodes: [{ host: "127.0.0.1", port: 5432, user: "pghoard", password: "x", slot: "pghoard" }],
          pg_data_directory: "/var/lib/postgresql/16/main",
          object_storage: {
            storage_type: "s3",
            region: "eu-central-1",
            bucket_name: "pgbackups",
            aws_access_key_id: "...",
            aws_secret_access_key: "...",
          },
        },
      },
    };
    const warnings: string[] = [];
    const cfg = validateConfig(example, { tool: "daemon", warn: (m) => warnings.push(m) });
    assert.deepEqual(warnings, []);
    assertPreserved(example, cfg);
    const file = await writeJson("example.json", example);
    const loaded = await loadConfig(file, { tool: "restore" });
    assert.equal(siteObjectStorageConfig(loaded, "default").storage_type, "s3");
  });
});

describe("basebackup_count", () => {
  async function siteConfigFile(name: string, count: unknown): Promise<string> {
    const pgdata = path.join(dir, `pgdata-${name}`);
    await mkdir(pgdata, { recursive: true });
    await writeFile(path.join(pgdata, "PG_VERSION"), "15\n");
    return await writeJson(`${name}.json`, {
      backup_location: path.join(dir, "spool"),
      backup_sites: {
        s: {
          pg_data_directory: pgdata,
          nodes: [{ host: "127.0.0.1" }],
          basebackup_count: count,
          object_storage: { storage_type: "local", directory: path.join(dir, "store") },
        },
      },
    });
  }

  test("0 or below is refused at daemon load, naming the key and why", async () => {
    for (const count of [0, -1, -100]) {
      const file = await siteConfigFile(`count${count}`, count);
      await rejectsWith(
        loadConfig(file, { tool: "daemon" }),
        `backup_sites.s.basebackup_count: ${count} must be at least 1 (retention would delete every basebackup, the one just taken included)`,
      );
      // Tools that never delete backups only warn, so a restore still works with such a file.
      const warnings: string[] = [];
      await loadConfig(file, { tool: "restore", warn: (m) => warnings.push(m) });
      assert.equal(warnings.length, 1);
      assert.match(warnings[0], /basebackup_count: .* must be at least 1/);
    }
  });

  test("1, larger values and null (unlimited) load", async () => {
    for (const count of [1, 2, 30, null]) {
      const cfg = await loadConfig(await siteConfigFile(`ok${String(count)}`, count), { tool: "daemon" });
      assert.equal(cfg.backup_sites.s?.basebackup_count, count);
    }
  });
});

/** Every key of the file comes back unchanged (defaults only add keys). */
function assertPreserved(raw: unknown, resolved: unknown, where = ""): void {
  if (raw !== null && typeof raw === "object" && !Array.isArray(raw)) {
    for (const [k, v] of Object.entries(raw))
      assertPreserved(v, (resolved as Record<string, unknown>)[k], `${where}.${k}`);
    return;
  }
  assert.deepEqual(resolved, raw, `value at ${where} changed`);
}

describe(
  "configurations written for upstream pghoard",
  { skip: hasShared ? false : "../shared fixtures absent" },
  () => {
    for (const set of ["snappy-enc-localtar", "snappy-plain-basic", "zstd-plain-localtar"]) {
      test(`${set}/pghoard.json loads unchanged`, async () => {
        const file = path.join(sharedDir, "fixtures", "pghoard-made", set, "pghoard.json");
        const raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
        const warnings: string[] = [];
        const cfg = await loadConfig(file, { tool: "restore", warn: (m) => warnings.push(m) });
        assert.deepEqual(warnings, []);
        assertPreserved(raw, cfg);
        // The daemon's checks pass too, apart from the cluster that no longer exists.
        validateConfig(raw, { tool: "daemon" });
        const site = cfg.backup_sites[getSiteFromConfig(cfg)]!;
        assert.equal(site.prefix, set);
        if (site.encryption_key_id) {
          const pem = privateKeyLookup(site)(site.encryption_key_id);
          assert.ok(pem?.startsWith("-----BEGIN PRIVATE KEY-----"));
        }
      });
    }
  },
);

describe("resolveConfigPath", () => {
  test("--config wins over PGHOARD_CONFIG", () => {
    const saved = process.env.PGHOARD_CONFIG;
    try {
      process.env.PGHOARD_CONFIG = "/env.json";
      assert.equal(resolveConfigPath("/cli.json"), "/cli.json");
      assert.equal(resolveConfigPath(undefined), "/env.json");
      delete process.env.PGHOARD_CONFIG;
      assert.equal(resolveConfigPath(undefined), undefined);
    } finally {
      if (saved === undefined) delete process.env.PGHOARD_CONFIG;
      else process.env.PGHOARD_CONFIG = saved;
    }
  });
});

describe("getSiteFromConfig", () => {
  const two = { backup_sites: { b: {}, a: {} } } as unknown as PghoardConfig;
  test("upstream's three messages", () => {
    assert.throws(() => getSiteFromConfig({ backup_sites: {} }), {
      name: "ConfigError",
      message: "No backup sites defined in configuration",
    });
    assert.throws(() => getSiteFromConfig(two), {
      message: "Backup site not set and configuration file defines 2 sites: ['a', 'b']",
    });
    assert.throws(() => getSiteFromConfig(two, "x"), {
      message: "Site 'x' not defined in configuration file.  2 other sites are defined: ['a', 'b']",
    });
    assert.throws(() => getSiteFromConfig({ backup_sites: { a: {} } } as unknown as PghoardConfig, "x"), {
      message: "Site 'x' not defined in configuration file.  1 other site are defined: ['a']",
    });
  });
  test("the only site, or the named one", () => {
    assert.equal(getSiteFromConfig({ backup_sites: { only: {} } } as unknown as PghoardConfig), "only");
    assert.equal(getSiteFromConfig(two, "a"), "a");
  });
});

describe("keys and storage per site", () => {
  test("privateKeyLookup", () => {
    const site = {
      encryption_keys: { k1: { public: "PUB", private: "PRIV" }, k2: { public: "PUB2" } },
    } as unknown as SiteConfig;
    const lookup = privateKeyLookup(site);
    assert.equal(lookup("k1"), "PRIV");
    assert.equal(lookup("k2"), undefined);
    assert.equal(lookup("nope"), undefined);
    assert.equal(lookup("__proto__"), undefined);
  });
});

describe("connection strings and .pgpass", () => {
  test("replication keywords and rendering sorted key='value' pairs", () => {
    const node = { host: "db", port: 5432, user: "rep", password: "p'w\\x", slot: "s1", dbname: "postgres" };
    assert.deepEqual(replicationConnectionInfo(node), {
      host: "db",
      port: "5432",
      user: "rep",
      password: "p'w\\x",
      dbname: "replication",
      replication: "true",
    });
    assert.equal(
      nodeConnectionString(node, { replication: true }),
      "dbname='replication' host='db' password='p\\'w\\\\x' port='5432' replication='true' user='rep'",
    );
    assert.equal(nodeConnectionString({ host: "db" }), "host='db'");
  });

  test("a password moves to ~/.pgpass (0600), replacing the line for the same target", async () => {
    const home = await mkdtemp(path.join(dir, "home-"));
    await writeFile(path.join(home, ".pgpass"), "other:1:*:x:keep\ndb:5432:replication:rep:old\n");
    await chmod(path.join(home, ".pgpass"), 0o644);
    const node = { host: "db", port: 5432, user: "rep", password: "new:pw", slot: "s1" };
    const result = await connectionStringUsingPgpass(node, { replication: true, home });
    assert.equal(result.connectionString, "dbname='replication' host='db' port='5432' replication='true' user='rep'");
    assert.equal(result.slot, "s1");
    assert.equal(
      await readFile(path.join(home, ".pgpass"), "utf8"),
      "other:1:*:x:keep\ndb:5432:replication:rep:new\\:pw\n",
    );
    assert.equal((await stat(path.join(home, ".pgpass"))).mode & 0o777, 0o600);

    const defaults = await writePgpassEntry({ password: "pw" }, { home });
    assert.deepEqual(defaults, {});
    assert.ok((await readFile(path.join(home, ".pgpass"), "utf8")).endsWith("localhost:5432:*::pw\n"));
  });

  test("no password, no .pgpass", async () => {
    const home = await mkdtemp(path.join(dir, "home-"));
    assert.deepEqual(await writePgpassEntry({ host: "h" }, { home }), { host: "h" });
    assert.equal(existsSync(path.join(home, ".pgpass")), false);
  });
});

describe("PostgreSQL binary discovery", () => {
  test("version strings", () => {
    assert.equal(parsePgCommandVersion("pg_basebackup (PostgreSQL) 9.6.5"), 90605);
    assert.equal(parsePgCommandVersion("pg_basebackup (PostgreSQL) 13.2"), 130002);
    assert.equal(parsePgCommandVersion("pg_basebackup (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), 150018);
    assert.equal(parsePgCommandVersion("pg_receivewal (PostgreSQL) 15devel"), 150000);
    assert.equal(parsePgCommandVersion("pg_receivexlog (PostgreSQL) 9.5alpha1"), 90500);
    assert.equal(parsePgCommandVersion("pg_basebackup (PostgreSQL) 16beta2"), 160000);
    assert.equal(parsePgCommandVersion("pg_basebackup (PostgreSQL) 17rc1"), 170000);
    assert.equal(parsePgCommandVersion("pg_basebackup (PostgreSQL) 10.0"), 100000);
    assert.throws(() => parsePgCommandVersion("pg_basebackup 15"));
    assert.equal(pgMajorFromNumber(150004), "15");
    assert.equal(pgMajorFromNumber(90605), "9.6");
  });

  const bin15 = "/usr/lib/postgresql/15/bin";
  const have15 = existsSync(path.join(bin15, "pg_basebackup"));
  test("finds PostgreSQL 15's binaries", { skip: have15 ? false : "PostgreSQL 15 not installed" }, async () => {
    const base = { pg_bin_directory: bin15 } as unknown as SiteConfig;
    const bb = await findPgBinary(base, "pg_basebackup");
    assert.equal(bb.path, path.join(bin15, "pg_basebackup"));
    assert.equal(pgMajorFromNumber(bb.version), "15");
    const rx = await findPgBinary(base, "pg_receivexlog");
    assert.equal(rx.path, path.join(bin15, "pg_receivewal"));
    const byVersion = await findPgBinary(
      { pg_data_directory_version: "15" } as unknown as SiteConfig,
      "pg_receivexlog",
    );
    assert.equal(byVersion.path, path.join(bin15, "pg_receivewal"));
    const explicit = await findPgBinary(
      { pg_basebackup_path: path.join(bin15, "pg_basebackup") } as unknown as SiteConfig,
      "pg_basebackup",
    );
    assert.equal(explicit.version, bb.version);
  });

  test("not found: upstream's message", async () => {
    await assert.rejects(
      findPgBinary({ pg_basebackup_path: "/nonexistent/pg_basebackup" } as unknown as SiteConfig, "pg_basebackup", {
        siteName: "s",
      }),
      {
        name: "ConfigError",
        message: "Site 's' command 'pg_basebackup' not found from path /nonexistent/pg_basebackup",
      },
    );
    await assert.rejects(
      findPgBinary({ pg_bin_directory: dir } as unknown as SiteConfig, "pg_basebackup", {
        siteName: "s",
        wantedMajor: "15",
        searchPath: dir,
      }),
      { message: "Site 's' command 'pg_basebackup' not found from path None" },
    );
  });
});

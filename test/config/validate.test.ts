import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { describe, test } from "node:test";
import { ConfigError, validateConfig, type Tool } from "../../src/config/index.js";

const { publicKey: PUBLIC_PEM, privateKey: PRIVATE_PEM } = generateKeyPairSync("rsa", {
  modulusLength: 1024,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
});

type Json = Record<string, unknown>;

/** A minimal valid config with one site `s`; `site` and `top` are merged in. */
function config(site: Json = {}, top: Json = {}): Json {
  return {
    backup_location: "/var/lib/pghoard",
    backup_sites: {
      s: {
        nodes: [{ host: "127.0.0.1" }],
        pg_data_directory: "/var/lib/postgresql/15/main",
        object_storage: { storage_type: "local", directory: "/srv/backups" },
        ...site,
      },
    },
    ...top,
  };
}

function storage(object_storage: unknown): Json {
  return config({ object_storage });
}

interface Bad {
  name: string;
  raw: unknown;
  path: string;
  tool?: Tool;
  contains?: string;
  notContains?: string;
}

const malformed: Bad[] = [
  { name: "top level not an object", raw: [1, 2], path: "configuration must be a JSON object" },
  { name: "backup_sites is an array", raw: config({}, { backup_sites: [] }), path: "backup_sites" },
  { name: "site is a string", raw: config({}, { backup_sites: { s: "x" } }), path: "backup_sites.s" },
  {
    name: "http_port is a string",
    raw: config({}, { http_port: "16000" }),
    path: "http_port",
    contains: "expected an integer",
  },
  {
    name: "http_port out of range",
    raw: config({}, { http_port: 70000 }),
    path: "http_port",
    contains: "at most 65535",
  },
  { name: "compression is a string", raw: config({}, { compression: "snappy" }), path: "compression" },
  {
    name: "unknown compression algorithm",
    raw: config({}, { compression: { algorithm: "gzip" } }),
    path: "compression.algorithm",
    contains: '"gzip"',
  },
  {
    name: "fractional compression.thread_count",
    raw: config({}, { compression: { thread_count: 2.5 } }),
    path: "compression.thread_count",
  },
  {
    name: "lzma level out of range",
    raw: config({}, { compression: { algorithm: "lzma", level: 12 } }),
    path: "compression.level",
  },
  {
    name: "transfer.thread_count negative",
    raw: config({}, { transfer: { thread_count: -1 } }),
    path: "transfer.thread_count",
  },
  { name: "statsd.port not a number", raw: config({}, { statsd: { port: "x" } }), path: "statsd.port" },
  {
    name: "basebackup_count as a string",
    raw: config({ basebackup_count: "2" }),
    path: "backup_sites.s.basebackup_count",
    contains: "an integer or null",
  },
  {
    name: "basebackup_interval_hours as a string",
    raw: config({ basebackup_interval_hours: "24" }),
    path: "backup_sites.s.basebackup_interval_hours",
  },
  {
    name: "basebackup_hour out of range",
    raw: config({ basebackup_hour: 25, basebackup_minute: 0 }),
    path: "backup_sites.s.basebackup_hour",
  },
  {
    name: "unknown basebackup_mode for the daemon",
    raw: config({ basebackup_mode: "fast" }),
    path: "backup_sites.s.basebackup_mode",
    tool: "daemon",
  },
  {
    name: "pg_receivexlog.min_disk_free_bytes as a string",
    raw: config({ pg_receivexlog: { min_disk_free_bytes: "1G" } }),
    path: "backup_sites.s.pg_receivexlog.min_disk_free_bytes",
  },
  {
    name: "moved_from unknown site",
    raw: config({ moved_from: ["old"] }),
    path: "backup_sites.s.moved_from[0]",
    contains: "'old'",
  },
  { name: "moved_from as a string", raw: config({ moved_from: "old" }), path: "backup_sites.s.moved_from" },
  { name: "nodes not an array", raw: config({ nodes: "host=a" }), path: "backup_sites.s.nodes" },
  { name: "node entry a number", raw: config({ nodes: [5] }), path: "backup_sites.s.nodes[0]" },
  {
    name: "node string with an unterminated quote",
    raw: config({ nodes: ["host='a"] }),
    path: "backup_sites.s.nodes[0]",
    contains: "invalid connection_string fragment",
  },
  {
    name: "node string without =",
    raw: config({ nodes: ["host=a junk"] }),
    path: "backup_sites.s.nodes[0]",
    contains: "expecting key=value",
  },
  {
    name: "connection_string not a string",
    raw: config({ nodes: [{ connection_string: 5 }] }),
    path: "backup_sites.s.nodes[0].connection_string",
  },
  {
    name: "connection_string with other keys",
    raw: config({ nodes: [{ connection_string: "host=a", port: 5 }] }),
    path: "backup_sites.s.nodes[0].connection_string",
  },
  {
    name: "node keyword an object",
    raw: config({ nodes: [{ host: { a: 1 } }] }),
    path: "backup_sites.s.nodes[0].host",
  },
  {
    name: "node slot a number",
    raw: config({ nodes: [{ host: "a", slot: 3 }] }),
    path: "backup_sites.s.nodes[0].slot",
  },
  { name: "object_storage a string", raw: storage("s3"), path: "backup_sites.s.object_storage" },
  {
    name: "storage_type missing",
    raw: storage({ directory: "/x" }),
    path: "backup_sites.s.object_storage.storage_type",
    contains: "Site 's': storage_type not defined for object_storage",
  },
  {
    name: "unknown storage_type",
    raw: storage({ storage_type: "ftp" }),
    path: "backup_sites.s.object_storage.storage_type",
    contains: "unsupported storage type 'ftp'",
  },
  {
    name: "local without directory",
    raw: storage({ storage_type: "local" }),
    path: "backup_sites.s.object_storage.directory",
  },
  {
    name: "local directory equal to backup_location",
    raw: storage({ storage_type: "local", directory: "/var/lib/pghoard" }),
    path: "backup_sites.s.object_storage.directory",
    contains: "must be different from 'backup_location'",
  },
  {
    name: "s3 without region",
    raw: storage({ storage_type: "s3", bucket_name: "b" }),
    path: "backup_sites.s.object_storage.region",
  },
  {
    name: "s3 cert_path without is_verify_tls",
    raw: storage({ storage_type: "s3", region: "r", bucket_name: "b", cert_path: "/ca" }),
    path: "backup_sites.s.object_storage.cert_path",
  },
  {
    name: "s3 port not a number",
    raw: storage({ storage_type: "s3", region: "r", bucket_name: "b", host: "h", port: "http" }),
    path: "backup_sites.s.object_storage.port",
  },
  {
    name: "s3 proxy_info type",
    raw: storage({
      storage_type: "s3",
      region: "r",
      bucket_name: "b",
      proxy_info: { type: "ftp", host: "h", port: 1 },
    }),
    path: "backup_sites.s.object_storage.proxy_info.type",
  },
  {
    name: "google without project or bucket",
    raw: storage({ storage_type: "google" }),
    path: "backup_sites.s.object_storage",
    contains: "project_id",
  },
  {
    name: "azure without credentials",
    raw: storage({ storage_type: "azure", account_name: "a", bucket_name: "b" }),
    path: "backup_sites.s.object_storage",
    contains: "account_key",
  },
  {
    name: "azure host without port",
    raw: storage({ storage_type: "azure", account_name: "a", bucket_name: "b", account_key: "k", host: "h" }),
    path: "backup_sites.s.object_storage.port",
  },
  {
    name: "azure_cloud unknown",
    raw: storage({ storage_type: "azure", account_name: "a", bucket_name: "b", account_key: "k", azure_cloud: "mars" }),
    path: "backup_sites.s.object_storage.azure_cloud",
  },
  {
    name: "swift without key",
    raw: storage({ storage_type: "swift", user: "u", auth_url: "http://a", container_name: "c" }),
    path: "backup_sites.s.object_storage.key",
  },
  {
    name: "sftp without password or key",
    raw: storage({ storage_type: "sftp", server: "h", port: 22, username: "u" }),
    path: "backup_sites.s.object_storage",
    contains: "Password or private key required",
  },
  {
    name: "encryption_key_id without keys",
    raw: config({ encryption_key_id: "k1" }),
    path: "backup_sites.s.encryption_key_id",
    contains: "'k1'",
  },
  {
    name: "encryption key without public",
    raw: config({ encryption_key_id: "k1", encryption_keys: { k1: { private: PRIVATE_PEM } } }),
    path: "backup_sites.s.encryption_keys.k1.public",
  },
  {
    name: "encryption public key not PEM",
    raw: config({ encryption_key_id: "k1", encryption_keys: { k1: { public: "garbage" } } }),
    path: "backup_sites.s.encryption_keys.k1.public",
  },
  {
    name: "encryption_keys entry a string",
    raw: config({ encryption_keys: { k1: PUBLIC_PEM } }),
    path: "backup_sites.s.encryption_keys.k1",
  },
  {
    name: "daemon without pg_data_directory",
    raw: config({ pg_data_directory: undefined }),
    path: "backup_sites.s.pg_data_directory",
    tool: "daemon",
    contains: "Site 's': pg_data_directory must be set",
  },
  {
    name: "archive_sync without pg_data_directory",
    raw: config({ pg_data_directory: undefined }),
    path: "backup_sites.s.pg_data_directory",
    tool: "archive_sync",
  },
  {
    name: "daemon without backup_location",
    raw: config({}, { backup_location: null }),
    path: "backup_location",
    tool: "daemon",
  },
  {
    name: "no storage at all",
    raw: config({ object_storage: null }, { backup_location: null }),
    path: "backup_sites.s.object_storage",
  },
  {
    name: "basebackup_end_segment_timeout of 0",
    raw: config({ basebackup_end_segment_timeout: 0 }),
    path: "backup_sites.s.basebackup_end_segment_timeout",
    contains: "must be greater than 0",
  },
  {
    name: "basebackup_end_segment_timeout as a string",
    raw: config({ basebackup_end_segment_timeout: "60" }),
    path: "backup_sites.s.basebackup_end_segment_timeout",
  },
  {
    name: "site name with a dot",
    raw: { backup_location: "/b", backup_sites: { "a.b": { basebackup_count: "x" } } },
    path: 'backup_sites["a.b"].basebackup_count',
  },
  {
    name: "nodes as a string does not echo its password",
    raw: config({ nodes: "host=a password=sekrit" }),
    path: "backup_sites.s.nodes",
    notContains: "sekrit",
  },
  {
    name: "a broken node string does not echo its password",
    raw: config({ nodes: ["host=a password='sekrit"] }),
    path: "backup_sites.s.nodes[0]",
    notContains: "sekrit",
  },
  {
    name: "a private key in the wrong place is not echoed",
    raw: config({ encryption_keys: { k1: PRIVATE_PEM } }),
    path: "backup_sites.s.encryption_keys.k1",
    notContains: "MII",
  },
  {
    name: "a secret of the wrong type is not echoed",
    raw: config({}, { webserver_password: 987654321 }),
    path: "webserver_password",
    notContains: "987654321",
  },
];

describe("malformed configurations: one ConfigError naming the key path", () => {
  assert.ok(malformed.length >= 20);
  for (const bad of malformed) {
    test(bad.name, () => {
      const err = (() => {
        try {
          validateConfig(bad.raw, { ...(bad.tool ? { tool: bad.tool } : {}), cpuCount: 2 });
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
      const message = err.message;
      assert.ok(message.includes(bad.path), `message ${JSON.stringify(message)} does not name ${bad.path}`);
      if (bad.contains)
        assert.ok(message.includes(bad.contains), `message ${JSON.stringify(message)} lacks ${bad.contains}`);
      if (bad.notContains)
        assert.ok(!message.includes(bad.notContains), `message ${JSON.stringify(message)} leaks a secret`);
      assert.ok(!message.includes("\n"), "one line, no stack trace");
    });
  }
});

function warnings(
  raw: unknown,
  tool: Tool = "restore",
): { config: ReturnType<typeof validateConfig>; warnings: string[] } {
  const out: string[] = [];
  const cfg = validateConfig(raw, { tool, warn: (m) => out.push(m), cpuCount: 2 });
  return { config: cfg, warnings: out };
}

describe("values upstream tolerates produce warnings, not errors", () => {
  test("unknown keys at every level are kept and warned about", () => {
    const raw = config(
      {
        my_site_key: 1,
        object_storage: { storage_type: "local", directory: "/srv/b", extra: true },
        pg_receivexlog: { nope: 1 },
      },
      { something_new: "x", compression: { fancy: 1 } },
    );
    const { config: cfg, warnings: w } = warnings(raw);
    for (const path of [
      "something_new",
      "compression.fancy",
      "backup_sites.s.my_site_key",
      "backup_sites.s.object_storage.extra",
      "backup_sites.s.pg_receivexlog.nope",
    ]) {
      assert.ok(
        w.some((m) => m.startsWith(`${path}: unknown configuration key`)),
        `no warning for ${path}: ${w.join(" | ")}`,
      );
    }
    assert.equal(cfg.something_new, "x");
    assert.equal(cfg.backup_sites.s?.my_site_key, 1);
  });

  test("documentation typos get a hint", () => {
    const { warnings: w } = warnings(
      config(
        { basebackup_thread: 4 },
        { stats: {}, push_gateway: {}, active: true, transfer: { upload_retries_warning_limit: 3 } },
      ),
    );
    assert.ok(w.some((m) => m.startsWith("stats:") && m.includes("statsd")));
    assert.ok(w.some((m) => m.startsWith("push_gateway:") && m.includes("pushgateway")));
    assert.ok(w.some((m) => m.startsWith("active:")));
    assert.ok(w.some((m) => m.startsWith("transfer.upload_retries_warning_limit:")));
    assert.ok(w.some((m) => m.startsWith("backup_sites.s.basebackup_thread:") && m.includes("basebackup_threads")));
  });

  test("odd values are kept or read as upstream reads them", () => {
    const { config: cfg, warnings: w } = warnings(
      config(
        { active_backup_mode: "something", active: "yes" },
        { statsd: true, deleter_event_get_timeout: -1, log_level: "VERBOSE", syslog: 1 },
      ),
    );
    const site = cfg.backup_sites.s!;
    assert.equal(site.active_backup_mode, "something");
    assert.equal(site.active, true);
    assert.equal(cfg.statsd, undefined);
    assert.equal(cfg.deleter_event_get_timeout, 1);
    assert.equal(cfg.log_level, "VERBOSE");
    assert.equal(cfg.syslog, true);
    for (const path of [
      "backup_sites.s.active_backup_mode",
      "backup_sites.s.active",
      "statsd",
      "deleter_event_get_timeout",
      "log_level",
      "syslog",
    ]) {
      assert.ok(
        w.some((m) => m.startsWith(`${path}:`)),
        `no warning for ${path}`,
      );
    }
  });

  test("writer-only problems are warnings for tools that only read", () => {
    const raw = config({ basebackup_mode: "fast", encryption_key_id: "gone" }, { compression: { algorithm: "gzip" } });
    const { warnings: w } = warnings(raw, "restore");
    assert.ok(w.some((m) => m.startsWith("backup_sites.s.basebackup_mode:")));
    assert.ok(w.some((m) => m.startsWith("backup_sites.s.encryption_key_id:")));
    assert.ok(w.some((m) => m.startsWith("compression.algorithm:")));
    assert.throws(() => validateConfig(raw, { tool: "daemon" }), ConfigError);
  });

  test("inactive sites need no pg_data_directory, even for the daemon", () => {
    const raw = config({}, {});
    (raw.backup_sites as Json).old = {
      active: false,
      object_storage: { storage_type: "local", directory: "/srv/old" },
    };
    const { config: cfg } = warnings(raw, "daemon");
    assert.equal(cfg.backup_sites.old?.active, false);
  });

  test("a missing nodes list is a warning for the daemon", () => {
    const { config: cfg, warnings: w } = warnings(config({ nodes: undefined }), "daemon");
    assert.deepEqual(cfg.backup_sites.s?.nodes, []);
    assert.ok(w.some((m) => m.startsWith("backup_sites.s.nodes:")));
  });

  test("basebackup_hour without basebackup_minute", () => {
    const { warnings: w } = warnings(config({ basebackup_hour: 3 }));
    assert.ok(w.some((m) => m.startsWith("backup_sites.s.basebackup_hour:")));
  });

  test("object_storage values are converted like rohmu's pydantic models", () => {
    const { config: cfg, warnings: w } = warnings(
      storage({
        storage_type: "s3",
        region: "r",
        bucket_name: "b",
        host: "h",
        port: "9000",
        is_secure: "true",
        is_verify_tls: 0,
      }),
    );
    const s3 = cfg.backup_sites.s!.object_storage as Json;
    assert.equal(s3.port, 9000);
    assert.equal(s3.is_secure, true);
    assert.equal(s3.is_verify_tls, false);
    assert.equal(s3.addressing_style, "path");
    assert.equal(s3.use_dualstack_endpoint, true);
    assert.deepEqual(w, []);
  });

  test("warnings carry the config path prefix when given", () => {
    const out: string[] = [];
    validateConfig(config({}, { zzz: 1 }), { configPath: "/etc/pghoard.json", warn: (m) => out.push(m) });
    assert.deepEqual(out, ["/etc/pghoard.json: zzz: unknown configuration key, ignored"]);
  });
});

describe("defaults", () => {
  test("top-level defaults, CPU based ones included", () => {
    const cfg = validateConfig({}, { cpuCount: 4, cwd: "/work/dir" });
    assert.equal(cfg.backup_location, null);
    assert.deepEqual(cfg.backup_sites, {});
    assert.equal(cfg.alert_file_dir, "/work/dir");
    assert.equal(cfg.json_state_file_path, "/var/lib/pghoard/pghoard_state.json");
    assert.equal(cfg.maintenance_mode_file, "/var/lib/pghoard/maintenance_mode_file");
    assert.equal(cfg.http_address, "127.0.0.1");
    assert.equal(cfg.http_port, 16000);
    assert.equal(cfg.webserver_username, null);
    assert.equal(cfg.webserver_password, null);
    assert.equal(cfg.log_level, "INFO");
    assert.equal(cfg.syslog, false);
    assert.equal(cfg.syslog_address, "/dev/log");
    assert.equal(cfg.syslog_facility, "local2");
    assert.deepEqual(cfg.compression, { algorithm: "snappy", level: 0, thread_count: 5 });
    assert.deepEqual(cfg.transfer, { thread_count: 7 });
    assert.equal(cfg.restore_prefetch, 7);
    assert.equal(cfg.restore_process_count, 5);
    assert.equal(cfg.upload_retries_warning_limit, 3);
    assert.equal(cfg.tar_executable, "pghoard_gnutaremu");
    assert.equal(cfg.hash_algorithm, "sha1");
    assert.equal(cfg.graceful_shutdown_compression_timeout, 180);
    assert.equal(cfg.graceful_shutdown_upload_timeout, 300);
    assert.equal(cfg.deleter_event_get_timeout, 1);
    assert.equal(cfg.path_prefix, "");
    assert.equal(cfg.statsd, undefined);
  });

  test("CPU based defaults are capped at 20", () => {
    const cfg = validateConfig({}, { cpuCount: 64 });
    assert.equal(cfg.compression.thread_count, 65);
    assert.equal(cfg.transfer.thread_count, 20);
    assert.equal(cfg.restore_prefetch, 20);
    assert.equal(cfg.restore_process_count, 20);
  });

  test("restore_prefetch follows an explicit transfer.thread_count; explicit values win", () => {
    assert.equal(validateConfig({ transfer: { thread_count: 3 } }, { cpuCount: 8 }).restore_prefetch, 3);
    assert.equal(validateConfig({ transfer: { thread_count: 3 }, restore_prefetch: 0 }).restore_prefetch, 0);
  });

  test("alert_file_dir follows backup_location", () => {
    assert.equal(validateConfig({ backup_location: "/b" }).alert_file_dir, "/b");
  });

  test("site defaults", () => {
    const cfg = validateConfig({ backup_location: "/b", backup_sites: { main: {} } });
    const site = cfg.backup_sites.main!;
    assert.equal(site.active, true);
    assert.equal(site.active_backup_mode, "pg_receivexlog");
    assert.deepEqual(site.nodes, []);
    assert.equal(site.prefix, "main");
    assert.deepEqual(site.object_storage, { storage_type: "local", directory: "/b" });
    assert.equal(site.encryption_key_id, null);
    assert.deepEqual(site.encryption_keys, {});
    assert.equal(site.basebackup_mode, "basic");
    assert.equal(site.basebackup_interval_hours, 24);
    assert.equal(site.basebackup_end_segment_timeout, 300);
    assert.equal(site.basebackup_hour, undefined);
    assert.equal(site.basebackup_count, 2);
    assert.equal(site.basebackup_count_min, 2);
    assert.equal(site.basebackup_age_days_max, undefined);
    assert.equal(site.basebackup_chunk_size, 2147483648);
    assert.equal(site.basebackup_chunks_in_progress, 5);
    assert.equal(site.basebackup_threads, 1);
    assert.equal(site.basebackup_compression_threads, 0);
    assert.equal(site.basebackup_delta_mode_max_retries, 10);
    assert.equal(site.basebackup_delta_mode_min_delta_file_size, 10485760);
    assert.equal(site.basebackup_delta_mode_chunk_size, 524288000);
    assert.deepEqual(site.pg_receivexlog, {
      disk_space_check_interval: 10,
      min_disk_free_bytes: null,
      resume_multiplier: 1.5,
    });
    assert.deepEqual(site.moved_from, []);
  });

  test("null keeps its meaning", () => {
    const cfg = validateConfig(
      config({ basebackup_interval_hours: null, basebackup_count: null }, { graceful_shutdown_upload_timeout: null }),
    );
    assert.equal(cfg.backup_sites.s?.basebackup_interval_hours, null);
    assert.equal(cfg.backup_sites.s?.basebackup_count, null);
    assert.equal(cfg.graceful_shutdown_upload_timeout, null);
  });

  test("an empty object_storage is the legacy local store too", () => {
    const cfg = validateConfig(config({ object_storage: {} }));
    assert.deepEqual(cfg.backup_sites.s?.object_storage, { storage_type: "local", directory: "/var/lib/pghoard" });
  });

  test("statsd/pushgateway/prometheus get their defaults when present", () => {
    const cfg = validateConfig({ statsd: {}, pushgateway: { endpoint: "http://pg:9091" }, prometheus: {} });
    assert.deepEqual(cfg.statsd, { host: "127.0.0.1", port: 8125, format: "telegraf", tags: {} });
    assert.deepEqual(cfg.pushgateway, { endpoint: "http://pg:9091", job: "pghoard", tags: {} });
    assert.deepEqual(cfg.prometheus, { tags: {} });
  });

  test("storage type defaults", () => {
    const swift = validateConfig(
      storage({ storage_type: "swift", user: "u", key: "k", auth_url: "http://a", container_name: "c" }),
    );
    assert.equal((swift.backup_sites.s?.object_storage as Json).auth_version, "2.0");
    assert.equal((swift.backup_sites.s?.object_storage as Json).segment_size, 3221225472);
    const azure = validateConfig(
      storage({ storage_type: "azure", account_name: "a", bucket_name: "b", sas_token: "t" }),
    );
    assert.equal((azure.backup_sites.s?.object_storage as Json).is_secure, true);
    assert.equal((azure.backup_sites.s?.object_storage as Json).azure_cloud, null);
  });

  test("null in an optional key without a default means unset, as upstream's .get() reads it", () => {
    const cfg = validateConfig(
      config(
        {
          pg_bin_directory: null,
          pg_basebackup_path: null,
          basebackup_hour: null,
          object_storage: { storage_type: "s3", region: "r", bucket_name: "b", host: null, prefix: null },
        },
        { pg_receivexlog_path: null },
      ),
      { tool: "restore" },
    );
    const site = cfg.backup_sites.s!;
    assert.equal("pg_bin_directory" in site, false);
    assert.equal("basebackup_hour" in site, false);
    assert.equal("host" in site.object_storage, false);
    assert.throws(
      () => validateConfig(config({ pg_data_directory: null }), { tool: "daemon" }),
      /pg_data_directory must be set/,
    );
    assert.throws(() => validateConfig(config({}, { http_port: null })), /http_port: expected an integer, got null/);
    assert.throws(
      () => validateConfig(storage({ storage_type: "local", directory: null })),
      /object_storage\.directory/,
    );
  });

  test("the input is not modified", () => {
    const raw = config();
    const before = JSON.stringify(raw);
    validateConfig(raw);
    assert.equal(JSON.stringify(raw), before);
  });
});

describe("legacy names", () => {
  test("stream_compression makes pipe the default basebackup_mode", () => {
    assert.equal(validateConfig(config({ stream_compression: true })).backup_sites.s?.basebackup_mode, "pipe");
    assert.equal(validateConfig(config({ stream_compression: false })).backup_sites.s?.basebackup_mode, "basic");
    assert.equal(
      validateConfig(config({ stream_compression: true, basebackup_mode: "delta" })).backup_sites.s?.basebackup_mode,
      "delta",
    );
  });

  test("path_prefix builds the site prefix like os.path.join, and is flagged deprecated", () => {
    const out: string[] = [];
    assert.equal(
      validateConfig(config({}, { path_prefix: "pg/prod" }), { warn: (m) => out.push(m) }).backup_sites.s?.prefix,
      "pg/prod/s",
    );
    assert.ok(out.some((m) => m.startsWith("path_prefix is deprecated")));
    assert.equal(validateConfig(config({}, { path_prefix: "pg/" })).backup_sites.s?.prefix, "pg/s");
    assert.equal(
      validateConfig(config({ prefix: "explicit" }, { path_prefix: "pg" })).backup_sites.s?.prefix,
      "explicit",
    );
  });

  test("top-level pg_*_path fall back into the site; the site value wins", () => {
    const cfg = validateConfig(
      config(
        { pg_receivexlog_path: "/site/pg_receivewal" },
        { pg_basebackup_path: "/top/pg_basebackup", pg_receivexlog_path: "/top/x" },
      ),
    );
    assert.equal(cfg.backup_sites.s?.pg_basebackup_path, "/top/pg_basebackup");
    assert.equal(cfg.backup_sites.s?.pg_receivexlog_path, "/site/pg_receivewal");
  });

  test("pg_xlog_directory is accepted and reported as ignored", () => {
    const out: string[] = [];
    validateConfig(config({ pg_xlog_directory: "/x" }), { warn: (m) => out.push(m) });
    assert.ok(out.some((m) => m.startsWith("backup_sites.s.pg_xlog_directory is deprecated")));
  });

  test("derived keys upstream writes are accepted silently", () => {
    const out: string[] = [];
    validateConfig(config({ pg_data_directory_version: "15", pg_basebackup_version: 150004, pg_version: 150004 }), {
      warn: (m) => out.push(m),
    });
    assert.deepEqual(out, []);
  });

  test("moved_from sites", () => {
    const raw = config({ moved_from: ["old"] });
    (raw.backup_sites as Json).old = {
      active: false,
      object_storage: { storage_type: "local", directory: "/srv/old" },
    };
    assert.deepEqual(validateConfig(raw).backup_sites.s?.moved_from, ["old"]);
  });
});

describe("node entries", () => {
  test("every accepted form normalizes to libpq keywords", () => {
    const cfg = validateConfig(
      config({
        nodes: [
          { host: "db1", port: 5432, user: "pghoard", password: "pw", sslmode: "require", slot: "slot1" },
          { connection_string: "host=db2 port=5433 user=u", slot: "slot2" },
          { connection_string: "postgresql://u@db3/x" },
          "host=db4 password='it\\'s secret' application_name = app",
          "postgres://us%40er:p%3Ass@db5:6000/mydb?sslmode=verify-full&application_name=a+b",
          "postgresql://[::1]:5434",
        ],
      }),
    );
    assert.deepEqual(cfg.backup_sites.s?.nodes, [
      { host: "db1", port: 5432, user: "pghoard", password: "pw", sslmode: "require", slot: "slot1" },
      { host: "db2", port: "5433", user: "u", slot: "slot2" },
      { host: "db3", user: "u", dbname: "x" },
      { host: "db4", password: "it's secret", application_name: "app" },
      {
        host: "db5",
        port: "6000",
        user: "us@er",
        password: "p:ss",
        dbname: "mydb",
        sslmode: "verify-full",
        application_name: "a b",
      },
      { host: "::1", port: "5434" },
    ]);
  });

  test("the spec's example node", () => {
    const cfg = validateConfig(
      config({ nodes: [{ host: "127.0.0.1", port: 5432, user: "pghoard", password: "x", slot: "pghoard" }] }),
    );
    assert.deepEqual(cfg.backup_sites.s?.nodes[0], {
      host: "127.0.0.1",
      port: 5432,
      user: "pghoard",
      password: "x",
      slot: "pghoard",
    });
  });
});

// Tests of src/common/logger.ts (kept beside the config tests: the logger's levels and syslog
// settings come from pghoard.json, and redactConfig is how configs get logged).
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import dgram from "node:dgram";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { afterEach, describe, test } from "node:test";
import { formatRecord, pythonAsctime } from "../../src/common/log_format.js";
import {
  configureLoggingFromConfig,
  createLogger,
  getLogger,
  getLogLevel,
  resetLogging,
  setLogLevel,
} from "../../src/common/logger.js";
import { redactConfig, scrubText } from "../../src/common/redact.js";
import { syslogLine } from "../../src/common/syslog.js";
import { validateConfig } from "../../src/config/index.js";

function capture(): { lines: string[]; write(text: string): void } {
  const lines: string[] = [];
  return {
    lines,
    write(text: string) {
      lines.push(...text.split("\n").filter((l) => l !== ""));
    },
  };
}

afterEach(() => resetLogging());

const { privateKey: PRIVATE_PEM } = generateKeyPairSync("rsa", {
  modulusLength: 1024,
  publicKeyEncoding: { type: "spki", format: "pem" },
  privateKeyEncoding: { type: "pkcs8", format: "pem" },
});

const SECRETS = [
  "hunter2",
  "AKIAsecretKEY",
  "azure-account-key",
  "sas=abc",
  "swift-key-1",
  "webpw",
  "sftp-pw",
  "gcs-secret",
];

describe("formats", () => {
  test("default: time, logger, thread, LEVEL, message separated by tabs", () => {
    const out = capture();
    createLogger({ destination: out, systemd: false });
    getLogger("pghoard.test").warn("disk %s", "full");
    assert.equal(out.lines.length, 1);
    assert.match(
      out.lines[0]!,
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\tpghoard\.test\tMainThread\tWARNING\tdisk full$/,
    );
  });

  test("--short-log, systemd, Python level names", () => {
    const out = capture();
    createLogger({ destination: out, shortLog: true, level: "DEBUG" });
    const log = getLogger("pghoard.x");
    log.debug("d");
    log.info("i");
    log.error("e");
    log.fatal("c");
    assert.deepEqual(out.lines, ["DEBUG\td", "INFO\ti", "ERROR\te", "CRITICAL\tc"]);
    assert.equal(
      formatRecord({ level: 30, msg: "m", name: "pghoard.y", thread: "Compressor-1" }, "systemd"),
      "pghoard.y Compressor-1 INFO: m",
    );
    assert.equal(pythonAsctime(new Date(2026, 0, 2, 3, 4, 5, 6)), "2026-01-02 03:04:05,006");
  });

  test("errors are printed with their stack", () => {
    const out = capture();
    createLogger({ destination: out, shortLog: true });
    getLogger("pghoard.x").error({ err: new Error("boom") }, "failed");
    assert.equal(out.lines[0], "ERROR\tfailed");
    assert.equal(out.lines[1], "Error: boom");
  });
});

describe("levels", () => {
  test("log_level, --debug and SIGHUP-style changes reach existing child loggers", () => {
    const out = capture();
    createLogger({ destination: out, shortLog: true, level: "WARNING" });
    const log = getLogger("pghoard.a");
    const child = log.child({ thread: "T" });
    log.info("hidden");
    child.info("hidden");
    assert.equal(setLogLevel("DEBUG"), true);
    assert.equal(getLogLevel(), "DEBUG");
    log.debug("shown");
    child.debug("shown too");
    createLogger({ destination: out, shortLog: true, level: "INFO", debug: true });
    log.debug("debug wins");
    assert.deepEqual(out.lines, ["DEBUG\tshown", "DEBUG\tshown too", "DEBUG\tdebug wins"]);
  });

  test("applying a loaded config keeps --short-log and sets log_level", () => {
    const out = capture();
    createLogger({ destination: out, shortLog: true, debug: true });
    configureLoggingFromConfig(validateConfig({ log_level: "WARNING" }));
    const log = getLogger("pghoard.cfg");
    log.info("hidden");
    log.warn("kept short");
    assert.deepEqual(out.lines, ["WARNING\tkept short"]);
  });

  test("an unknown level is reported and changes nothing", () => {
    const out = capture();
    createLogger({ destination: out, shortLog: true, level: "ERROR" });
    assert.equal(setLogLevel("LOUD"), false);
    assert.equal(getLogLevel(), "ERROR");
    assert.equal(out.lines.length, 1);
    assert.match(out.lines[0]!, /^ERROR\t.*LOUD/);
  });
});

describe("secrets never reach a log line", () => {
  const raw = {
    backup_location: "/b",
    webserver_password: "webpw",
    backup_sites: {
      s: {
        nodes: [{ host: "db", password: "hunter2" }, "host=db2 password='hunter2'", "postgres://u:hunter2@db3/x"],
        encryption_key_id: null,
        encryption_keys: { k: { private: PRIVATE_PEM } },
        object_storage: {
          storage_type: "s3",
          region: "r",
          bucket_name: "b",
          aws_secret_access_key: "AKIAsecretKEY",
          proxy_info: { type: "http", host: "p", port: 1, pass: "sftp-pw" },
        },
      },
      a: {
        object_storage: {
          storage_type: "azure",
          account_name: "n",
          bucket_name: "b",
          account_key: "azure-account-key",
          sas_token: "sas=abc",
        },
      },
      w: {
        object_storage: {
          storage_type: "swift",
          user: "u",
          key: "swift-key-1",
          auth_url: "http://a",
          container_name: "c",
        },
      },
      g: {
        object_storage: {
          storage_type: "google",
          bucket_name: "b",
          credentials: { type: "authorized_user", client_secret: "gcs-secret" },
        },
      },
    },
  };

  test("redactConfig of a whole resolved configuration", () => {
    const cfg = validateConfig(raw);
    const text = JSON.stringify(redactConfig(cfg));
    for (const secret of SECRETS) assert.ok(!text.includes(secret), `${secret} leaked`);
    assert.ok(!text.includes("PRIVATE KEY-----\\nMII"), "private key leaked");
    assert.ok(text.includes('"host":"db"'), "non-secrets stay");
    assert.ok(text.includes('"bucket_name":"b"'));
  });

  test("structured fields, messages and errors passed to the logger", () => {
    const out = capture();
    createLogger({ destination: out, level: "DEBUG" });
    const log = getLogger("pghoard.test");
    log.info({ config: validateConfig(raw) }, "loaded");
    log.debug({ node: { password: "hunter2" } }, "connecting with host=db password=hunter2 user=x");
    log.info(`url postgres://u:hunter2@db/x and ${PRIVATE_PEM}`);
    log.error({ err: new Error("auth failed for password='hunter2'") }, "failed");
    log.info(JSON.stringify({ webserver_password: "webpw", account_key: "azure-account-key" }));
    log.info({ key: "site/xlog/000000010000000000000001" }, "uploaded");
    const text = out.lines.join("\n");
    for (const secret of SECRETS) assert.ok(!text.includes(secret), `${secret} leaked: ${text}`);
    assert.ok(!/BEGIN PRIVATE KEY-----\s*MII/.test(text), "private key leaked");
    assert.ok(text.includes("site/xlog/000000010000000000000001"), "object keys are not secrets");
  });

  test("circular structures are logged without hanging", () => {
    const out = capture();
    createLogger({ destination: out, shortLog: true });
    const a: Record<string, unknown> = { password: "hunter2", name: "a" };
    a.self = a;
    getLogger("pghoard.c").info({ a }, "circular");
    assert.equal(out.lines.length, 1);
    assert.ok(!out.lines[0]!.includes("hunter2"));
  });

  test("scrubText", () => {
    assert.equal(scrubText("host=a password='x y' user=b"), "host=a password=[REDACTED] user=b");
    assert.equal(scrubText("https://user:pw@gw:9091/x"), "https://user:[REDACTED]@gw:9091/x");
    assert.equal(scrubText('{"password": "p"}'), '{"password": "[REDACTED]"}');
  });
});

describe("syslog", () => {
  test("RFC 3164 line", () => {
    const line = syslogLine({
      facility: 18,
      level: "WARNING",
      text: "pghoard.x MainThread WARNING: hi",
      date: new Date(2026, 10, 6, 1, 2, 3),
    });
    assert.equal(line, `<148>Nov  6 01:02:03 pghoard[${process.pid}]: pghoard.x MainThread WARNING: hi`);
  });

  test("UDP host:port", async () => {
    const server = dgram.createSocket("udp4");
    await new Promise<void>((resolve) => server.bind(0, "127.0.0.1", resolve));
    const port = server.address().port;
    const received = new Promise<string>((resolve) => server.once("message", (msg) => resolve(msg.toString())));
    const out = capture();
    createLogger({ destination: out, syslog: true, syslogAddress: `127.0.0.1:${port}`, syslogFacility: "local2" });
    getLogger("pghoard.sys").error("password=hunter2 it broke");
    const line = await received;
    server.close();
    assert.match(
      line,
      new RegExp(
        `^<147>\\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d \\S+ pghoard\\[${process.pid}\\]: pghoard\\.sys MainThread ERROR: password=\\[REDACTED\\] it broke$`,
      ),
    );
  });

  const unixDgram = (() => {
    try {
      return createRequire(import.meta.url)("unix-dgram") as {
        createSocket(type: string, listener: (buf: Buffer) => void): { bind(p: string): void; close(): void };
      };
    } catch {
      return undefined;
    }
  })();
  test("unix datagram socket (like /dev/log)", { skip: unixDgram ? false : "unix-dgram not installed" }, async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-syslog-"));
    const socketPath = path.join(dir, "log");
    let resolveLine: (line: string) => void = () => undefined;
    const received = new Promise<string>((resolve) => (resolveLine = resolve));
    const server = unixDgram!.createSocket("unix_dgram", (buf) => resolveLine(buf.toString()));
    server.bind(socketPath);
    try {
      const out = capture();
      createLogger({ destination: out, syslog: true, syslogAddress: socketPath, syslogFacility: "daemon" });
      getLogger("pghoard.sys").info("hello");
      const line = await received;
      assert.match(
        line,
        new RegExp(
          `^<30>\\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d pghoard\\[${process.pid}\\]: pghoard\\.sys MainThread INFO: hello$`,
        ),
      );
    } finally {
      server.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { constants, createPrivateKey, createPublicKey, privateDecrypt, publicEncrypt, randomBytes } from "node:crypto";
import { chown, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { loadConfig, privateKeyLookup } from "../../src/config/index.js";
import { repoRoot } from "../helpers/paths.js";

const BIN = path.join(repoRoot, "bin", "pghoard_create_keys.js");

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete childEnv[k];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: childEnv });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** The OAEP(SHA-1) round trip pghoa1 encryption relies on (file-format.md §2). */
function assertKeyPairWorks(publicPem: string, privatePem: string, bits: number): void {
  assert.match(publicPem, /^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n$/);
  assert.match(privatePem, /^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/);
  const pub = createPublicKey(publicPem);
  assert.equal(pub.asymmetricKeyType, "rsa");
  assert.equal(pub.asymmetricKeyDetails?.modulusLength, bits);
  assert.equal(pub.asymmetricKeyDetails?.publicExponent, 65537n);
  const blob = randomBytes(64);
  const encrypted = publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" }, blob);
  const decrypted = privateDecrypt(
    { key: createPrivateKey(privatePem), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" },
    encrypted,
  );
  assert.deepEqual(decrypted, blob);
}

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "pghoard-create-keys-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const noEnvConfig = { PGHOARD_CONFIG: undefined };

describe("pghoard_create_keys", () => {
  test("prints the configuration snippet (default 3072 bits)", async () => {
    const r = await run(["--site", "main", "--key-id", "k1"], noEnvConfig);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(
      r.stdout.startsWith('{\n    "backup_sites": {\n        "main": {\n            "encryption_key_id": "k1",'),
    );
    assert.ok(r.stdout.endsWith("}\n"));
    const snippet = JSON.parse(r.stdout) as {
      backup_sites: Record<
        string,
        { encryption_key_id: string; encryption_keys: Record<string, { private: string; public: string }> }
      >;
    };
    assert.deepEqual(Object.keys(snippet.backup_sites), ["main"]);
    const site = snippet.backup_sites.main!;
    assert.equal(site.encryption_key_id, "k1");
    assert.deepEqual(Object.keys(site.encryption_keys.k1!), ["private", "public"]);
    assertKeyPairWorks(site.encryption_keys.k1!.public, site.encryption_keys.k1!.private, 3072);
  });

  test("--bits and --opt=value syntax", async () => {
    const r = await run(["--site=s", "--key-id=k", "--bits=2048"], noEnvConfig);
    assert.equal(r.code, 0, r.stderr);
    const keys = (
      JSON.parse(r.stdout) as { backup_sites: { s: { encryption_keys: { k: { public: string; private: string } } } } }
    ).backup_sites.s.encryption_keys.k;
    assertKeyPairWorks(keys.public, keys.private, 2048);
  });

  test("without --config, --site is required", async () => {
    const r = await run(["--key-id", "k1"], noEnvConfig);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, "FATAL: Site must be defined if configuration file is not provided\n");
  });

  test("usage errors exit 2", async () => {
    for (const args of [[], ["--site", "s"], ["--key-id", "k", "--bits", "many"], ["--key-id", "k", "--bogus"]]) {
      const r = await run(args, noEnvConfig);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout, "");
      assert.ok(r.stderr.length > 0);
    }
  });

  test("an unusable --bits is one clear FATAL line, not an OpenSSL error (and is refused at once)", async () => {
    for (const bits of ["12", "1023", "100000000"]) {
      const r = await run(["--site", "s", "--key-id", "k", "--bits", bits], noEnvConfig);
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.equal(r.stdout, `FATAL: --bits ${bits}: the RSA key size must be between 1024 and 16384 bits\n`);
      assert.equal(r.stderr, "");
    }
  });

  test("--version and --help exit 0", async () => {
    assert.equal((await run(["--version"])).code, 0);
    const help = await run(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--key-id/);
  });

  test("--config adds the key to the file and rewrites it atomically, sorted, indent 4", async () => {
    const configPath = path.join(dir, "pghoard.json");
    const original = {
      http_port: 16001,
      backup_location: path.join(dir, "spool"),
      unknown_key_kept: { ä: [1, 2] },
      backup_sites: {
        only: {
          nodes: [{ host: "127.0.0.1" }],
          object_storage: { storage_type: "local", directory: path.join(dir, "store") },
          encryption_keys: { old: { public: "OLD" } },
        },
      },
    };
    await writeFile(configPath, JSON.stringify(original));
    const r = await run(["--key-id", "k2", "--bits", "1024"], { PGHOARD_CONFIG: configPath });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(
      r.stdout,
      `Saved new key_id 'k2' for site 'only' in '${configPath}'\n` +
        "NOTE: The pghoard daemon does not require the 'private' key in its configuration file, it can be stored elsewhere to improve security\n",
    );
    const text = await readFile(configPath, "utf8");
    assert.ok(text.endsWith("}\n"));
    assert.ok(text.startsWith('{\n    "backup_location": '), "keys sorted, indent 4");
    assert.ok(text.includes('"\\u00e4": [\n'), "non-ASCII escaped like Python's json.dumps");
    const rewritten = JSON.parse(text) as typeof original & { backup_sites: { only: Record<string, unknown> } };
    assert.deepEqual(rewritten.unknown_key_kept, original.unknown_key_kept);
    assert.equal(rewritten.http_port, 16001);
    assert.equal(rewritten.backup_sites.only.encryption_key_id, "k2");
    assert.deepEqual(Object.keys(rewritten.backup_sites.only.encryption_keys as object), ["k2", "old"]);
    assert.equal((await stat(configPath)).mode & 0o777, 0o600);
    assert.deepEqual(
      (await readdir(dir)).filter((f) => f.includes("tmp")),
      [],
      "no temp file left behind",
    );

    // The result is a working configuration whose key encrypts and decrypts.
    const cfg = await loadConfig(configPath, { tool: "restore" });
    const site = cfg.backup_sites.only!;
    assertKeyPairWorks(site.encryption_keys.k2!.public!, privateKeyLookup(site)("k2")!, 1024);

    const again = await run(["--key-id", "k2", "--config", configPath], noEnvConfig);
    assert.equal(again.code, 1);
    assert.equal(again.stdout, `FATAL: key_id 'k2' already defined for site 'only' in '${configPath}'\n`);
    assert.equal(await readFile(configPath, "utf8"), text, "file untouched after an error");
  });

  test(
    "--config run as root keeps the file's owner (the daemon runs as another user)",
    {
      skip: process.getuid?.() === 0 ? false : "needs root to own a file as another user",
    },
    async () => {
      const configPath = path.join(dir, "owned.json");
      await writeFile(
        configPath,
        JSON.stringify({
          backup_sites: {
            only: { nodes: [{ host: "127.0.0.1" }], object_storage: { storage_type: "local", directory: dir } },
          },
        }),
      );
      const owner = { uid: 4242, gid: 4343 };
      await chown(configPath, owner.uid, owner.gid);
      const r = await run(["--key-id", "k9", "--bits", "1024", "--config", configPath], noEnvConfig);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const st = await stat(configPath);
      assert.deepEqual({ uid: st.uid, gid: st.gid }, owner);
      assert.equal(st.mode & 0o777, 0o600);
    },
  );

  test("--config errors: several sites without --site, unknown site, missing file, bad JSON", async () => {
    const configPath = path.join(dir, "two.json");
    await writeFile(configPath, JSON.stringify({ backup_sites: { b: {}, a: {} } }));
    const several = await run(["--key-id", "k", "--config", configPath], noEnvConfig);
    assert.equal(several.code, 1);
    assert.equal(several.stdout, "FATAL: Backup site not set and configuration file defines 2 sites: ['a', 'b']\n");

    const unknown = await run(["--key-id", "k", "--config", configPath, "--site", "x"], noEnvConfig);
    assert.equal(unknown.code, 1);
    assert.equal(
      unknown.stdout,
      "FATAL: Site 'x' not defined in configuration file.  2 other sites are defined: ['a', 'b']\n",
    );

    const withSite = await run(["--key-id", "k", "--config", configPath, "--site", "a", "--bits", "1024"], noEnvConfig);
    assert.equal(withSite.code, 0, withSite.stdout);

    const missing = path.join(dir, "missing.json");
    const m = await run(["--key-id", "k", "--config", missing], noEnvConfig);
    assert.equal(m.code, 1);
    assert.equal(m.stdout, `FATAL: Configuration file '${missing}' does not exist\n`);

    const bad = path.join(dir, "bad.json");
    await writeFile(bad, "{");
    const b = await run(["--key-id", "k", "--config", bad], noEnvConfig);
    assert.equal(b.code, 1);
    assert.match(b.stdout, /^FATAL: Configuration file '.*bad\.json' does not contain valid JSON: /);
    assert.equal(b.stderr, "");
  });
});

/**
 * `make deb` / `make rpm`: both packages are built from the existing dist/ (npm test builds it
 * first), the .deb is unpacked with `dpkg -x` into a temp root and its commands run from there
 * (so the shipped node_modules must be complete), and the .rpm must list the same files.
 * Skipped with a reason when dpkg-deb or rpmbuild is missing.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { accessSync, constants, existsSync, realpathSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { repoRoot } from "../helpers/paths.js";

const execFileAsync = promisify(execFile);
const has = (bin: string) => ["/usr/bin", "/bin", "/usr/local/bin"].some((d) => existsSync(path.join(d, bin)));
const version = (JSON.parse(await readFile(path.join(repoRoot, "package.json"), "utf8")) as { version: string })
  .version;
const COMMANDS = [
  "pghoard",
  "pghoard_restore",
  "pghoard_archive_cleanup",
  "pghoard_archive_sync",
  "pghoard_create_keys",
  "pghoard_postgres_command",
];

/** One make run for all targets, so both packages come from the same staged tree. */
async function make(targets: string[]): Promise<Record<string, string>> {
  const { stdout } = await execFileAsync("make", ["--no-print-directory", ...targets], {
    cwd: repoRoot,
    maxBuffer: 64 * 1024 * 1024,
    timeout: 480_000,
  });
  const built: Record<string, string> = {};
  for (const m of stdout.matchAll(/^built (\S+)$/gm))
    built[path.extname(m[1] as string).slice(1)] = path.join(repoRoot, m[1] as string);
  for (const t of targets) assert.ok(built[t], `make ${t} printed no package path:\n${stdout}`);
  return built;
}

const skipRpm = has("rpmbuild") ? false : "rpmbuild not installed (apt-get install rpm)";

/** Regular files and symlinks of a package, as absolute paths. */
function fileEntries(listing: string, pathColumn: number): string[] {
  return listing
    .split("\n")
    .filter((line) => line.startsWith("-") || line.startsWith("l") || line.startsWith("h"))
    .map((line) => line.trim().split(/\s+/)[pathColumn] as string)
    .map((p) => p.replace(/^\.\//, "/"))
    .sort();
}

const skipDeb = !has("dpkg-deb")
  ? "dpkg-deb not installed (apt-get install dpkg-dev)"
  : has("make")
    ? false
    : "make not installed";

describe("Debian package", { skip: skipDeb, timeout: 600_000 }, () => {
  let deb: string;
  let rpm: string | undefined;
  let root: string;
  before(async () => {
    const built = await make(skipRpm ? ["deb"] : ["deb", "rpm"]);
    deb = built.deb as string;
    rpm = built.rpm;
    root = await mkdtemp(path.join(os.tmpdir(), "pghoard-deb-root-"));
    await execFileAsync("dpkg", ["-x", deb, root]);
  });
  after(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  it("declares nodejs >= 20 and the maintainer scripts", async () => {
    const { stdout } = await execFileAsync("dpkg-deb", ["-f", deb, "Package", "Version", "Depends", "Architecture"]);
    assert.match(stdout, /^Package: pghoard-node$/m);
    assert.match(stdout, new RegExp(`^Version: ${version.replace(/\./g, "\\.")}$`, "m"));
    assert.match(stdout, /^Depends: nodejs \(>= 20\)/m);
    const { stdout: info } = await execFileAsync("dpkg-deb", ["-I", deb]);
    assert.match(info, /postinst/);
    const postinst = await readFile(path.join(repoRoot, "debian", "postinst"), "utf8");
    assert.match(postinst, /chown postgres:postgres \/var\/lib\/pghoard/);
  });

  it("installs the six commands, the unit, /var/lib/pghoard and the runtime under /usr/lib/pghoard", async () => {
    for (const cmd of COMMANDS) assert.ok(existsSync(path.join(root, "usr", "bin", cmd)), cmd);
    assert.ok(existsSync(path.join(root, "lib", "systemd", "system", "pghoard.service")));
    assert.ok(existsSync(path.join(root, "var", "lib", "pghoard")));
    assert.ok(existsSync(path.join(root, "usr", "lib", "pghoard", "dist", "src", "commands", "pghoard.js")));
    assert.ok(existsSync(path.join(root, "usr", "lib", "pghoard", "node_modules", "pg", "package.json")));
    assert.ok(
      !existsSync(path.join(root, "usr", "lib", "pghoard", "node_modules", "typescript")),
      "no dev dependencies",
    );
    assert.ok(!existsSync(path.join(root, "usr", "lib", "pghoard", "dist", "test")), "no tests");
    assert.ok(existsSync(path.join(root, "usr", "share", "doc", "pghoard-node", "examples", "pghoard.json")));
    // Debian policy: a changelog, generated at build time (entry for this version, maintainer, date).
    const changelog = gunzipSync(
      await readFile(path.join(root, "usr", "share", "doc", "pghoard-node", "changelog.gz")),
    ).toString();
    const version = (JSON.parse(await readFile(path.join(repoRoot, "package.json"), "utf8")) as { version: string })
      .version;
    assert.match(
      changelog,
      new RegExp(`^pghoard-node \\(${version.replace(/\./g, "\\.")}\\) unstable; urgency=medium\n\n  \\* `),
    );
    assert.match(changelog, /\n -- pghoard for Node\.js developers <pghoard-node@localhost>  \w{3}, \d\d \w{3} \d{4} /);
    for (const cmd of COMMANDS) {
      assert.ok(existsSync(path.join(root, "usr", "share", "man", "man1", `${cmd}.1.gz`)), `man page of ${cmd}`);
      assert.ok(
        existsSync(path.join(root, "usr", "share", "bash-completion", "completions", cmd)),
        `completion of ${cmd}`,
      );
    }
  });

  it("runs pghoard --version and pghoard_create_keys from the unpacked files", async () => {
    const env = { ...process.env, PGHOARD_CONFIG: "" };
    const { stdout } = await execFileAsync(path.join(root, "usr", "bin", "pghoard"), ["--version"], { env });
    assert.equal(stdout.trim(), version);
    // The bash client (a link in /usr/bin) hands --version to the Node.js client beside its target.
    const pgCommand = path.join(root, "usr", "bin", "pghoard_postgres_command");
    assert.equal((await execFileAsync(pgCommand, ["--version"], { env })).stdout.trim(), version);
    const label = await execFileAsync(
      pgCommand,
      ["--mode", "archive", "--site", "s", "--xlog", "000000010000000000000002.00000028.backup"],
      { env: { ...env, PGHOARD_NODE: "/bin/false" } },
    );
    assert.match(label.stdout, /^Ignoring request to archive backup label/);
    const keys = await execFileAsync(
      path.join(root, "usr", "bin", "pghoard_create_keys"),
      ["--site", "default", "--key-id", "pkgtest", "--bits", "2048"],
      { env },
    );
    const snippet = JSON.parse(keys.stdout) as {
      backup_sites: Record<string, { encryption_keys: Record<string, { private: string; public: string }> }>;
    };
    const pair = snippet.backup_sites.default?.encryption_keys.pkgtest;
    assert.match(pair?.private ?? "", /BEGIN PRIVATE KEY/);
    assert.match(pair?.public ?? "", /BEGIN PUBLIC KEY/);
  });

  /** Imports `name` from the unpacked runtime's `dist/src/<module>` in a fresh Node.js; prints `expression`. */
  async function inRuntime(module: string, name: string, expression: string): Promise<string> {
    const url = pathToFileURL(path.join(root, "usr", "lib", "pghoard", "dist", "src", module)).href;
    const code = `import { ${name} } from ${JSON.stringify(url)};\nprocess.stdout.write(${expression});`;
    return (await execFileAsync(process.execPath, ["--input-type=module", "-e", code])).stdout;
  }

  it("restore_command's client, found from the unpacked runtime, is the file /usr/bin links to", async () => {
    const lib = path.join(root, "usr", "lib", "pghoard");
    const stdout = await inRuntime("common/install_paths.js", "installedClientPath", "installedClientPath()");
    // The native front where this machine built one (scripts/build_native.sh), else the bash client.
    const native = existsSync(path.join(repoRoot, "dist", "native", "pghoard_postgres_command"));
    const client = native
      ? path.join(lib, "dist", "native", "pghoard_postgres_command")
      : path.join(lib, "bin", "pghoard_postgres_command");
    assert.equal(stdout, client);
    assert.equal(realpathSync(path.join(root, "usr", "bin", "pghoard_postgres_command")), realpathSync(stdout));
    accessSync(stdout, constants.X_OK);
  });

  it("the unpacked runtime decodes snappy with the native addon where it was built, and recommends libsnappy", async () => {
    const stdout = await inRuntime("fileformat/snappy_native.js", "snappyNative", "String(snappyNative !== null)");
    const built = existsSync(path.join(repoRoot, "dist", "native", "snappy_native.node"));
    assert.equal(stdout, String(built));
    const { stdout: fields } = await execFileAsync("dpkg-deb", ["-f", deb, "Recommends"]);
    assert.match(fields, /libsnappy1v5/);
  });

  it("loads config, storage and logging from the unpacked runtime (archive cleanup on an empty store)", async () => {
    const config = path.join(root, "pghoard.json");
    await writeFile(
      config,
      JSON.stringify({
        backup_sites: {
          default: {
            nodes: [{ host: "127.0.0.1" }],
            object_storage: { storage_type: "local", directory: path.join(root, "store") },
          },
        },
      }),
    );
    const res = await execFileAsync(path.join(root, "usr", "bin", "pghoard_archive_cleanup"), ["--config", config], {
      env: { ...process.env, NOTIFY_SOCKET: "" },
    }).then(
      () => ({ code: 0, stderr: "" }),
      (err: { code: number; stderr: string }) => ({ code: err.code, stderr: err.stderr }),
    );
    assert.equal(res.code, 1);
    assert.match(res.stderr, /No basebackups found/);
  });

  describe("RPM package", { skip: skipRpm }, () => {
    it("lists the same files as the .deb, /var/lib/pghoard owned by postgres", async () => {
      assert.ok(rpm);
      const { stdout: rpmList } = await execFileAsync("rpm", ["-qlvp", rpm], { maxBuffer: 64 * 1024 * 1024 });
      const { stdout: debList } = await execFileAsync("dpkg-deb", ["-c", deb], { maxBuffer: 64 * 1024 * 1024 });
      const rpmFiles = fileEntries(rpmList, 8);
      const debFiles = fileEntries(debList, 5);
      assert.ok(debFiles.length > 1000, `deb has ${debFiles.length} files`);
      assert.deepEqual(rpmFiles, debFiles);
      const varLib = rpmList.split("\n").find((l) => l.trim().endsWith(" /var/lib/pghoard"));
      assert.match(varLib ?? "", /^d\S+\s+\d+\s+postgres\s+postgres\s/);
      const { stdout: requires } = await execFileAsync("rpm", ["-qpR", rpm]);
      assert.match(requires, /^nodejs >= 1:20$/m);
      const { stdout: recommends } = await execFileAsync("rpm", ["-qp", "--recommends", rpm]);
      assert.match(recommends, /^snappy$/m);
    });
  });
});

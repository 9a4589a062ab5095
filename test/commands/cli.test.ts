/** The CLI layer in-process: argparse-style usage lines and errors, help text, fatal mapping. */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { ConfigError } from "../../src/config/index.js";
import { optionHelp, runCli, usageLine, type CommandSpec, type Io } from "../../src/commands/cli.js";
import { ARCHIVE_SYNC_SPEC, COMMAND_SPECS, PGHOARD_SPEC, RESTORE_SPEC } from "../../src/commands/cli_specs.js";

function capture(): Io & { out(): string; err(): string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (d: Buffer) => (out += d.toString()));
  stderr.on("data", (d: Buffer) => (err += d.toString()));
  return { stdout, stderr, out: () => out, err: () => err };
}

describe("commands/cli", () => {
  it("builds upstream's usage lines from the specs", () => {
    assert.equal(usageLine(PGHOARD_SPEC), "[-h] [-D] [--version] [-s] [--config CONFIG] [config_file]");
    assert.equal(
      usageLine(RESTORE_SPEC),
      "[-h] [-D] [--status-output-file FILE] [--version] {list-basebackups-http,list-basebackups,get-basebackup,info,verify,drill,request-basebackup} ...",
    );
  });

  it("says each option's default in its help", () => {
    const maxHash = ARCHIVE_SYNC_SPEC.options.find((o) => o.flags.startsWith("--max-hash-checks"));
    assert.ok(maxHash);
    assert.match(optionHelp(maxHash), /\(default: 100\)$/);
    for (const spec of COMMAND_SPECS)
      for (const o of spec.options) assert.ok(o.description.length > 0, `${spec.name} ${o.flags}`);
  });

  const spec: CommandSpec = {
    name: "tool",
    description: "test tool",
    options: [
      { flags: "--count <N>", description: "how many", type: "int", default: 1 },
      { flags: "--mode <MODE>", description: "mode", choices: ["a", "b"] },
      { flags: "--name <NAME>", description: "name", required: true },
    ],
  };

  it("usage errors are argparse's: usage line, one error line, exit 2", async () => {
    const table: Array<[string[], string]> = [
      [["--name", "x", "--bogus"], "unrecognized arguments: --bogus"],
      [["--name", "x", "extra"], "unrecognized arguments: extra"],
      [[], "the following arguments are required: --name"],
      [["--name"], "argument --name: expected one argument"],
      [["--name", "x", "--count", "many"], "argument --count: invalid int value: 'many'"],
      [["--name", "x", "--mode", "c"], "argument --mode: invalid choice: 'c' (choose from 'a', 'b')"],
    ];
    for (const [argv, message] of table) {
      const io = capture();
      const code = await runCli(spec, argv, async () => 0, { io });
      assert.equal(code, 2, argv.join(" "));
      assert.equal(io.err(), `usage: tool [-h] [--count N] [--mode {a,b}] --name NAME\ntool: error: ${message}\n`);
      assert.equal(io.out(), "");
    }
  });

  it("passes parsed options on and maps failures to one FATAL line", async () => {
    const io = capture();
    let seen: unknown;
    assert.equal(await runCli(spec, ["--name", "x", "--count=3"], async (inv) => ((seen = inv.opts), 0), { io }), 0);
    assert.deepEqual(seen, { count: 3, name: "x" });
    const lines: string[] = [];
    const failing = async (): Promise<number> => {
      throw new ConfigError("bad key");
    };
    assert.equal(
      await runCli(spec, ["--name", "x"], failing, { io, fatal: () => ({ write: (l) => lines.push(l) }) }),
      1,
    );
    assert.equal(
      await runCli(spec, ["--name", "x"], failing, {
        io,
        fatal: () => ({ write: (l) => lines.push(l), withClassName: false }),
      }),
      1,
    );
    assert.deepEqual(lines, ["FATAL: InvalidConfigurationError: bad key", "FATAL: bad key"]);
    await assert.rejects(
      runCli(spec, ["--name", "x"], failing, { io, fatal: () => ({ write: () => undefined, expected: () => false }) }),
      /bad key/,
    );
  });
});

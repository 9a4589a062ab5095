/**
 * Man pages and bash completion are generated from the commands' option definitions
 * (scripts/docs.ts); these tests fail when the committed files drift from the definitions, when a
 * page does not render with man(1), when the completion does not load in bash, and when
 * pghoard_postgres_command's own parser and its definitions disagree.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { ALL_SPECS, generatedFiles } from "../../scripts/docs.js";
import { OPTION_NAMES } from "../../src/commands/postgres_command.js";
import { POSTGRES_COMMAND_SPEC } from "../../src/commands/postgres_command_spec.js";
import { repoRoot } from "../helpers/paths.js";

const hasMan = spawnSync("man", ["--version"]).status === 0;

describe("generated man pages and completion", () => {
  it("match the option definitions (run `npm run docs` after changing an option)", async () => {
    for (const [rel, text] of await generatedFiles()) {
      const file = path.join(repoRoot, rel);
      assert.ok(existsSync(file), `${rel} is missing: run npm run docs`);
      assert.equal(readFileSync(file, "utf8"), text, `${rel} drifted from the option definitions: run npm run docs`);
    }
  });

  it("every page renders with man -l and lists every option", { skip: hasMan ? false : "man(1) not installed" }, () => {
    for (const spec of ALL_SPECS) {
      const page = path.join(repoRoot, "man", `${spec.name}.1`);
      const text = execFileSync("man", ["-l", page], {
        env: { ...process.env, MANPAGER: "cat", PAGER: "cat", MANWIDTH: "100", LANG: "C.UTF-8" },
        encoding: "utf8",
      });
      assert.match(text, /SYNOPSIS/);
      assert.match(text, /EXIT STATUS/);
      for (const option of [...spec.options, ...(spec.subcommands ?? []).flatMap((s) => s.options)]) {
        const long = option.flags.split(",").pop()!.trim().split(/\s+/)[0];
        assert.ok(text.includes(long), `${spec.name}.1 lacks ${long}`);
      }
    }
  });

  it("bash completion loads and completes options, sub-commands and choices", () => {
    const script = path.join(repoRoot, "completion", "pghoard.bash");
    const complete = (words: string[]): string[] => {
      const cmd = [
        `source ${JSON.stringify(script)}`,
        `COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(" ")})`,
        `COMP_CWORD=${words.length - 1}`,
        "_pghoard_node",
        'printf "%s\\n" "${COMPREPLY[@]}"',
      ].join("\n");
      const out = execFileSync("bash", ["-c", cmd], { encoding: "utf8" });
      return out.split("\n").filter(Boolean);
    };
    assert.deepEqual(complete(["pghoard_restore", "get-"]), ["get-basebackup"]);
    assert.ok(complete(["pghoard_restore", "get-basebackup", "--target"]).includes("--target-dir"));
    assert.deepEqual(complete(["pghoard_postgres_command", "--mode", ""]), ["archive", "restore", "cleanup"]);
    assert.deepEqual(complete(["pghoard_restore", "get-basebackup", "--recovery-target-action", "pr"]), ["promote"]);
    assert.ok(complete(["pghoard_archive_sync", "--"]).includes("--max-hash-checks"));
  });

  it("pghoard_postgres_command's --help lists exactly the options its parser accepts", () => {
    const bin = path.join(repoRoot, "bin", "pghoard_postgres_command.js");
    const help = execFileSync(process.execPath, [bin, "--help"], { encoding: "utf8" });
    const defined = POSTGRES_COMMAND_SPEC.options.map((o) => o.flags.split(/\s+/)[0]);
    for (const flag of defined) {
      assert.match(help, new RegExp(`\\s${flag}\\b`));
      // The parser must know each defined option: a usage error names an unknown one.
      const probe = spawnSync(process.execPath, [bin, flag === "--version" ? flag : `${flag}=x`], { encoding: "utf8" });
      assert.doesNotMatch(probe.stderr, /unrecognized arguments/, `parser rejects ${flag}`);
    }
    // And nothing beyond them.
    const parsed = OPTION_NAMES.filter((n) => n !== "help").map((n) => `--${n}`);
    assert.deepEqual([...parsed].sort(), [...defined].sort());
    assert.match(help, /exit codes:/);
  });
});

/**
 * Man pages (man/<command>.1) and bash completion (completion/pghoard.bash) generated from the
 * commands' option definitions (src/commands/cli_specs.ts, postgres_command_spec.ts), so --help,
 * the man pages and completion cannot disagree. `npm run docs` rewrites the files;
 * test/packaging/docs.test.ts fails when the committed ones drift from the definitions.
 *
 * Markdown in ronn's layout is turned into roff by marked-man (a marked extension), rather than
 * hand-written roff escaping. Completion is a static script: the dynamic-completion libraries
 * (omelette, tabtab) start Node on every Tab press.
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { CommandSpec, OptionSpec } from "../src/commands/cli.js";
import { optionDefaultText, optionSynopsis } from "../src/commands/cli_help.js";
import { COMMAND_SPECS } from "../src/commands/cli_specs.js";
import { POSTGRES_COMMAND_SPEC } from "../src/commands/postgres_command_spec.js";
import { packageVersion } from "../src/common/version.js";

/** Every installed command, in the order the SEE ALSO sections list them. */
export const ALL_SPECS: readonly CommandSpec[] = [...COMMAND_SPECS, POSTGRES_COMMAND_SPEC];

/** Fixed so that regenerating gives the same bytes (marked-man would print today's date). */
const MAN_DATE = "2026-12-05";

const ENVIRONMENT: Record<string, string> = {
  PGHOARD_CONFIG: "path of the configuration file when --config is not given",
};

function escapeMd(text: string): string {
  return text.replace(/([\\`*_[\]<>|])/g, "\\$1");
}

/** A description as a sentence, so that "Default: …" reads as the next one. */
function sentence(text: string): string {
  const capital = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?)]$/.test(capital) ? capital : `${capital}.`;
}

function optionItem(option: OptionSpec): string {
  const flags = option.flags
    .split(",")
    .map((f) => `\`${optionSynopsis({ ...option, flags: f.trim() })}\``)
    .join(", ");
  let text = escapeMd(sentence(option.description));
  if (option.required === true) text += " Required.";
  if (option.required === "unless-env") text += ` Required unless ${option.env} is set.`;
  if (option.repeatable) text += " May be given several times.";
  const dflt = optionDefaultText(option);
  if (dflt !== undefined) text += ` Default: \`${dflt}\`.`;
  return `* ${flags}:\n  ${text}\n`;
}

function synopsis(spec: CommandSpec, prefix = spec.name): string {
  const parts = [`\`${prefix}\``];
  for (const option of spec.options) {
    const s = optionSynopsis(option);
    parts.push(option.required === true ? s : `[${s}]`);
  }
  for (const arg of spec.arguments ?? []) parts.push(arg.optional ? `[${arg.name}]` : arg.name);
  if (spec.subcommands?.length) parts.push("_command_ [_command options_]");
  return escapeMd(parts.join(" ")).replace(/\\`/g, "`").replace(/\\_/g, "_");
}

/** The man page of one command as ronn-style markdown. */
export function manPageMarkdown(spec: CommandSpec): string {
  const out: string[] = [];
  out.push(`# ${spec.name}(1) -- ${spec.description}`, "");
  out.push("## SYNOPSIS", "", synopsis(spec), "");
  for (const sub of spec.subcommands ?? []) out.push(synopsis(sub, `${spec.name} ${sub.name}`), "");
  out.push("## DESCRIPTION", "", `${escapeMd(spec.description)}.`, "");
  out.push("Part of pghoard for Node.js, a port of pghoard, the PostgreSQL backup daemon and restore tooling.", "");
  if (spec.arguments?.length) {
    out.push("## ARGUMENTS", "");
    for (const arg of spec.arguments) out.push(`* \`${arg.name}\`:\n  ${escapeMd(arg.description)}\n`);
  }
  out.push("## OPTIONS", "");
  out.push("* `-h`, `--help`:\n  Show the help and exit.\n");
  for (const option of spec.options) out.push(optionItem(option));
  if (spec.subcommands?.length) {
    out.push("## COMMANDS", "");
    for (const sub of spec.subcommands) {
      out.push(`### ${sub.name}`, "", `${escapeMd(sub.description)}.`, "");
      for (const option of sub.options) out.push(optionItem(option));
    }
  }
  if (spec.exitCodes?.length) {
    out.push("## EXIT STATUS", "");
    for (const exit of spec.exitCodes) out.push(`* \`${exit.code}\`:\n  ${escapeMd(sentence(exit.meaning))}\n`);
  }
  const envs = new Set(
    [...spec.options, ...(spec.subcommands ?? []).flatMap((s) => s.options)].flatMap((o) => (o.env ? [o.env] : [])),
  );
  if (envs.size) {
    out.push("## ENVIRONMENT", "");
    for (const env of envs) out.push(`* \`${env}\`:\n  ${escapeMd(ENVIRONMENT[env] ?? "")}\n`);
  }
  const others = ALL_SPECS.filter((s) => s.name !== spec.name).map((s) => `${escapeMd(s.name)}(1)`);
  out.push("## SEE ALSO", "", `${others.join(", ")}, postgres(1)`, "");
  return out.join("\n");
}

/** roff, through marked with the marked-man extension (a dev dependency: loaded only here). */
export async function renderManPage(spec: CommandSpec): Promise<string> {
  const { Marked } = await import("marked");
  const markedMan = (await import("marked-man")).default;
  // marked-man's own options (date, manVersion, manual) ride along with the extension object.
  const options = { ...markedMan, date: MAN_DATE, manVersion: packageVersion(), manual: "pghoard" };
  const marked = new Marked(options as typeof markedMan);
  return marked.parse(manPageMarkdown(spec), { async: false });
}

// ---------------------------------------------------------------------------------------------
// bash completion

function longFlags(option: OptionSpec): string[] {
  return option.flags.split(",").map((f) => f.trim().split(/\s+/)[0]);
}

function takesValue(option: OptionSpec): boolean {
  return /[<[]/.test(option.flags);
}

/** How the value after an option completes: choices, directories, files, or nothing to offer. */
function valueCompletion(option: OptionSpec): string {
  if (option.choices) return `COMPREPLY=($(compgen -W "${option.choices.join(" ")}" -- "$cur"))`;
  if (/<(DIR|DIRECTORY)>/.test(option.flags)) return `COMPREPLY=($(compgen -d -- "$cur"))`;
  if (/<(CONFIG|FILE|PATH|OUTPUT)>|DIRECTORY>/.test(option.flags)) return `COMPREPLY=($(compgen -f -- "$cur"))`;
  return "COMPREPLY=()";
}

export function bashCompletion(): string {
  const lines: string[] = [
    "# bash completion for pghoard for Node.js: generated by scripts/docs.ts from the commands'",
    "# option definitions (npm run docs); do not edit.",
    "_pghoard_node() {",
    '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
    '  local cmd="${COMP_WORDS[0]##*/}" sub="" word i skip=0',
    "  local valued subs opts",
    '  case "$cmd" in',
  ];
  for (const spec of ALL_SPECS) {
    const valued = spec.options.filter(takesValue).flatMap(longFlags);
    const subs = (spec.subcommands ?? []).map((s) => s.name);
    lines.push(`    ${spec.name}) valued="${valued.join(" ")}"; subs="${subs.join(" ")}" ;;`);
  }
  lines.push(
    "    *) return 0 ;;",
    "  esac",
    "  # The sub-command is the first word that is neither an option nor an option's value.",
    "  for ((i = 1; i < COMP_CWORD; i++)); do",
    '    word="${COMP_WORDS[i]}"',
    "    if ((skip)); then skip=0; continue; fi",
    '    if [[ " $valued " == *" $word "* ]]; then skip=1; continue; fi',
    '    if [[ $word != -* && " $subs " == *" $word "* ]]; then sub="$word"; break; fi',
    "  done",
    '  case "$cmd $sub:$prev" in',
  );
  const cases: Array<[string, OptionSpec[]]> = [];
  for (const spec of ALL_SPECS) {
    cases.push([`${spec.name} `, [...spec.options]]);
    for (const sub of spec.subcommands ?? []) cases.push([`${spec.name} ${sub.name}`, [...sub.options]]);
  }
  for (const [key, options] of cases) {
    for (const option of options.filter(takesValue)) {
      const pattern = longFlags(option)
        .map((f) => `"${key}:${f}"`)
        .join(" | ");
      lines.push(`    ${pattern}) ${valueCompletion(option)}; return 0 ;;`);
    }
  }
  lines.push("  esac", '  case "$cmd $sub" in');
  for (const [key, options] of cases) {
    const words = ["-h", "--help", ...options.flatMap(longFlags)];
    const spec = ALL_SPECS.find((s) => `${s.name} ` === key);
    if (spec?.subcommands?.length) words.push(...spec.subcommands.map((s) => s.name));
    lines.push(`    "${key}") opts="${words.join(" ")}" ;;`);
  }
  lines.push(
    "  esac",
    '  COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
    "}",
    `complete -F _pghoard_node ${ALL_SPECS.map((s) => s.name).join(" ")}`,
    "",
  );
  return lines.join("\n");
}

/** Path → contents of every generated file, relative to the repository root. */
export async function generatedFiles(): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const spec of ALL_SPECS) files.set(`man/${spec.name}.1`, await renderManPage(spec));
  files.set("completion/pghoard.bash", bashCompletion());
  return files;
}

async function main(): Promise<void> {
  // dist/scripts/docs.js → the repository root is two levels up.
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
  for (const [rel, text] of await generatedFiles()) {
    const file = path.join(root, rel);
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, text);
    console.log(`wrote ${rel}`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) await main();

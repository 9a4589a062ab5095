/**
 * Plain-text `--help` from a CommandSpec without commander, for pghoard_postgres_command (which
 * must not load commander). Same sections as the other commands' help: usage, description,
 * options with meaning and default, exit codes.
 */
import type { CommandSpec, OptionSpec } from "./cli.js";

/** `--mode <MODE>` with choices → `--mode {archive,restore}`, as argparse prints it. */
export function optionSynopsis(option: OptionSpec): string {
  const long = option.flags.split(",").map((f) => f.trim());
  const last = long[long.length - 1];
  const [flag, value] = last.split(/\s+/, 2);
  if (!value) return flag;
  const shown = option.choices ? `{${option.choices.join(",")}}` : value.replace(/[<>[\]]/g, "");
  return `${flag} ${shown}`;
}

export function optionDefaultText(option: OptionSpec): string | undefined {
  if (option.env) return `$${option.env}`;
  if (option.default === undefined || option.default === "") return undefined;
  return String(option.default);
}

export function renderPlainHelp(spec: CommandSpec): string {
  const usage = [`usage: ${spec.name} [-h]`];
  for (const option of spec.options) {
    const synopsis = optionSynopsis(option);
    usage.push(option.required ? synopsis : `[${synopsis}]`);
  }
  const lines = [usage.join(" "), "", spec.description, "", "options:"];
  const rows: Array<[string, string]> = [["-h, --help", "show this help message and exit"]];
  for (const option of spec.options) {
    let text = option.description;
    const dflt = optionDefaultText(option);
    if (option.required) text += " (required)";
    if (dflt !== undefined) text += ` (default: ${dflt})`;
    rows.push([option.flags.replace(/<[^>]+>/, (m) => (option.choices ? `{${option.choices.join(",")}}` : m)), text]);
  }
  const width = Math.max(...rows.map(([flags]) => flags.length)) + 2;
  for (const [flags, text] of rows) lines.push(`  ${flags.padEnd(width)}${text}`);
  if (spec.exitCodes?.length) {
    lines.push("", "exit codes:");
    for (const exit of spec.exitCodes) lines.push(`  ${String(exit.code).padEnd(4)}${exit.meaning}`);
  }
  return `${lines.join("\n")}\n`;
}

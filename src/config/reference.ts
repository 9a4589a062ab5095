/**
 * Renders the configuration reference (README.md, between the config-reference markers) from
 * the schema, so documentation and validation cannot drift apart.
 *
 *   node dist/src/config/reference.js            print the reference
 *   node dist/src/config/reference.js --write    rewrite the README block
 *   node dist/src/config/reference.js --check    exit 1 when the README block is stale
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  compressionSection,
  nodeSection,
  pgReceivexlogSection,
  prometheusSection,
  pushgatewaySection,
  siteSection,
  statsdSection,
  storageCommonSection,
  storageSections,
  topLevelSection,
  transferSection,
  type KeySpec,
  type SectionSpec,
} from "./schema.js";

export const START_MARKER = "<!-- config-reference:start -->";
export const END_MARKER = "<!-- config-reference:end -->";

function cell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\n/g, " ");
}

function renderType(spec: KeySpec): string {
  return spec.types.map((t) => (t === "array" && spec.elements ? `array of ${spec.elements}` : t)).join(" \\| ");
}

function renderDefault(spec: KeySpec): string {
  if (!spec.default) return spec.required ? "required" : "unset";
  if ("value" in spec.default) return `\`${JSON.stringify(spec.default.value)}\``;
  return spec.default.doc;
}

function renderDescription(spec: KeySpec): string {
  const parts = [spec.description];
  if (spec.allowed) parts.push(`One of ${spec.allowed.map((a) => (a === null ? "`null`" : `\`${a}\``)).join(", ")}.`);
  if (spec.min !== undefined && spec.max !== undefined) parts.push(`Range ${spec.min}–${spec.max}.`);
  if (spec.required && spec.required !== "yes") parts.push(`Required ${spec.required}.`);
  else if (spec.required === "yes" && spec.default) parts.push("Required.");
  if (spec.deprecated) parts.push(`**Deprecated**: ${spec.deprecated}.`);
  if (spec.secret === "contains") parts.push("May hold passwords: they are never logged or echoed in messages.");
  else if (spec.secret) parts.push("Secret: never logged or echoed in messages.");
  const invalid = spec.onInvalid ?? "error";
  if (invalid === "warn") parts.push("Invalid values: warning (as upstream, not fatal).");
  if (invalid === "default") parts.push("Invalid values: warning, default used.");
  if (invalid === "writer") parts.push("Invalid values: fatal for the daemon, a warning for other tools.");
  return parts.join(" ");
}

function renderSection(section: SectionSpec, level = "###"): string {
  const lines: string[] = [];
  const where = section.path ? ` (\`${section.path}\`)` : "";
  lines.push(`${level} ${section.title}${where}`, "");
  if (section.intro) lines.push(section.intro, "");
  if (section.keys.length > 0) {
    lines.push("| Key | Type | Default | Description |", "|---|---|---|---|");
    for (const spec of section.keys) {
      lines.push(
        `| \`${spec.key}\` | ${renderType(spec)} | ${cell(renderDefault(spec))} | ${cell(renderDescription(spec))} |`,
      );
    }
    lines.push("");
  }
  for (const note of section.notes ?? []) lines.push(`- ${note}`);
  if (section.notes?.length) lines.push("");
  if (section.derived?.length) {
    lines.push(
      `Derived keys written by pghoard itself (accepted, not meant to be set): ${section.derived.map((d) => `\`${d}\``).join(", ")}.`,
      "",
    );
  }
  if (section.ignored?.length) {
    lines.push(
      `Names upstream documents somewhere but never reads (warned about as unknown keys): ${section.ignored
        .map((i) => `\`${i.name}\` (${i.hint})`)
        .join("; ")}.`,
      "",
    );
  }
  return lines.join("\n");
}

/** The reference as Markdown (without the markers). */
export function renderReference(): string {
  const parts = [
    "<!-- Generated from src/config/schema.ts by `node dist/src/config/reference.js --write`; do not edit by hand. -->",
    "",
    "The configuration file is upstream pghoard's `pghoard.json`, unchanged: plain JSON, path from " +
      "`--config` or `$PGHOARD_CONFIG`. Problems upstream would also fail on (wrong types, unknown " +
      "`storage_type`, missing required keys, an `encryption_key_id` without a public key, …) stop the " +
      "tool with one message naming the key path; unknown keys and values upstream tolerates only " +
      "produce a warning. Defaults below are upstream's; an optional key without a default may also be " +
      "`null`, which means unset.",
    "",
    renderSection(topLevelSection),
    renderSection(compressionSection, "####"),
    renderSection(transferSection, "####"),
    renderSection(statsdSection, "####"),
    renderSection(pushgatewaySection, "####"),
    renderSection(prometheusSection, "####"),
    renderSection(siteSection),
    renderSection(pgReceivexlogSection, "####"),
    renderSection(nodeSection, "####"),
    renderSection(storageCommonSection),
    ...Object.values(storageSections).map((s) => renderSection(s, "####")),
  ];
  return (
    parts
      .join("\n")
      .replace(/\n{3,}/g, "\n\n")
      .trimEnd() + "\n"
  );
}

/** README text with the block between the markers replaced by `reference`. */
export function replaceReferenceBlock(readme: string, reference: string): string {
  const start = readme.indexOf(START_MARKER);
  const end = readme.indexOf(END_MARKER);
  if (start < 0 || end < start) throw new Error(`README has no ${START_MARKER} … ${END_MARKER} block`);
  return `${readme.slice(0, start + START_MARKER.length)}\n${reference}${readme.slice(end)}`;
}

/** The current README block (between the markers, without them). */
export function readReferenceBlock(readme: string): string {
  const start = readme.indexOf(START_MARKER);
  const end = readme.indexOf(END_MARKER);
  if (start < 0 || end < start) throw new Error(`README has no ${START_MARKER} … ${END_MARKER} block`);
  return readme.slice(start + START_MARKER.length + 1, end);
}

export function findReadme(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, "package.json"))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error("package.json not found");
    dir = parent;
  }
  return path.join(dir, "README.md");
}

function cli(args: string[]): number {
  const reference = renderReference();
  if (args.includes("--write")) {
    const readmePath = findReadme();
    const readme = readFileSync(readmePath, "utf8");
    const updated = replaceReferenceBlock(readme, reference);
    if (updated !== readme) writeFileSync(readmePath, updated);
    process.stdout.write(`${readmePath}: configuration reference ${updated === readme ? "unchanged" : "updated"}\n`);
    return 0;
  }
  if (args.includes("--check")) {
    const readmePath = findReadme();
    if (readReferenceBlock(readFileSync(readmePath, "utf8")) !== reference) {
      process.stderr.write(
        `${readmePath}: configuration reference is stale; run node dist/src/config/reference.js --write\n`,
      );
      return 1;
    }
    return 0;
  }
  process.stdout.write(reference);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  process.exitCode = cli(process.argv.slice(2));
}

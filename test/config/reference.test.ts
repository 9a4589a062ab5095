import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { readReferenceBlock, renderReference, replaceReferenceBlock } from "../../src/config/reference.js";
import { siteSection, storageSections, topLevelSection } from "../../src/config/schema.js";
import { repoRoot } from "../helpers/paths.js";

test("README's configuration reference is the one generated from the schema", () => {
  const readme = readFileSync(path.join(repoRoot, "README.md"), "utf8");
  const expected = renderReference();
  assert.ok(
    readReferenceBlock(readme) === expected,
    "README.md configuration reference is stale: run `node dist/src/config/reference.js --write` after `npm run build`",
  );
});

test("every schema key is documented", () => {
  const reference = renderReference();
  for (const section of [topLevelSection, siteSection, ...Object.values(storageSections)]) {
    for (const spec of section.keys)
      assert.ok(reference.includes(`| \`${spec.key}\` |`), `${section.id}.${spec.key} missing`);
  }
});

test("replacing the block leaves the rest of the README alone", () => {
  const readme = "# T\n\n<!-- config-reference:start -->\nold\n<!-- config-reference:end -->\n\n## After\n";
  assert.equal(
    replaceReferenceBlock(readme, "new\n"),
    "# T\n\n<!-- config-reference:start -->\nnew\n<!-- config-reference:end -->\n\n## After\n",
  );
});

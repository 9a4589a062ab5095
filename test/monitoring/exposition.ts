import assert from "node:assert/strict";

/** A strict parser of the Prometheus text exposition format 0.0.4 (what a scraper accepts). */
export function parseExposition(
  text: string,
): Map<string, { type: string; samples: { labels: Record<string, string>; value: number }[] }> {
  const families = new Map<string, { type: string; samples: { labels: Record<string, string>; value: number }[] }>();
  assert.ok(text === "" || text.endsWith("\n"), "exposition must end with a newline");
  const nameRe = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("# HELP ")) continue;
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      assert.match(name ?? "", nameRe);
      assert.ok(["counter", "gauge", "histogram", "summary", "untyped"].includes(type ?? ""), line);
      assert.ok(!families.has(name!), `duplicate TYPE for ${name}`);
      families.set(name!, { type: type!, samples: [] });
      continue;
    }
    assert.ok(!line.startsWith("#"), `unexpected comment ${line}`);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    assert.ok(m, `bad sample line: ${line}`);
    const labels: Record<string, string> = {};
    let rest = m[3] ?? "";
    while (rest.length > 0) {
      const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/.exec(rest);
      assert.ok(lm, `bad labels in ${line}`);
      labels[lm[1]!] = lm[2]!.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
      rest = rest.slice(lm[0].length);
    }
    const value = Number(m[4]);
    assert.ok(!Number.isNaN(value) || m[4] === "NaN", `bad value in ${line}`);
    const family = families.get(m[1]!);
    assert.ok(family, `sample before TYPE: ${line}`);
    family.samples.push({ labels, value });
  }
  return families;
}

/** The WAL chain recovery follows: timelines from the newest history, gaps, the switch segment. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { WalChain } from "../../src/restore/wal_chain.js";
import type { StoredObject } from "../../src/storage/types.js";

const obj = (name: string): StoredObject => ({
  name: `site/xlog/${name}`,
  size: 1,
  lastModified: new Date(0),
  metadata: {},
});
const history = (tli: number): StoredObject => ({
  name: `site/timeline/${tli.toString(16).toUpperCase().padStart(8, "0")}.history`,
  size: 1,
  lastModified: new Date(0),
  metadata: {},
});

describe("WalChain", () => {
  it("summarises timelines with their gaps", () => {
    const chain = new WalChain(
      [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000005",
        "000000010000000100000000",
      ].map(obj),
      [],
    );
    const [t1] = chain.summaries();
    assert.equal(t1.oldest, "000000010000000000000001");
    assert.equal(t1.newest, "000000010000000100000000");
    assert.deepEqual(t1.gaps[0], { first: "000000010000000000000003", last: "000000010000000000000004", count: 2 });
    // 0/6 .. 0/FF, then 1/0 exists
    assert.equal(t1.gaps[1].count, 250);
    const walk = chain.chainFrom("000000010000000000000005")!;
    assert.equal(walk.missing.length, 250);
    assert.equal(walk.missing[0], "000000010000000000000006");
  });

  it("follows a timeline switch and falls back to the parent only for the switch segment", () => {
    const names = [
      "000000010000000000000003",
      "000000010000000000000004",
      "000000010000000000000005", // the parent kept going after the switch: not on the chain
      "000000020000000000000004",
      "000000020000000000000005",
    ];
    const chain = new WalChain(names.map(obj), [history(2)]);
    chain.setHistory("1\t0/4A00000\tno recovery target specified\n");
    assert.deepEqual(chain.timelines, [1, 2]);
    assert.equal(chain.onChain("000000010000000000000005"), false);
    const walk = chain.chainFrom("000000010000000000000003")!;
    assert.deepEqual(
      walk.present.map((p) => p.name),
      ["000000010000000000000003", "000000020000000000000004", "000000020000000000000005"],
    );
    assert.deepEqual(walk.missing, []);
    // Without the new timeline's copy of the switch segment, the parent's serves.
    const fallback = new WalChain(names.filter((n) => n !== "000000020000000000000004").map(obj), [history(2)]);
    fallback.setHistory("1\t0/4A00000\treason\n");
    assert.deepEqual(fallback.chainFrom("000000010000000000000003")!.missing, []);
    // A missing segment after the switch breaks the chain.
    const broken = new WalChain(names.filter((n) => n !== "000000020000000000000005").map(obj), [history(2)]);
    broken.setHistory("1\t0/4A00000\treason\n");
    assert.equal(broken.newestPosition(), 4n);
    assert.equal(chain.newestPosition(), 5n);
  });
});

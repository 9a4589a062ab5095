import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { pgBasebackupCommand } from "../../src/basebackup/pgbasebackup.js";
import type { BasebackupContext } from "../../src/basebackup/types.js";
import { validateConfig } from "../../src/config/index.js";

let home: string;
const savedHome = process.env.HOME;

before(async () => {
  home = await mkdtemp(path.join(os.tmpdir(), "pgbb-home-"));
  process.env.HOME = home;
});
after(async () => {
  process.env.HOME = savedHome;
  await rm(home, { recursive: true, force: true });
});

test("pg_basebackup gets the password through ~/.pgpass, never on its command line", async () => {
  const config = validateConfig({
    backup_location: path.join(home, "spool"),
    backup_sites: {
      s: {
        nodes: [{ host: "127.0.0.1", port: 5999, user: "backup", password: "s3cret-pw" }],
        object_storage: { storage_type: "local", directory: path.join(home, "store") },
      },
    },
  });
  const ctx = {
    config,
    site: "s",
    node: config.backup_sites.s!.nodes[0]!,
    pgVersion: 150004,
    pgBasebackupPath: "/usr/bin/pg_basebackup",
  } as unknown as BasebackupContext; // only the fields pgBasebackupCommand reads
  const command = await pgBasebackupCommand(ctx, "/tmp/out");
  assert.ok(!command.join(" ").includes("s3cret-pw"), command.join(" "));
  const dbname = command[command.indexOf("--dbname") + 1]!;
  assert.match(dbname, /user='backup'/);
  assert.match(dbname, /dbname='replication'/);
  const pgpass = await readFile(path.join(home, ".pgpass"), "utf8");
  assert.match(pgpass, /^127\.0\.0\.1:5999:replication:backup:s3cret-pw$/m);
  assert.equal((await stat(path.join(home, ".pgpass"))).mode & 0o777, 0o600);
});

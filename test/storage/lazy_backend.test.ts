/**
 * Backends are imported only when configured (storage/index.ts): a build without a backend's
 * module, or whose backend cannot load its SDK, fails with an error naming the storage type. The
 * compiled factory is copied into a temporary directory with only some backend modules beside it.
 */
import assert from "node:assert/strict";
import { copyFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { after, describe, it } from "node:test";

import { makeTempDir } from "../helpers/pgcluster.js";

const storageDist = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "src", "storage");

describe("storage backends load lazily", () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  async function partialBuild(): Promise<typeof import("../../src/storage/index.js")> {
    const dir = await makeTempDir("storage-lazy");
    dirs.push(dir);
    for (const file of ["index.js", "types.js"]) {
      await copyFile(path.join(storageDist, file), path.join(dir, file));
    }
    // A backend whose SDK is not installed.
    await writeFile(
      path.join(dir, "s3.js"),
      'import "@aws-sdk/client-s3-missing-for-test";\nexport function createBackend() {}\n',
    );
    return (await import(
      pathToFileURL(path.join(dir, "index.js")).href
    )) as typeof import("../../src/storage/index.js");
  }

  it("names the storage type whose module is absent or whose SDK cannot load", async () => {
    const storage = await partialBuild();
    await assert.rejects(storage.createStorage({ storage_type: "google", bucket_name: "b" }), {
      name: "StorageError",
      message: "storage type 'google' is not available in this build",
    });
    await assert.rejects(storage.createStorage({ storage_type: "s3", bucket_name: "b" }), (err: Error) => {
      assert.equal(err.name, "StorageError");
      assert.match(err.message, /^storage type 's3' could not be loaded: .*@aws-sdk\/client-s3-missing-for-test/);
      return true;
    });
  });
});

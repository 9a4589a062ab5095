import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createStorage } from "../../src/storage/index.js";
import { StorageError } from "../../src/storage/types.js";
import { runConformance } from "./conformance.js";
import { FakeGcsServer } from "./fake_gcs_server.js";

// No GCS server or emulator can run here: the backend is tested against an in-repo fake of the
// JSON API (fake_gcs_server.ts), driven by the real @google-cloud/storage client.
const TOKEN = "test-access-token-4f1c";
const fake = new FakeGcsServer(TOKEN);
const endpoint = await fake.start();
after(() => fake.stop());

const CHUNK = 256 * 1024; // the smallest resumable chunk GCS allows

const makeBackend = (prefix: string, token = TOKEN) =>
  createStorage({
    storage_type: "google",
    project_id: "pghoard-test",
    bucket_name: "pghoard-conformance",
    credentials: { type: "access_token", access_token: token },
    api_endpoint: endpoint,
    prefix,
    chunk_size: CHUNK,
    list_page_size: 50,
  });

runConformance("google (in-repo fake of the GCS JSON API)", {
  makeBackend,
  largeObjectSize: 3 * CHUNK + 12345,
  manyKeys: 120,
});

describe("google backend against the fake: retries and auth", () => {
  before(() => fake.failNext(0));

  it("uploads large objects as chunked resumable uploads", async () => {
    const store = await makeBackend("resumable");
    const before = fake.requests.get("upload:resumable-chunk") ?? 0;
    await store.storeFileFromMemory("big", Buffer.alloc(3 * CHUNK + 1, 1), { a: "b" });
    assert.equal((fake.requests.get("upload:resumable-chunk") ?? 0) - before, 4);
    await store.deleteTree("");
  });

  it("retries transient 503 replies", async () => {
    const store = await makeBackend("retry");
    fake.failNext(1, 503);
    await store.storeFileFromMemory("k", Buffer.from("data"), { a: "b" });
    fake.failNext(1, 503);
    assert.equal((await store.getContentsToMemory("k")).data.toString(), "data");
    fake.failNext(1, 429);
    assert.equal((await store.list("")).length, 1);
    await store.deleteTree("");
  });

  it("fails fast on bad credentials without naming them", async () => {
    await assert.rejects(makeBackend("auth", "wrong-token-9d2e"), (err) => {
      assert.ok(err instanceof StorageError, String(err));
      assert.match(err.message, /^google: /);
      assert.doesNotMatch(err.message, /wrong-token-9d2e/);
      return true;
    });
  });
});

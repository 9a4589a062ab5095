import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import {
  AccountSASPermissions,
  AccountSASResourceTypes,
  AccountSASServices,
  generateAccountSASQueryParameters,
  StorageSharedKeyCredential,
} from "@azure/storage-blob";
import { StorageError } from "../../src/storage/types.js";
import { createStorage } from "../../src/storage/index.js";
import { runConformance } from "./conformance.js";
import { startServer, type TestServer } from "./servers.js";

const server = await startServer("azurite");
const running: TestServer | null = "env" in server ? server : null;
after(async () => running?.stop());

const BLOCK = 1024 * 1024;

runConformance("azure (Azurite 3.35)", {
  skip: "skip" in server ? server.skip : false,
  makeBackend: (prefix) =>
    createStorage({
      storage_type: "azure",
      account_name: running!.env.AZURE_ACCOUNT_NAME!,
      account_key: running!.env.AZURE_ACCOUNT_KEY!,
      bucket_name: "pghoard-conformance",
      host: running!.env.AZURE_BLOB_HOST!,
      port: Number(running!.env.AZURE_BLOB_PORT!),
      is_secure: false,
      prefix,
      block_size: BLOCK,
      list_page_size: 50,
    }),
  largeObjectSize: 3 * BLOCK + 12345,
  manyKeys: 120,
  // rohmu stores `-` as `_` and reads every `_` back as `-`
  underscoreInMetadataKeys: "becomes-hyphen",
  lowerCasesMetadataKeys: true,
});

/** An account SAS for the blob service with the given permissions, valid for an hour. */
function accountSas(env: Record<string, string>, permissions: string): string {
  return generateAccountSASQueryParameters(
    {
      expiresOn: new Date(Date.now() + 3600_000),
      permissions: AccountSASPermissions.parse(permissions),
      services: AccountSASServices.parse("b").toString(),
      resourceTypes: AccountSASResourceTypes.parse("sco").toString(),
    },
    new StorageSharedKeyCredential(env.AZURE_ACCOUNT_NAME!, env.AZURE_ACCOUNT_KEY!),
  ).toString();
}

describe("azure with a SAS token", { skip: "skip" in server ? server.skip : false }, () => {
  it("authenticates with sas_token alone and keeps it out of errors", async () => {
    const env = running!.env;
    const sas = accountSas(env, "rwdlac");
    const store = await createStorage({
      storage_type: "azure",
      account_name: env.AZURE_ACCOUNT_NAME!,
      sas_token: sas,
      bucket_name: "pghoard-sas",
      host: env.AZURE_BLOB_HOST!,
      port: Number(env.AZURE_BLOB_PORT!),
      is_secure: false,
      prefix: "sas",
    });
    await store.storeFileFromMemory("a/b", Buffer.from("sas"), { "pg-version": "150004" });
    assert.equal((await store.getContentsToMemory("a/b")).data.toString(), "sas");
    assert.deepEqual(await store.getMetadataForKey("a/b"), { "pg-version": "150004" });
    await store.deleteTree("");
    await store.close();

    const readOnly = accountSas(env, "rl");
    const limited = await createStorage({
      storage_type: "azure",
      account_name: env.AZURE_ACCOUNT_NAME!,
      sas_token: readOnly,
      bucket_name: "pghoard-sas",
      host: env.AZURE_BLOB_HOST!,
      port: Number(env.AZURE_BLOB_PORT!),
      is_secure: false,
      prefix: "sas",
    });
    await assert.rejects(limited.storeFileFromMemory("a/c", Buffer.from("x"), {}), (err) => {
      assert.ok(err instanceof StorageError, String(err));
      assert.match(err.message, /^azure: upload a\/c failed/);
      const sig = new URLSearchParams(readOnly).get("sig")!;
      assert.ok(!err.message.includes(sig) && !err.message.includes(encodeURIComponent(sig)), err.message);
      return true;
    });
  });
});

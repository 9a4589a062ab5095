import { after } from "node:test";
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

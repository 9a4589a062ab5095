import { after } from "node:test";
import { createStorage } from "../../src/storage/index.js";
import { runConformance } from "./conformance.js";
import { startServer, type TestServer } from "./servers.js";

// Swift's S3 API: real SigV4 checks and real multipart uploads (test/servers/README.md)
const server = await startServer("swift");
const running: TestServer | null = "env" in server ? server : null;
after(async () => running?.stop());

const PART = 5 * 1024 * 1024; // S3's minimum part size

runConformance("s3 (Swift 2.30 s3api)", {
  skip: "skip" in server ? server.skip : false,
  makeBackend: (prefix) => {
    const endpoint = new URL(running!.env.S3_ENDPOINT!);
    return createStorage({
      storage_type: "s3",
      region: running!.env.S3_REGION!,
      bucket_name: "pghoard-conformance",
      aws_access_key_id: running!.env.S3_ACCESS_KEY!,
      aws_secret_access_key: running!.env.S3_SECRET_KEY!,
      host: endpoint.hostname,
      port: Number(endpoint.port),
      is_secure: false,
      prefix,
      segment_size: PART,
      list_page_size: 50,
    });
  },
  largeObjectSize: 2 * PART + 12345,
  manyKeys: 120,
  lowerCasesMetadataKeys: true,
});

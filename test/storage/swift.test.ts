import { after } from "node:test";
import { createBackend } from "../../src/storage/swift.js";
import { runConformance } from "./conformance.js";
import { startServer, type TestServer } from "./servers.js";

const server = await startServer("swift");
const running: TestServer | null = "env" in server ? server : null;
after(async () => running?.stop());

const SEGMENT = 1024 * 1024;

runConformance("swift (tempauth v1.0, Swift 2.30)", {
  skip: "skip" in server ? server.skip : false,
  makeBackend: (prefix) =>
    createBackend({
      user: running!.env.SWIFT_USER!,
      key: running!.env.SWIFT_KEY!,
      auth_url: running!.env.SWIFT_AUTH_URL!,
      auth_version: "1.0",
      container_name: "pghoard-conformance",
      prefix,
      segment_size: SEGMENT,
      list_page_size: 50,
    }),
  largeObjectSize: 3 * SEGMENT + 12345,
  manyKeys: 120,
  lowerCasesMetadataKeys: true,
  // Swift (WSGI) turns `_` in header names into `-`, for upstream rohmu as for us
  underscoreInMetadataKeys: "becomes-hyphen",
});

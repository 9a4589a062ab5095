import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import { createStorage } from "../../src/storage/index.js";
import { Readable } from "node:stream";
import { StorageError, type StorageBackend } from "../../src/storage/types.js";
import { runConformance } from "./conformance.js";
import { startServer, type TestServer } from "./servers.js";

const server = await startServer("swift");
const running: TestServer | null = "env" in server ? server : null;
const skip = "skip" in server ? server.skip : false;
after(async () => running?.stop());

const SEGMENT = 1024 * 1024;

runConformance("swift (tempauth v1.0, Swift 2.30)", {
  skip,
  makeBackend: (prefix) =>
    createStorage({
      storage_type: "swift",
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

/**
 * A Keystone stand-in for the v2.0 and v3 token requests only: it checks the credentials the
 * client sends, takes a real token from the Swift server's tempauth and answers with a catalog
 * pointing at the real Swift. The first token it hands out is a dud, so the client must notice
 * the 401 and authenticate again.
 */
function keystone(swiftAuthUrl: string): { server: Server; requests: string[] } {
  const requests: string[] = [];
  let issued = 0;
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      void (async () => {
        requests.push(`${req.method} ${req.url}`);
        const auth = JSON.parse(body || "{}") as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- test-side JSON
        const v3 = req.url === "/v3/auth/tokens";
        const ok = v3
          ? auth.auth?.identity?.password?.user?.name === "tester" &&
            auth.auth.identity.password.user.password === "testing" &&
            auth.auth.identity.password.user.domain?.name === "Default" &&
            auth.auth.scope?.project?.name === "test"
          : req.url === "/v2.0/tokens" &&
            auth.auth?.passwordCredentials?.username === "tester" &&
            auth.auth.passwordCredentials.password === "testing" &&
            auth.auth.tenantName === "test";
        if (!ok) {
          res.writeHead(401).end();
          return;
        }
        const real = await fetch(swiftAuthUrl, { headers: { "X-Auth-User": "test:tester", "X-Auth-Key": "testing" } });
        const token = issued++ === 0 ? "AUTH_tk00000000000000000000000000000000" : real.headers.get("x-auth-token")!;
        const url = real.headers.get("x-storage-url")!;
        if (v3) {
          res.writeHead(201, { "Content-Type": "application/json", "X-Subject-Token": token });
          res.end(
            JSON.stringify({
              token: {
                catalog: [
                  { type: "identity", endpoints: [] },
                  {
                    type: "object-store",
                    endpoints: [
                      { interface: "internal", region: "RegionOne", url: "http://127.0.0.1:1/nowhere" },
                      { interface: "public", region: "RegionOne", url },
                    ],
                  },
                ],
              },
            }),
          );
        } else {
          res.writeHead(200, { "Content-Type": "application/json" });
          res.end(
            JSON.stringify({
              access: {
                token: { id: token },
                serviceCatalog: [
                  {
                    type: "object-store",
                    endpoints: [{ region: "RegionOne", publicURL: url, internalURL: "http://127.0.0.1:1/nowhere" }],
                  },
                ],
              },
            }),
          );
        }
      })();
    });
  });
  return { server, requests };
}

describe("swift auth v2.0 and v3 (Keystone protocol), token refresh, errors", { skip }, () => {
  let ks: ReturnType<typeof keystone>;
  let base = "";
  before(async () => {
    ks = keystone(running!.env.SWIFT_AUTH_URL!);
    await new Promise<void>((resolve) => ks.server.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${(ks.server.address() as { port: number }).port}`;
  });
  after(() => new Promise<void>((resolve) => ks.server.close(() => resolve())));

  async function roundTrip(store: StorageBackend): Promise<void> {
    await store.storeFileFromMemory("a/b", Buffer.from("hello"), { "k-1": "v" });
    assert.equal((await store.getContentsToMemory("a/b")).data.toString(), "hello");
    assert.deepEqual(
      (await store.list("a")).map((o) => o.name),
      ["a/b"],
    );
    await store.deleteTree("");
    await store.close();
  }

  it("authenticates with v2.0 (tenant) and again after a 401", async () => {
    const store = await createStorage({
      storage_type: "swift",
      user: "tester",
      key: "testing",
      tenant_name: "test",
      auth_url: `${base}/v2.0`,
      auth_version: "2.0",
      region_name: "RegionOne",
      container_name: "pghoard-auth",
      prefix: "v2",
    });
    await roundTrip(store);
    assert.ok(ks.requests.filter((r) => r === "POST /v2.0/tokens").length >= 2, ks.requests.join());
  });

  it("authenticates with v3 (user and project by name and domain)", async () => {
    const before = ks.requests.length;
    const store = await createStorage({
      storage_type: "swift",
      user: "tester",
      key: "testing",
      auth_url: `${base}/v3`,
      auth_version: "3.0",
      user_domain_name: "Default",
      project_name: "test",
      project_domain_name: "Default",
      endpoint_type: "publicURL",
      container_name: "pghoard-auth",
      prefix: "v3",
    });
    await roundTrip(store);
    assert.ok(ks.requests.slice(before).includes("POST /v3/auth/tokens"));
  });

  it("fails fast on a wrong key without naming it", async () => {
    await assert.rejects(
      createStorage({
        storage_type: "swift",
        user: "test:tester",
        key: "wrong-secret-7c1d",
        auth_url: running!.env.SWIFT_AUTH_URL!,
        auth_version: "1.0",
        container_name: "pghoard-auth",
      }),
      (err) => {
        assert.ok(err instanceof StorageError, String(err));
        assert.match(err.message, /^swift: .*HTTP 401/);
        assert.doesNotMatch(err.message, /wrong-secret-7c1d/);
        return true;
      },
    );
  });
});

describe("swift object layout as rohmu writes it", { skip }, () => {
  let token = "";
  let storageUrl = "";
  const container = "pghoard-layout";
  const raw = async (method: string, path: string): Promise<Response> =>
    fetch(`${storageUrl}/${container}${path}`, { method, headers: { "X-Auth-Token": token } });

  before(async () => {
    const res = await fetch(running!.env.SWIFT_AUTH_URL!, {
      headers: { "X-Auth-User": "test:tester", "X-Auth-Key": "testing" },
    });
    token = res.headers.get("x-auth-token")!;
    storageUrl = res.headers.get("x-storage-url")!;
  });

  const open = (segmentSize: number) =>
    createStorage({
      storage_type: "swift",
      user: "test:tester",
      key: "testing",
      auth_url: running!.env.SWIFT_AUTH_URL!,
      auth_version: "1.0",
      container_name: container,
      prefix: "pfx",
      segment_size: segmentSize,
    });

  it("stores objects above segment_size as a DLO: <dir>_segments/<name>/%08x and a manifest", async () => {
    const store = await open(1024 * 1024);
    await store.storeFileFromMemory("site/basebackup/2024-05-01_13-56_0", Buffer.alloc(2.5 * 1024 * 1024, 7), {
      format: "x",
    });
    const listing = (await (await raw("GET", "?format=json&prefix=pfx/site/")).json()) as Array<{
      name: string;
      bytes: number;
    }>;
    assert.deepEqual(
      listing.map((i) => [i.name, i.bytes]),
      [
        ["pfx/site/basebackup/2024-05-01_13-56_0", 0],
        ["pfx/site/basebackup_segments/2024-05-01_13-56_0/00000001", 1048576],
        ["pfx/site/basebackup_segments/2024-05-01_13-56_0/00000002", 1048576],
        ["pfx/site/basebackup_segments/2024-05-01_13-56_0/00000003", 524288],
      ],
    );
    const head = await raw("HEAD", "/pfx/site/basebackup/2024-05-01_13-56_0");
    assert.equal(
      head.headers.get("x-object-manifest"),
      `${container}/pfx/site/basebackup_segments/2024-05-01_13-56_0/`,
    );
    assert.equal(head.headers.get("x-object-meta-format"), "x");
    await store.deleteKey("site/basebackup/2024-05-01_13-56_0");
    assert.deepEqual(await (await raw("GET", "?format=json&prefix=pfx/")).json(), []);
    await store.close();
  });

  it("stores a stream of unknown length within segment_size as one plain object", async () => {
    const store = await open(24 * 1024 * 1024);
    const data = Buffer.alloc(18 * 1024 * 1024, 3); // above the 16 MiB kept in memory, below segment_size
    await store.storeFileObject("site/basebackup/plain", Readable.from([data.subarray(0, 9e6), data.subarray(9e6)]), {
      a: "1",
    });
    const head = await raw("HEAD", "/pfx/site/basebackup/plain");
    assert.equal(head.headers.get("x-object-manifest"), null);
    assert.equal(head.headers.get("content-length"), String(data.length));
    assert.equal(head.headers.get("x-object-meta-a"), "1");
    const listing = (await (await raw("GET", "?format=json&prefix=pfx/")).json()) as Array<{ name: string }>;
    assert.deepEqual(
      listing.map((i) => i.name),
      ["pfx/site/basebackup/plain"],
    );
    await store.deleteTree("");
    await store.close();
  });
});

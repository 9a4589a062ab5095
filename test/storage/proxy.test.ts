/**
 * `object_storage.proxy_info` through real proxies: OpenSSH's `ssh -D` (SOCKS5, against the sshd
 * test server) and the `proxy` npm package (an HTTP proxy with CONNECT), in front of the real
 * Swift s3api and Azurite servers. Google has no server here: the test shows the JSON API request
 * reaching the HTTP proxy (which answers 407, so nothing leaves the machine).
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer as createHttpServer, type IncomingMessage } from "node:http";
import { connect, type AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { createProxy } from "proxy";
import { createStorage } from "../../src/storage/index.js";
import type { StorageBackend } from "../../src/storage/types.js";
import { freePort, startServer, type TestServer } from "./servers.js";

// The sshd test server refuses tunnels unless asked (start-sshd.sh).
process.env.SSHD_ALLOW_TCP_FORWARDING = "yes";
const started = await Promise.all([startServer("swift"), startServer("azurite"), startServer("sshd")]);
const [swift, azurite, sshd] = started.map((s) => ("env" in s ? s : null)) as (TestServer | null)[];
const skip = started.map((s) => ("skip" in s ? s.skip : "")).find(Boolean) || false;
after(async () => Promise.all([swift?.stop(), azurite?.stop(), sshd?.stop()]));

/** `ssh -N -D`: a SOCKS5 proxy; its `-v` log names every tunnel it opens. */
let socks: { port: number; child: ChildProcess; log: () => string } | null = null;
/** The `proxy` package's HTTP proxy; records what it was asked for. */
let http: { port: number; seen: string[]; close: () => Promise<void> } | null = null;
const PROXY_USER = "pguser";
const PROXY_PASS = "p@ss:word";

async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`ssh -D exited with ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, "127.0.0.1", () => (s.destroy(), resolve(true)));
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("ssh -D did not listen");
}

before(async () => {
  if (skip) return;
  const port = await freePort();
  let log = "";
  const child = spawn(
    "ssh",
    [
      ...["-N", "-v", "-D", `127.0.0.1:${port}`, "-p", sshd!.env.SFTP_PORT!, "-i", sshd!.env.SFTP_PRIVATE_KEY!],
      ...["-o", `UserKnownHostsFile=${sshd!.env.SFTP_KNOWN_HOSTS!}`, "-o", "StrictHostKeyChecking=yes"],
      ...["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-F", "/dev/null"],
      `${sshd!.env.SFTP_USER!}@127.0.0.1`,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  child.stderr!.on("data", (d: Buffer) => (log += d.toString("utf8")));
  socks = { port, child, log: () => log };
  await waitForPort(port, child);

  const seen: string[] = [];
  const server = createProxy(createHttpServer());
  // The proxy asks this for every request (plain) and every CONNECT (https) before serving it.
  server.authenticate = (req: IncomingMessage) => {
    seen.push(`${req.method} ${req.url}`);
    const expected = `Basic ${Buffer.from(`${PROXY_USER}:${PROXY_PASS}`).toString("base64")}`;
    return req.headers["proxy-authorization"] === expected;
  };
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  http = {
    port: (server.address() as AddressInfo).port,
    seen,
    close: () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))),
  };
});
after(async () => {
  socks?.child.kill();
  await http?.close();
});

async function roundTrip(store: StorageBackend, key: string): Promise<void> {
  try {
    await store.storeFileFromMemory(key, Buffer.from("through the proxy"), { a: "1" });
    const { data } = await store.getContentsToMemory(key);
    assert.equal(data.toString(), "through the proxy");
    assert.deepEqual(
      (await store.list("p")).map((o) => o.name),
      [key],
    );
    await store.deleteKey(key);
  } finally {
    await store.close();
  }
}

function s3Config(proxy: Record<string, unknown>, bucket: string) {
  const endpoint = new URL(swift!.env.S3_ENDPOINT!);
  return {
    storage_type: "s3",
    region: swift!.env.S3_REGION!,
    bucket_name: bucket,
    aws_access_key_id: swift!.env.S3_ACCESS_KEY!,
    aws_secret_access_key: swift!.env.S3_SECRET_KEY!,
    host: endpoint.hostname,
    port: Number(endpoint.port),
    is_secure: false,
    proxy_info: proxy,
  };
}

describe("proxy_info", { skip }, () => {
  it("s3 through a SOCKS5 proxy (ssh -D)", async () => {
    const before = (socks!.log().match(/dynamic-tcpip/g) ?? []).length;
    await roundTrip(
      await createStorage(s3Config({ type: "socks5", host: "127.0.0.1", port: socks!.port }, "proxy-socks")),
      "p/k1",
    );
    assert.ok((socks!.log().match(/dynamic-tcpip/g) ?? []).length > before, "ssh opened no tunnel");
    assert.match(socks!.log(), new RegExp(`Connection to port ${socks!.port} forwarding to socks`));
  });

  it("s3 through an HTTP proxy with credentials, to a plain-http endpoint", async () => {
    const endpoint = new URL(swift!.env.S3_ENDPOINT!);
    http!.seen.length = 0;
    const proxy = { type: "http", host: "127.0.0.1", port: http!.port, user: PROXY_USER, pass: PROXY_PASS };
    await roundTrip(await createStorage(s3Config(proxy, "proxy-http")), "p/k2");
    // http-proxy-agent sends absolute URIs to the proxy
    assert.ok(
      http!.seen.some((line) => line.startsWith(`PUT http://${endpoint.host}/proxy-http/p/k2`)),
      String(http!.seen),
    );
    assert.ok(http!.seen.some((line) => line.startsWith(`GET http://${endpoint.host}/proxy-http/p/k2`)));
  });

  it("s3: a wrong proxy password fails the request (so the proxy is not bypassed)", async () => {
    const proxy = { type: "http", host: "127.0.0.1", port: http!.port, user: PROXY_USER, pass: "wrong" };
    await assert.rejects(createStorage(s3Config(proxy, "proxy-http")), (err: Error) => {
      assert.ok(!err.message.includes("wrong"), "the proxy password is in the error");
      return true;
    });
  });

  it("azure through a SOCKS5 proxy (ssh -D)", async () => {
    const before = (socks!.log().match(/dynamic-tcpip/g) ?? []).length;
    const store = await createStorage({
      storage_type: "azure",
      account_name: azurite!.env.AZURE_ACCOUNT_NAME!,
      account_key: azurite!.env.AZURE_ACCOUNT_KEY!,
      bucket_name: "proxy-socks",
      host: azurite!.env.AZURE_BLOB_HOST!,
      port: Number(azurite!.env.AZURE_BLOB_PORT!),
      is_secure: false,
      proxy_info: { type: "socks5", host: "127.0.0.1", port: socks!.port },
    });
    await roundTrip(store, "p/k3");
    assert.ok((socks!.log().match(/dynamic-tcpip/g) ?? []).length > before, "ssh opened no tunnel");
  });

  it("azure through an HTTP proxy with credentials", async () => {
    http!.seen.length = 0;
    const store = await createStorage({
      storage_type: "azure",
      account_name: azurite!.env.AZURE_ACCOUNT_NAME!,
      account_key: azurite!.env.AZURE_ACCOUNT_KEY!,
      bucket_name: "proxy-http",
      host: azurite!.env.AZURE_BLOB_HOST!,
      port: Number(azurite!.env.AZURE_BLOB_PORT!),
      is_secure: false,
      proxy_info: { type: "http", host: "127.0.0.1", port: http!.port, user: PROXY_USER, pass: PROXY_PASS },
    });
    await roundTrip(store, "p/k4");
    const blob = `http://${azurite!.env.AZURE_BLOB_HOST!}:${azurite!.env.AZURE_BLOB_PORT!}/${azurite!.env.AZURE_ACCOUNT_NAME!}/proxy-http/p/k4`;
    assert.ok(
      http!.seen.some((line) => line.startsWith(`PUT ${blob}`)),
      String(http!.seen),
    );
  });

  it("google: the JSON API request goes to the HTTP proxy (CONNECT storage.googleapis.com:443)", async () => {
    http!.seen.length = 0;
    // Wrong credentials: the proxy answers 407 (not retried), so no connection leaves the machine.
    const proxy = { type: "http", host: "127.0.0.1", port: http!.port, user: PROXY_USER, pass: "nope" };
    await assert.rejects(
      createStorage({
        storage_type: "google",
        project_id: "p",
        bucket_name: "pghoard-proxy-test",
        credentials: { type: "access_token", access_token: "t" },
        proxy_info: proxy,
      }),
    );
    assert.deepEqual(http!.seen.slice(0, 1), ["CONNECT storage.googleapis.com:443"]);
  });

  it("google refuses socks5 with a clear error", async () => {
    await assert.rejects(
      createStorage({
        storage_type: "google",
        project_id: "p",
        bucket_name: "b",
        credentials: { type: "access_token", access_token: "t" },
        proxy_info: { type: "socks5", host: "127.0.0.1", port: 1 },
      }),
      /proxy_info type socks5 is not supported for google/,
    );
  });
});

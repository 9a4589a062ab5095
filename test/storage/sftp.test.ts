import { after } from "node:test";
import { createStorage } from "../../src/storage/index.js";
import { runConformance } from "./conformance.js";
import { startServer, type TestServer } from "./servers.js";

const server = await startServer("sshd");
const running: TestServer | null = "env" in server ? server : null;
after(async () => running?.stop());

runConformance("sftp (OpenSSH 9.2 internal-sftp)", {
  skip: "skip" in server ? server.skip : false,
  makeBackend: (prefix) =>
    createStorage({
      storage_type: "sftp",
      server: running!.env.SFTP_HOST!,
      port: Number(running!.env.SFTP_PORT!),
      username: running!.env.SFTP_USER!,
      private_key: running!.env.SFTP_PRIVATE_KEY!,
      // relative to the login directory (SFTP_ROOT)
      prefix: `backups/${prefix}`,
    }),
  // 600 directory entries with the sidecars: several READDIR replies (OpenSSH sends 100 per reply)
  manyKeys: 300,
  // no segments on SFTP; still exercises long streamed uploads and interrupted ones
  largeObjectSize: 6 * 1024 * 1024 + 12345,
});

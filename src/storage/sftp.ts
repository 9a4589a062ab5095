/**
 * SFTP backend on ssh2-sftp-client, laid out like the local backend (and rohmu's SFTPTransfer):
 * `<prefix>/<key>` plus a `<key>.metadata` JSON sidecar written after the data, whose appearance
 * publishes the object. Data and sidecar are both uploaded under temp names and renamed
 * (posix-rename), so an interrupted upload leaves nothing under the key. Like rohmu, the server's
 * host key is not verified (the configuration has no place for one).
 */
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { PassThrough, Readable } from "node:stream";
import SftpClient from "ssh2-sftp-client";
import { decodeSidecar, encodeSidecar, isSkippedName } from "./local.js";
import { withRetry } from "./retry.js";
import { ErrorFactory, isConnectionError, isNoSuchFile } from "./errors.js";
import { byName, KeyMapper, mapLimit, RemoteBackend, sanitizeMetadata } from "./shared.js";
import { StorageNotFoundError, type ListOptions, type Metadata, type StoredObject } from "./types.js";

export interface SftpConfig {
  storage_type?: "sftp";
  server: string;
  port: number | string;
  username: string;
  password?: string | null;
  /** Path of a private key file (RSA in rohmu; any key type ssh2 reads works here). */
  private_key?: string | null;
  prefix?: string | null;
}

const SIDECAR_SUFFIX = ".metadata";
/**
 * Operations in flight on the one SFTP channel: ssh2-sftp-client adds listeners per operation, and
 * more than about 10 at once trip Node's leak warning without any gain in speed.
 */
const CONCURRENCY = 8;
/** Read requests of 1 MiB: about 1.4x the throughput of ssh2's 64 KiB default. */
const READ_CHUNK = 1024 * 1024;

/** Writes of at least 1 MiB: ssh2 waits for each write's reply, so small writes crawl. */
const WRITE_CHUNK = 1024 * 1024;

/** Re-chunks a stream into pieces of at least `size` bytes (the last may be shorter). */
function coalesce(source: Readable, size: number): Readable {
  return Readable.from(
    (async function* () {
      let parts: Buffer[] = [];
      let length = 0;
      for await (const chunk of source) {
        const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
        parts.push(buf);
        length += buf.length;
        if (length >= size) {
          yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, length);
          parts = [];
          length = 0;
        }
      }
      if (length > 0) yield Buffer.concat(parts, length);
    })(),
    { objectMode: false },
  );
}

/**
 * A read stream of a remote file. ssh2 closes the remote handle after the last byte and reports
 * a connection closed meanwhile as an 'error' on the finished stream, which nobody listens to
 * any more; the PassThrough in between takes errors only while data is still flowing.
 */
function remoteReadStream(sftp: SftpClient, remotePath: string): Readable {
  const raw = sftp.createReadStream(remotePath, { highWaterMark: READ_CHUNK }) as unknown as Readable;
  const out = new PassThrough({ highWaterMark: READ_CHUNK });
  raw.on("error", (err) => {
    if (!out.writableEnded) out.destroy(err);
  });
  out.on("close", () => {
    if (!raw.destroyed && !raw.readableEnded) raw.destroy();
  });
  raw.pipe(out);
  return out;
}

/** A counting semaphore. */
class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly max: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

function randomSuffix(): string {
  return randomBytes(8).toString("hex");
}

export class SftpBackend extends RemoteBackend {
  readonly storageType = "sftp";
  protected readonly errors: ErrorFactory;
  private readonly keys: KeyMapper;
  private client: SftpClient | null = null;
  private connecting: Promise<SftpClient> | null = null;
  private readonly madeDirs = new Set<string>();
  private readonly limiter = new Limiter(CONCURRENCY);

  constructor(
    private readonly config: SftpConfig,
    private readonly privateKey: Buffer | undefined,
  ) {
    super();
    this.errors = new ErrorFactory("sftp", [config.password], isNoSuchFile);
    // a prefix may be absolute or relative to the login directory: keep a leading `/`
    this.keys = new KeyMapper(config.prefix, false);
  }

  private async connection(): Promise<SftpClient> {
    if (this.client) return this.client;
    this.connecting ??= (async () => {
      const client = new SftpClient("pghoard");
      try {
        await client.connect({
          host: this.config.server,
          port: Number(this.config.port),
          username: this.config.username,
          ...(this.privateKey ? { privateKey: this.privateKey } : { password: this.config.password ?? undefined }),
          readyTimeout: 20_000,
          keepaliveInterval: 10_000,
          retries: 0,
        });
      } catch (err) {
        await client.end().catch(() => undefined);
        throw err;
      }
      // ssh2-sftp-client adds listeners per operation; the limiter keeps them few, this the warning quiet
      (client as unknown as { client?: { setMaxListeners(n: number): void } }).client?.setMaxListeners(4 * CONCURRENCY);
      client.on("error", () => {
        // a dropped connection is noticed by the next operation, which reconnects
      });
      this.client = client;
      this.madeDirs.clear();
      return client;
    })().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private async dropConnection(): Promise<void> {
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
  }

  /** Runs `op` with a connection; on a dropped connection it reconnects and retries. */
  private async run<T>(op: (sftp: SftpClient) => Promise<T>): Promise<T> {
    return withRetry(
      async () => {
        const sftp = await this.connection();
        return this.limiter.run(async () => {
          try {
            return await op(sftp);
          } catch (err) {
            if (isConnectionError(err) && !isNoSuchFile(err)) await this.dropConnection();
            throw err;
          }
        });
      },
      { attempts: 4, isRetryable: (err) => isConnectionError(err) && !isNoSuchFile(err) },
    );
  }

  async init(): Promise<this> {
    try {
      await this.run(async () => undefined);
    } catch (err) {
      throw this.errors.wrap(err, "connect to", `${this.config.server}:${this.config.port}`);
    }
    return this;
  }

  private objectPath(key: string): string {
    return this.keys.key(key.replace(/^\/+|\/+$/g, ""));
  }

  private async mkdirp(sftp: SftpClient, dir: string): Promise<void> {
    if (!dir || dir === "." || dir === "/" || this.madeDirs.has(dir)) return;
    if (!(await sftp.exists(dir))) {
      try {
        await sftp.mkdir(dir, true);
      } catch (err) {
        // a concurrent upload may have made it meanwhile
        if ((await sftp.exists(dir)) !== "d") throw err;
      }
    }
    this.madeDirs.add(dir);
  }

  private async readSidecar(sftp: SftpClient, objectPath: string): Promise<Metadata | null> {
    try {
      const data = (await sftp.get(objectPath + SIDECAR_SUFFIX)) as Buffer;
      return decodeSidecar(data.toString("utf8"));
    } catch (err) {
      if (isNoSuchFile(err)) return null;
      throw err;
    }
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    const metadata = await this.errors.wrapping("metadata of", key, () =>
      this.run((sftp) => this.readSidecar(sftp, this.objectPath(key))),
    );
    if (!metadata) throw new StorageNotFoundError(key);
    return metadata;
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    const objectPath = this.objectPath(key);
    const found = await this.errors.wrapping("download", key, () =>
      this.run(async (sftp) => {
        const metadata = await this.readSidecar(sftp, objectPath);
        if (!metadata) return null;
        let size: number;
        try {
          const st = await sftp.stat(objectPath);
          if (st.isDirectory) return null;
          size = st.size;
        } catch (err) {
          if (isNoSuchFile(err)) return null;
          throw err;
        }
        return { metadata, size, stream: remoteReadStream(sftp, objectPath) };
      }),
    );
    if (!found) throw new StorageNotFoundError(key);
    return found;
  }

  private async listDir(
    sftp: SftpClient,
    prefix: string,
    recursive: boolean,
    out: Array<{ key: string; size: number; mtime: number }>,
  ): Promise<void> {
    let entries: SftpClient.FileInfo[];
    const dir = this.keys.directory(prefix).replace(/\/$/, "") || ".";
    try {
      entries = await sftp.list(dir);
    } catch (err) {
      if (isNoSuchFile(err)) return;
      throw err;
    }
    const names = new Set(entries.map((e) => e.name));
    const base = prefix.replace(/^\/+|\/+$/g, "");
    for (const entry of entries) {
      if (isSkippedName(entry.name)) continue;
      const key = base ? `${base}/${entry.name}` : entry.name;
      if (entry.type === "d") {
        if (recursive) await this.listDir(sftp, key, true, out);
      } else if (names.has(entry.name + SIDECAR_SUFFIX)) {
        // a file without its sidecar is still being written (or was abandoned): invisible
        out.push({ key, size: entry.size, mtime: entry.modifyTime });
      }
    }
  }

  async list(prefix: string, options: ListOptions = {}): Promise<StoredObject[]> {
    return await this.errors.wrapping("list", prefix, async () => {
      const found: Array<{ key: string; size: number; mtime: number }> = [];
      await this.run((sftp) => this.listDir(sftp, prefix, options.recursive ?? false, found));
      // one limiter slot per sidecar read (a slot held across them could deadlock the limiter)
      const items = await mapLimit(found, CONCURRENCY, async (f): Promise<StoredObject | null> => {
        const metadata = await this.run((sftp) => this.readSidecar(sftp, this.objectPath(f.key)));
        if (!metadata) return null;
        return { name: f.key, size: f.size, lastModified: new Date(f.mtime), metadata };
      });
      return items.filter((o): o is StoredObject => o !== null).sort(byName);
    });
  }

  private async removeObject(sftp: SftpClient, objectPath: string): Promise<boolean> {
    try {
      await sftp.delete(objectPath + SIDECAR_SUFFIX);
    } catch (err) {
      if (isNoSuchFile(err)) return false;
      throw err;
    }
    await sftp.delete(objectPath, true);
    return true;
  }

  async deleteKey(key: string): Promise<void> {
    const existed = await this.errors.wrapping("delete", key, () =>
      this.run((sftp) => this.removeObject(sftp, this.objectPath(key))),
    );
    if (!existed) throw new StorageNotFoundError(key);
  }

  async deleteTree(prefix: string): Promise<void> {
    await this.errors.wrapping("delete tree", prefix, async () => {
      const found: Array<{ key: string; size: number; mtime: number }> = [];
      await this.run((sftp) => this.listDir(sftp, prefix, true, found));
      await mapLimit(found, CONCURRENCY, (f) => this.run((sftp) => this.removeObject(sftp, this.objectPath(f.key))));
      this.madeDirs.clear();
    });
  }

  /** Writes data to a temp name, renames it over the key, then publishes the sidecar the same way. */
  private async upload(
    key: string,
    writeData: (sftp: SftpClient, tempPath: string) => Promise<void>,
    metadata: Metadata,
  ): Promise<void> {
    const objectPath = this.objectPath(key);
    const dir = path.posix.dirname(objectPath);
    const tempPath = path.posix.join(dir, `.concurrent_upload_${randomSuffix()}`);
    const sidecar = objectPath + SIDECAR_SUFFIX;
    const sidecarTemp = `${sidecar}${randomSuffix()}.metadata_tmp`;
    const sftp = await this.connection();
    await this.limiter.run(async () => {
      try {
        await this.mkdirp(sftp, dir);
        await writeData(sftp, tempPath);
        await sftp.posixRename(tempPath, objectPath);
        await sftp.put(Buffer.from(encodeSidecar(sanitizeMetadata(metadata)), "utf8"), sidecarTemp);
        await sftp.posixRename(sidecarTemp, sidecar);
      } catch (err) {
        await sftp.delete(tempPath, true).catch(() => undefined);
        await sftp.delete(sidecarTemp, true).catch(() => undefined);
        if (isConnectionError(err)) await this.dropConnection();
        throw err;
      }
    });
  }

  override async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    await this.errors.wrapping("upload", key, async () => {
      await withRetry(() => this.upload(key, async (sftp, temp) => void (await sftp.put(data, temp)), metadata), {
        attempts: 4,
        isRetryable: isConnectionError,
      });
    });
  }

  override async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    await this.errors.wrapping("upload", key, async () => {
      await withRetry(
        () =>
          this.upload(
            key,
            async (sftp, temp) =>
              void (await sftp.put(createReadStream(filePath, { highWaterMark: WRITE_CHUNK }), temp)),
            metadata,
          ),
        {
          attempts: 4,
          isRetryable: isConnectionError,
        },
      );
    });
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    try {
      await this.upload(
        key,
        async (sftp, temp) => void (await sftp.put(coalesce(source, WRITE_CHUNK), temp)),
        metadata,
      );
    } catch (err) {
      source.destroy();
      throw this.errors.wrap(err, "upload", key);
    }
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    // SFTP has no server-side copy: the bytes pass through this client
    const sourceMetadata = await this.getMetadataForKey(sourceKey);
    await this.errors.translating(`copy to ${destinationKey} from`, sourceKey, async () => {
      await this.upload(
        destinationKey,
        async (sftp, temp) => {
          const data = remoteReadStream(sftp, this.objectPath(sourceKey));
          await sftp.put(data, temp);
        },
        metadata ?? sourceMetadata,
      );
    });
  }

  async close(): Promise<void> {
    await this.dropConnection();
  }
}

export async function createBackend(config: SftpConfig): Promise<SftpBackend> {
  const errors = new ErrorFactory("sftp", [config.password], isNoSuchFile);
  for (const name of ["server", "port", "username"] as const) {
    if (!config[name]) throw errors.error(`object_storage.${name} is required`);
  }
  if (!config.password && !config.private_key) throw errors.error("Password or private key required");
  let privateKey: Buffer | undefined;
  if (config.private_key) {
    try {
      privateKey = await readFile(config.private_key);
    } catch (err) {
      throw errors.error(`cannot read private_key ${config.private_key}: ${(err as Error).message}`);
    }
  }
  return new SftpBackend(config, privateKey).init();
}

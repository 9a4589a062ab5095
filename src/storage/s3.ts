/**
 * S3 backend (AWS and S3-compatible stores) on @aws-sdk/client-s3, following rohmu's S3Transfer:
 * bucket created when missing, user metadata as x-amz-meta-* (S3 lower-cases the names), optional
 * SSE-AES256, multipart uploads in `segment_size` parts for large objects (lib-storage Upload,
 * which aborts the multipart upload on failure, so nothing appears under the key).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import os from "node:os";
import { Readable } from "node:stream";
import {
  AbortMultipartUploadCommand,
  CopyObjectCommand,
  CreateBucketCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type BucketLocationConstraint,
  type PutObjectCommandInput,
  type S3ClientConfig,
  type StorageClass,
  type _Object,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { ErrorFactory, isNotFound, statusOf } from "./errors.js";
import { createProxyAgents, type ProxyInfo } from "./proxy.js";
import { byName, KeyMapper, mapLimit, RemoteBackend, sanitizeMetadata } from "./shared.js";
import type { ListOptions, Metadata, StoredObject } from "./types.js";

export type { ProxyInfo } from "./proxy.js";

export interface S3Config {
  storage_type?: "s3";
  region: string;
  bucket_name: string;
  aws_access_key_id?: string | null;
  aws_secret_access_key?: string | null;
  aws_session_token?: string | null;
  prefix?: string | null;
  host?: string | null;
  port?: number | string | null;
  is_secure?: boolean;
  is_verify_tls?: boolean;
  cert_path?: string | null;
  addressing_style?: "auto" | "path" | "virtual";
  encrypted?: boolean;
  storage_class?: string | null;
  segment_size?: number | null;
  min_multipart_chunk_size?: number | null;
  connect_timeout?: number | null;
  read_timeout?: number | null;
  use_dualstack_endpoint?: boolean;
  user_agent_extra?: string | null;
  proxy_info?: ProxyInfo | null;
  /** Not upstream: keys per listing request (S3's maximum, and default, is 1000). */
  list_page_size?: number;
}

const MIB = 1024 * 1024;
/** S3's smallest allowed part (all but the last). */
const MIN_PART_SIZE = 5 * MIB;

/** rohmu's default part size: total memory MiB / 400, clamped to 5..524 MiB. */
export function defaultSegmentSize(): number {
  const mib = Math.floor(os.totalmem() / MIB);
  return Math.min(Math.max(Math.floor(mib / 400), 5), 524) * MIB;
}

/** Swift's s3api (and older S3 implementations) insist on Content-MD5 for DeleteObjects. */
function addContentMd5ForDeleteObjects(client: S3Client): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const request = args.request as { body?: unknown; headers?: Record<string, string> };
      if (context.commandName === "DeleteObjectsCommand" && typeof request.body === "string" && request.headers) {
        request.headers["content-md5"] = createHash("md5").update(request.body).digest("base64");
      }
      return next(args);
    },
    { step: "build", name: "contentMd5ForDeleteObjects" },
  );
}

/** CopySource is `bucket/key` with the key URL-encoded (the SDK sends it verbatim). */
function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split("/").map(encodeURIComponent).join("/")}`;
}

export class S3Backend extends RemoteBackend {
  readonly storageType = "s3";
  protected readonly errors: ErrorFactory;
  private readonly keys: KeyMapper;
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly location: string;
  readonly partSize: number;
  private readonly pageSize: number;
  private readonly extraPutArgs: Pick<PutObjectCommandInput, "ServerSideEncryption" | "StorageClass">;

  constructor(
    private readonly config: S3Config,
    clientConfig: S3ClientConfig,
    location: string,
  ) {
    super();
    this.errors = new ErrorFactory("s3", [
      config.aws_secret_access_key,
      config.aws_session_token,
      config.proxy_info?.pass,
    ]);
    this.keys = new KeyMapper(config.prefix);
    this.bucket = config.bucket_name;
    this.location = location;
    this.client = new S3Client(clientConfig);
    addContentMd5ForDeleteObjects(this.client);
    const wanted = config.segment_size ?? defaultSegmentSize();
    this.partSize = Math.max(wanted, config.min_multipart_chunk_size ?? 0, MIN_PART_SIZE);
    this.pageSize = Math.min(config.list_page_size ?? 1000, 1000);
    this.extraPutArgs = {};
    if (config.encrypted) this.extraPutArgs.ServerSideEncryption = "AES256";
    if (config.storage_class) this.extraPutArgs.StorageClass = config.storage_class as StorageClass;
  }

  /** HeadBucket, and CreateBucket when it is missing (rohmu `check_or_create_bucket`). */
  async init(): Promise<this> {
    let create = false;
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      const status = statusOf(err);
      if (status === 301) throw this.errors.error(`wrong region for bucket ${this.bucket}, check the configuration`);
      else if (status === 403) {
        // no s3:ListBucket permission: assume the bucket exists and we may write to it
      } else if (status === 400 || status === 404) create = true;
      else throw this.errors.wrap(err, "check bucket", this.bucket);
    }
    if (create) {
      try {
        await this.client.send(
          new CreateBucketCommand({
            Bucket: this.bucket,
            ...(this.location
              ? { CreateBucketConfiguration: { LocationConstraint: this.location as BucketLocationConstraint } }
              : {}),
          }),
        );
      } catch (err) {
        const name = (err as { name?: string }).name;
        if (name !== "BucketAlreadyOwnedByYou") throw this.errors.wrap(err, "create bucket", this.bucket);
      }
    }
    return this;
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    return await this.errors.translating("metadata of", key, async () => {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keys.key(key) }));
      return res.Metadata ?? {};
    });
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    return await this.errors.translating("download", key, async () => {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keys.key(key) }));
      const body = res.Body as Readable | undefined;
      return { stream: body ?? Readable.from([]), metadata: res.Metadata ?? {}, size: res.ContentLength ?? 0 };
    });
  }

  private async listRaw(prefix: string, recursive: boolean): Promise<_Object[]> {
    const out: _Object[] = [];
    let token: string | undefined;
    do {
      const res = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix,
          Delimiter: recursive ? undefined : "/",
          ContinuationToken: token,
          MaxKeys: this.pageSize,
        }),
      );
      out.push(...(res.Contents ?? []));
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async list(prefix: string, options: ListOptions = {}): Promise<StoredObject[]> {
    return await this.errors.wrapping("list", prefix, async () => {
      const raw = await this.listRaw(this.keys.directory(prefix), options.recursive ?? false);
      // listings carry no user metadata: one HEAD per object, as rohmu does
      const items = await mapLimit(raw, 16, async (item): Promise<StoredObject | null> => {
        let metadata: Metadata;
        try {
          const head = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: item.Key! }));
          metadata = Object.fromEntries(Object.entries(head.Metadata ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
        } catch (err) {
          if (isNotFound(err)) return null; // deleted since the listing
          throw err;
        }
        return {
          name: this.keys.fromBackend(item.Key!),
          size: item.Size ?? 0,
          lastModified: item.LastModified ?? new Date(0),
          metadata,
          md5: item.ETag?.replace(/"/g, ""),
        };
      });
      return items.filter((o): o is StoredObject => o !== null).sort(byName);
    });
  }

  async deleteKey(key: string): Promise<void> {
    await this.getMetadataForKey(key); // S3 deletes silently; rohmu checks existence first
    await this.errors.wrapping("delete", key, async () => {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keys.key(key) }));
    });
  }

  /**
   * Aborts multipart uploads below `prefix` started before `olderThan`: a process killed mid
   * upload leaves them, invisible in listings, their parts stored (and billed) for ever.
   */
  async removeInterruptedWrites(prefix: string, olderThan: Date): Promise<string[]> {
    return await this.errors.wrapping("abort interrupted uploads", prefix, async () => {
      const aborted: string[] = [];
      let keyMarker: string | undefined;
      let uploadIdMarker: string | undefined;
      for (;;) {
        const res = await this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: this.keys.directory(prefix),
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
          }),
        );
        for (const upload of res.Uploads ?? []) {
          if (!upload.Key || !upload.UploadId || !upload.Initiated || upload.Initiated >= olderThan) continue;
          await this.client.send(
            new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.Key, UploadId: upload.UploadId }),
          );
          aborted.push(this.keys.fromBackend(upload.Key));
        }
        if (!res.IsTruncated) return aborted;
        keyMarker = res.NextKeyMarker;
        uploadIdMarker = res.NextUploadIdMarker;
      }
    });
  }

  async deleteTree(prefix: string): Promise<void> {
    await this.errors.wrapping("delete tree", prefix, async () => {
      const items = await this.listRaw(this.keys.directory(prefix), true);
      for (let i = 0; i < items.length; i += 1000) {
        const batch = items.slice(i, i + 1000);
        const res = await this.client.send(
          new DeleteObjectsCommand({
            Bucket: this.bucket,
            Delete: { Objects: batch.map((o) => ({ Key: o.Key! })), Quiet: true },
          }),
        );
        const failed = (res.Errors ?? []).filter((e) => e.Code !== "NoSuchKey");
        if (failed.length > 0) {
          throw this.errors.error(
            `delete tree ${prefix}: ${failed.length} objects not deleted, e.g. ${failed[0]!.Key}: ${failed[0]!.Code}`,
          );
        }
      }
    });
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    await this.errors.translating(`copy to ${destinationKey} from`, sourceKey, async () => {
      await this.client.send(
        new CopyObjectCommand({
          Bucket: this.bucket,
          CopySource: copySource(this.bucket, this.keys.key(sourceKey)),
          Key: this.keys.key(destinationKey),
          Metadata: metadata ? sanitizeMetadata(metadata) : undefined,
          MetadataDirective: metadata ? "REPLACE" : "COPY",
          ...this.extraPutArgs,
        }),
      );
    });
  }

  override async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    if (data.length > this.partSize) {
      await this.storeFileObject(key, Readable.from([data]), metadata);
      return;
    }
    await this.errors.wrapping("upload", key, async () => {
      // a Buffer body is replayed by the SDK's own retries
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.keys.key(key),
          Body: data,
          Metadata: sanitizeMetadata(metadata),
          ...this.extraPutArgs,
        }),
      );
    });
  }

  override async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    await this.storeFileObject(key, createReadStream(filePath), metadata);
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    // Upload buffers each part (Buffer bodies, so the SDK can retry a part and no aws-chunked
    // encoding is needed); a body smaller than one part goes out as a single PutObject.
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.bucket,
        Key: this.keys.key(key),
        Body: source,
        Metadata: sanitizeMetadata(metadata),
        ...this.extraPutArgs,
      },
      partSize: this.partSize,
      queueSize: 2,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      source.destroy();
      throw this.errors.wrap(err, "upload", key);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

export async function createBackend(config: S3Config): Promise<S3Backend> {
  const errors = new ErrorFactory("s3", [
    config.aws_secret_access_key,
    config.aws_session_token,
    config.proxy_info?.pass,
  ]);
  if (!config.bucket_name) throw errors.error("object_storage.bucket_name is required");
  if (config.region === undefined || config.region === null) throw errors.error("object_storage.region is required");
  if (config.cert_path && !config.is_verify_tls)
    throw errors.error("object_storage.cert_path is set but is_verify_tls is false");
  // The SDK warns on every start under Node 20 that releases after January 2027 need Node 22; the
  // version is pinned in package.json, so the warning is only noise in the daemon's stderr.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const custom = Boolean(config.host) && Boolean(config.port);
  const clientConfig: S3ClientConfig = {
    // the SDK signs with SigV4 only; an empty region (SigV2 in rohmu) signs as us-east-1
    region: config.region || "us-east-1",
    // Streamed bodies must not be sent aws-chunked with trailing checksums: S3-compatible stores
    // reject or mis-store them (test/servers/README.md).
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    maxAttempts: custom ? 10 : 5,
    retryMode: "standard",
  };
  if (config.aws_access_key_id && config.aws_secret_access_key) {
    clientConfig.credentials = {
      accessKeyId: config.aws_access_key_id,
      secretAccessKey: config.aws_secret_access_key,
      ...(config.aws_session_token ? { sessionToken: config.aws_session_token } : {}),
    };
  }
  if (config.user_agent_extra) clientConfig.customUserAgent = config.user_agent_extra;
  let location = "";
  const agentOptions: { keepAlive: boolean; maxSockets: number; rejectUnauthorized?: boolean; ca?: Buffer } = {
    keepAlive: true,
    maxSockets: 50,
  };
  if (custom) {
    const scheme = config.is_secure ? "https" : "http";
    clientConfig.endpoint = `${scheme}://${config.host}:${config.port}`;
    clientConfig.forcePathStyle = (config.addressing_style ?? "path") !== "virtual";
    agentOptions.rejectUnauthorized = Boolean(config.is_verify_tls);
    if (config.cert_path) agentOptions.ca = await readFile(config.cert_path);
    location = config.region ?? "";
  } else {
    clientConfig.useDualstackEndpoint = config.use_dualstack_endpoint ?? true;
    if (config.region && config.region !== "us-east-1") location = config.region;
  }
  let httpsAgent: HttpsAgent = new HttpsAgent(agentOptions);
  let httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 50 });
  if (config.proxy_info) {
    // Both schemes: a custom endpoint is often plain http (is_secure false).
    const agents = await createProxyAgents(config.proxy_info, agentOptions);
    httpsAgent = agents.https;
    httpAgent = agents.http;
  }
  clientConfig.requestHandler = {
    httpAgent,
    httpsAgent,
    ...(config.connect_timeout ? { connectionTimeout: config.connect_timeout * 1000 } : {}),
    ...(config.read_timeout ? { requestTimeout: config.read_timeout * 1000 } : {}),
  };
  return new S3Backend(config, clientConfig, location).init();
}

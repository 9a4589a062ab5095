/**
 * Azure Blob Storage backend on @azure/storage-blob, following rohmu's AzureTransfer: container
 * created when missing, block blobs (staged blocks become visible only at commit, so a failed
 * upload leaves nothing under the key), metadata names with `-` stored as `_` and every `_` read
 * back as `-` (Azure metadata names must be C# identifiers).
 */
import type { Agent as HttpAgent } from "node:http";
import os from "node:os";
import type { Readable } from "node:stream";
import {
  AnonymousCredential,
  BlobServiceClient,
  newPipeline,
  StorageSharedKeyCredential,
  type RequestPolicyFactory,
  type BlobItem,
  type BlockBlobClient,
  type BlockBlobParallelUploadOptions,
  type ContainerClient,
  type StoragePipelineOptions,
} from "@azure/storage-blob";
import { ErrorFactory, statusOf } from "./errors.js";
import { byName, KeyMapper, mapLimit, RemoteBackend, sanitizeMetadata } from "./shared.js";
import type { ListOptions, Metadata, StoredObject } from "./types.js";
import { createProxyAgents, type ProxyInfo } from "./proxy.js";

export interface AzureConfig {
  storage_type?: "azure";
  account_name: string;
  account_key?: string | null;
  sas_token?: string | null;
  bucket_name: string;
  prefix?: string | null;
  azure_cloud?: "public" | "germany" | "china" | null;
  host?: string | null;
  port?: number | string | null;
  is_secure?: boolean;
  proxy_info?: ProxyInfo | null;
  /** Not upstream: block size for uploads (default: total memory MiB / 1000, 4..100 MiB, as rohmu). */
  block_size?: number;
  /** Not upstream: blobs per listing request (Azure's maximum and default is 5000). */
  list_page_size?: number;
}

const ENDPOINT_SUFFIXES: Record<string, string> = {
  public: "core.windows.net",
  germany: "core.cloudapi.de",
  china: "core.chinacloudapi.cn",
};

const MIB = 1024 * 1024;

/** rohmu's block size: total memory MiB / 1000, clamped to 4..100 MiB. */
export function defaultBlockSize(): number {
  return Math.max(Math.min(Math.floor(os.totalmem() / MIB / 1000), 100), 4) * MIB;
}

/** Azure metadata names cannot contain `-`; rohmu writes `_` instead. */
function toAzureMetadata(metadata: Metadata): Metadata {
  return sanitizeMetadata(metadata, "_");
}

function fromAzureMetadata(metadata: Record<string, string> | undefined): Metadata {
  const out: Metadata = {};
  // lower case: HTTP headers (HEAD, GET) lose the case that listings keep; one form for both
  for (const [k, v] of Object.entries(metadata ?? {})) out[k.replaceAll("_", "-").toLowerCase()] = v;
  return out;
}

export class AzureBackend extends RemoteBackend {
  readonly storageType = "azure";
  protected readonly errors: ErrorFactory;
  private readonly keys: KeyMapper;
  private readonly container: ContainerClient;
  readonly blockSize: number;
  private readonly pageSize: number;

  constructor(config: AzureConfig, errors: ErrorFactory, service: BlobServiceClient) {
    super();
    this.errors = errors;
    this.keys = new KeyMapper(config.prefix);
    this.container = service.getContainerClient(config.bucket_name);
    this.blockSize = config.block_size ?? defaultBlockSize();
    this.pageSize = Math.min(config.list_page_size ?? 5000, 5000);
  }

  async init(): Promise<this> {
    try {
      await this.container.createIfNotExists();
    } catch (err) {
      // a SAS token without create permission: assume the container exists (as s3 does on 403);
      // real permission problems surface on the first operation
      if (statusOf(err) !== 403) throw this.errors.wrap(err, "open container", this.container.containerName);
    }
    return this;
  }

  private blob(key: string) {
    return this.container.getBlockBlobClient(this.keys.key(key));
  }

  async getMetadataForKey(key: string): Promise<Metadata> {
    return await this.errors.translating("metadata of", key, async () => {
      return fromAzureMetadata((await this.blob(key).getProperties()).metadata);
    });
  }

  async getReadStream(key: string): Promise<{ stream: Readable; metadata: Metadata; size: number }> {
    return await this.errors.translating("download", key, async () => {
      // the SDK resumes the body from the last offset when the connection drops
      const res = await this.blob(key).download(0, undefined, { maxRetryRequests: 5 });
      return {
        stream: res.readableStreamBody as Readable,
        metadata: fromAzureMetadata(res.metadata),
        size: res.contentLength ?? 0,
      };
    });
  }

  private async listRaw(prefix: string, recursive: boolean, includeMetadata: boolean): Promise<BlobItem[]> {
    const out: BlobItem[] = [];
    const options = { prefix: prefix || undefined, includeMetadata };
    if (recursive) {
      for await (const page of this.container.listBlobsFlat(options).byPage({ maxPageSize: this.pageSize })) {
        out.push(...page.segment.blobItems);
      }
    } else {
      for await (const page of this.container
        .listBlobsByHierarchy("/", options)
        .byPage({ maxPageSize: this.pageSize })) {
        out.push(...page.segment.blobItems);
      }
    }
    return out;
  }

  async list(prefix: string, options: ListOptions = {}): Promise<StoredObject[]> {
    return await this.errors.wrapping("list", prefix, async () => {
      const items = await this.listRaw(this.keys.directory(prefix), options.recursive ?? false, true);
      return items
        .map((item) => ({
          name: this.keys.fromBackend(item.name),
          size: item.properties.contentLength ?? 0,
          lastModified: item.properties.lastModified,
          metadata: fromAzureMetadata(item.metadata),
          md5: item.properties.contentMD5 ? Buffer.from(item.properties.contentMD5).toString("hex") : undefined,
        }))
        .sort(byName);
    });
  }

  async deleteKey(key: string): Promise<void> {
    await this.errors.translating("delete", key, async () => {
      await this.blob(key).delete();
    });
  }

  async deleteTree(prefix: string): Promise<void> {
    await this.errors.wrapping("delete tree", prefix, async () => {
      const items = await this.listRaw(this.keys.directory(prefix), true, false);
      await mapLimit(items, 16, async (item) => {
        await this.container.getBlobClient(item.name).deleteIfExists();
      });
    });
  }

  async copyFile(sourceKey: string, destinationKey: string, metadata?: Metadata): Promise<void> {
    await this.errors.translating(`copy to ${destinationKey} from`, sourceKey, async () => {
      const source = this.blob(sourceKey);
      // server-side copy; without metadata the source's metadata is kept
      const poller = await this.blob(destinationKey).beginCopyFromURL(source.url, {
        ...(metadata ? { metadata: toAzureMetadata(metadata) } : {}),
        intervalInMs: 100,
      });
      const result = await poller.pollUntilDone();
      if (result.copyStatus && result.copyStatus !== "success") {
        throw this.errors.error(`copy of ${sourceKey} to ${destinationKey} ended with status ${result.copyStatus}`);
      }
    });
  }

  /** Known-size uploads: one request up to a block, staged blocks (4 at a time) above. */
  private async uploadKnownSize(
    key: string,
    metadata: Metadata,
    send: (blob: BlockBlobClient, options: BlockBlobParallelUploadOptions) => Promise<unknown>,
  ): Promise<void> {
    await this.errors.wrapping("upload", key, async () => {
      await send(this.blob(key), {
        metadata: toAzureMetadata(metadata),
        blockSize: this.blockSize,
        maxSingleShotSize: this.blockSize,
        concurrency: 4,
      });
    });
  }

  override async storeFileFromMemory(key: string, data: Buffer, metadata: Metadata): Promise<void> {
    await this.uploadKnownSize(key, metadata, (blob, options) => blob.uploadData(data, options));
  }

  override async storeFileFromDisk(key: string, filePath: string, metadata: Metadata): Promise<void> {
    await this.uploadKnownSize(key, metadata, (blob, options) => blob.uploadFile(filePath, options));
  }

  async storeFileObject(key: string, source: Readable, metadata: Metadata): Promise<void> {
    try {
      // staged blocks stay invisible until the final commit, so a failing source leaves nothing
      await this.blob(key).uploadStream(source, this.blockSize, 2, { metadata: toAzureMetadata(metadata) });
    } catch (err) {
      source.destroy();
      throw this.errors.wrap(err, "upload", key);
    }
  }

  async close(): Promise<void> {
    // the SDK keeps no resources that need closing
  }
}

/**
 * The SDK's own `proxyOptions` speak only HTTP CONNECT; socks5 needs our agent on every request.
 * A request policy sets `agent` on each request (the SDK's node HTTP client uses it when set).
 */
function agentPolicy(agent: HttpAgent): RequestPolicyFactory {
  return {
    create: (next) => ({
      sendRequest(request) {
        request.agent = agent;
        return next.sendRequest(request);
      },
    }),
  };
}

export async function createBackend(config: AzureConfig): Promise<AzureBackend> {
  const errors = new ErrorFactory("azure", [config.account_key, config.sas_token, config.proxy_info?.pass]);
  if (!config.account_name) throw errors.error("object_storage.account_name is required");
  if (!config.bucket_name) throw errors.error("object_storage.bucket_name is required");
  if (!config.account_key && !config.sas_token) {
    throw errors.error("one of object_storage.account_key or sas_token must be specified to authenticate");
  }
  const cloud = config.azure_cloud ?? "public";
  const suffix = ENDPOINT_SUFFIXES[cloud];
  if (!suffix) throw errors.error(`unknown azure_cloud ${String(cloud)}`);
  const scheme = config.is_secure === false ? "http" : "https";
  if (Boolean(config.host) !== Boolean(config.port))
    throw errors.error("object_storage.host and port must be set together");
  let url = config.host
    ? `${scheme}://${config.host}:${config.port}/${config.account_name}`
    : `${scheme}://${config.account_name}.blob.${suffix}`;
  const options: StoragePipelineOptions = {
    retryOptions: { maxTries: 6, retryDelayInMs: 500, maxRetryDelayInMs: 10_000 },
  };
  const agents = config.proxy_info ? await createProxyAgents(config.proxy_info) : null;
  let credential: StorageSharedKeyCredential | AnonymousCredential;
  if (config.account_key) {
    credential = new StorageSharedKeyCredential(config.account_name, config.account_key);
  } else {
    url += `?${config.sas_token!.replace(/^\?/, "")}`;
    credential = new AnonymousCredential();
  }
  const pipeline = newPipeline(credential, options);
  if (agents) pipeline.factories.push(agentPolicy(scheme === "https" ? agents.https : agents.http));
  const service = new BlobServiceClient(url, pipeline);
  return new AzureBackend(config, errors, service).init();
}

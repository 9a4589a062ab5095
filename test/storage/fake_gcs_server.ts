/**
 * A test double of the Google Cloud Storage JSON API, for the `google` backend tests only: no real
 * GCS server or emulator can run here (none in npm or Debian; the firebase emulator needs a Java
 * runtime download and corrupts chunked resumable uploads, see test/servers/README.md).
 *
 * It keeps objects in memory and implements the subset @google-cloud/storage 7 uses: bucket get
 * and insert; object get, delete, list (prefix, delimiter, maxResults, pageToken), rewrite/copy;
 * `alt=media` downloads with Range and x-goog-hash; uploads of type media, multipart and
 * resumable (Content-Range chunks answered with 308 + Range, status queries, cancel). Requests
 * must carry the configured bearer token. `failNext()` makes the next requests fail with a
 * status, to exercise the client's retries.
 */
import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { crc32c } from "@node-rs/crc32";

interface StoredObject {
  data: Buffer;
  metadata: Record<string, string> | undefined;
  contentType: string;
  generation: number;
  created: Date;
  updated: Date;
}

interface UploadSession {
  bucket: string;
  name: string;
  resource: Record<string, unknown>;
  contentType: string;
  parts: Buffer[];
  size: number;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function b64crc32c(data: Buffer): string {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(crc32c(data) >>> 0);
  return out.toString("base64");
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Splits a multipart/related body into its parts' bodies. */
function multipartParts(body: Buffer, boundary: string): Buffer[] {
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: Buffer[] = [];
  let pos = body.indexOf(delimiter);
  while (pos >= 0) {
    const start = pos + delimiter.length;
    if (body.subarray(start, start + 2).toString() === "--") break;
    const next = body.indexOf(delimiter, start);
    if (next < 0) break;
    let part = body.subarray(start, next);
    if (part.subarray(0, 2).toString() === "\r\n") part = part.subarray(2);
    if (part.subarray(part.length - 2).toString() === "\r\n") part = part.subarray(0, part.length - 2);
    const headerEnd = part.indexOf("\r\n\r\n");
    parts.push(headerEnd >= 0 ? part.subarray(headerEnd + 4) : part);
    pos = next;
  }
  return parts;
}

export class FakeGcsServer {
  private server: Server | null = null;
  private readonly buckets = new Map<string, Map<string, StoredObject>>();
  private readonly sessions = new Map<string, UploadSession>();
  private generation = 1_700_000_000_000_000;
  private failures: { count: number; status: number } = { count: 0, status: 503 };
  /** Requests seen, by kind (e.g. "upload:resumable-chunk"), for tests to check what the client did. */
  readonly requests = new Map<string, number>();
  url = "";

  constructor(private readonly token: string) {}

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        const status = err instanceof HttpError ? err.status : 500;
        if (!res.headersSent) {
          res.writeHead(status, { "Content-Type": "application/json" });
          res.end(JSON.stringify({ error: { code: status, message: String((err as Error).message), errors: [] } }));
        } else res.destroy();
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server = null;
  }

  /** The next `count` requests fail with `status` (after reading their bodies). */
  failNext(count: number, status = 503): void {
    this.failures = { count, status };
  }

  private count(kind: string): void {
    this.requests.set(kind, (this.requests.get(kind) ?? 0) + 1);
  }

  private resource(bucket: string, name: string, obj: StoredObject): Record<string, unknown> {
    return {
      kind: "storage#object",
      id: `${bucket}/${name}/${obj.generation}`,
      selfLink: `${this.url}/storage/v1/b/${bucket}/o/${encodeURIComponent(name)}`,
      mediaLink: `${this.url}/download/storage/v1/b/${bucket}/o/${encodeURIComponent(name)}?generation=${obj.generation}&alt=media`,
      name,
      bucket,
      generation: String(obj.generation),
      metageneration: "1",
      contentType: obj.contentType,
      storageClass: "STANDARD",
      size: String(obj.data.length),
      md5Hash: createHash("md5").update(obj.data).digest("base64"),
      crc32c: b64crc32c(obj.data),
      etag: `C${obj.generation}`,
      timeCreated: obj.created.toISOString(),
      updated: obj.updated.toISOString(),
      ...(obj.metadata && Object.keys(obj.metadata).length > 0 ? { metadata: obj.metadata } : {}),
    };
  }

  private bucket(name: string): Map<string, StoredObject> {
    const bucket = this.buckets.get(name);
    if (!bucket) throw new HttpError(404, `The specified bucket does not exist: ${name}`);
    return bucket;
  }

  private store(
    bucket: string,
    name: string,
    data: Buffer,
    resource: Record<string, unknown>,
    contentType?: string,
  ): StoredObject {
    const now = new Date();
    const obj: StoredObject = {
      data,
      metadata: (resource.metadata as Record<string, string> | undefined) ?? undefined,
      contentType: contentType ?? (resource.contentType as string | undefined) ?? "application/octet-stream",
      generation: ++this.generation,
      created: now,
      updated: now,
    };
    this.bucket(bucket).set(name, obj);
    return obj;
  }

  private json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    res.writeHead(status, { "Content-Type": "application/json; charset=UTF-8", ...headers });
    res.end(JSON.stringify(body));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.url);
    const segments = url.pathname.split("/").slice(1).map(decodeURIComponent);
    // As on GCS, a resumable session URI is its own credential (the client sends no token there).
    // Session starts carry no token either: @google-cloud/storage 7.22 does not pass
    // useAuthWithCustomEndpoint on to resumable uploads (File#startResumableUpload_), so against a
    // custom endpoint they go out unauthenticated; against GCS itself they are authenticated.
    const sessionRequest = url.searchParams.has("upload_id") || url.searchParams.get("uploadType") === "resumable";
    if (this.token && !sessionRequest && req.headers.authorization !== `Bearer ${this.token}`) {
      await readBody(req);
      throw new HttpError(401, "Invalid Credentials");
    }
    if (this.failures.count > 0) {
      this.failures.count--;
      await readBody(req);
      this.count("injected-failure");
      throw new HttpError(this.failures.status, "injected failure");
    }
    const method = req.method ?? "GET";
    // /storage/v1/..., /upload/storage/v1/... and /download/storage/v1/...
    const root = segments[0] === "upload" || segments[0] === "download" ? segments.shift()! : "storage";
    const [api, version, b, bucketName, o, objectName, op, b2, bucket2, o2, object2] = segments;
    if (api !== "storage" || version !== "v1" || b !== "b")
      throw new HttpError(501, `not implemented: ${method} ${url.pathname}`);
    if (root === "upload") {
      if (o !== "o" || objectName !== undefined) throw new HttpError(501, `not implemented: ${method} ${url.pathname}`);
      return this.upload(req, res, bucketName!, url);
    }

    if (bucketName === undefined) {
      if (method !== "POST") throw new HttpError(501, "bucket listing not implemented");
      const body = JSON.parse((await readBody(req)).toString() || "{}") as { name?: string };
      this.count("bucket:insert");
      if (!body.name) throw new HttpError(400, "bucket name required");
      if (this.buckets.has(body.name))
        throw new HttpError(409, "You already own this bucket. Please select another name.");
      this.buckets.set(body.name, new Map());
      return this.json(res, 200, { kind: "storage#bucket", id: body.name, name: body.name, location: "US" });
    }
    if (o === undefined) {
      this.count("bucket:get");
      this.bucket(bucketName);
      return this.json(res, 200, { kind: "storage#bucket", id: bucketName, name: bucketName, location: "US" });
    }
    if (objectName === undefined) {
      if (method !== "GET") throw new HttpError(501, `not implemented: ${method} ${url.pathname}`);
      return this.list(res, bucketName, url);
    }
    if (op === "rewriteTo" || op === "copyTo") {
      if (b2 !== "b" || o2 !== "o" || !bucket2 || !object2) throw new HttpError(400, "bad copy destination");
      const body = JSON.parse((await readBody(req)).toString() || "{}") as Record<string, unknown>;
      this.count(`object:${op}`);
      const source = this.bucket(bucketName).get(objectName);
      if (!source) throw new HttpError(404, `No such object: ${bucketName}/${objectName}`);
      // a resource in the body describes the destination; without one the source's metadata is kept
      const resource =
        "metadata" in body || "contentType" in body
          ? body
          : { metadata: source.metadata, contentType: source.contentType };
      const copied = this.store(bucket2, object2, Buffer.from(source.data), resource);
      const result = this.resource(bucket2, object2, copied);
      if (op === "copyTo") return this.json(res, 200, result);
      return this.json(res, 200, {
        kind: "storage#rewriteResponse",
        totalBytesRewritten: String(source.data.length),
        objectSize: String(source.data.length),
        done: true,
        resource: result,
      });
    }
    if (op !== undefined) throw new HttpError(501, `not implemented: ${method} ${url.pathname}`);

    const bucket = this.bucket(bucketName);
    const obj = bucket.get(objectName);
    const generation = url.searchParams.get("generation");
    if (!obj || (generation && generation !== String(obj.generation))) {
      await readBody(req);
      throw new HttpError(404, `No such object: ${bucketName}/${objectName}`);
    }
    if (method === "DELETE") {
      this.count("object:delete");
      bucket.delete(objectName);
      res.writeHead(204).end();
      return;
    }
    if (method !== "GET") throw new HttpError(501, `not implemented: ${method} ${url.pathname}`);
    if (url.searchParams.get("alt") !== "media") {
      this.count("object:get");
      return this.json(res, 200, this.resource(bucketName, objectName, obj));
    }
    this.count("object:media");
    const headers: Record<string, string> = {
      "Content-Type": obj.contentType,
      "x-goog-generation": String(obj.generation),
      "x-goog-metageneration": "1",
      "x-goog-stored-content-length": String(obj.data.length),
      "x-goog-hash": `crc32c=${b64crc32c(obj.data)},md5=${createHash("md5").update(obj.data).digest("base64")}`,
      ETag: `C${obj.generation}`,
    };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (range) {
      const start = Number(range[1]);
      const end = Math.min(range[2] ? Number(range[2]) : obj.data.length - 1, obj.data.length - 1);
      if (start >= obj.data.length) {
        res.writeHead(416, { "Content-Range": `bytes */${obj.data.length}` }).end();
        return;
      }
      res.writeHead(206, {
        ...headers,
        "Content-Length": String(end - start + 1),
        "Content-Range": `bytes ${start}-${end}/${obj.data.length}`,
      });
      res.end(obj.data.subarray(start, end + 1));
      return;
    }
    res.writeHead(200, { ...headers, "Content-Length": String(obj.data.length) });
    res.end(obj.data);
  }

  private list(res: ServerResponse, bucketName: string, url: URL): void {
    this.count("object:list");
    const bucket = this.bucket(bucketName);
    const prefix = url.searchParams.get("prefix") ?? "";
    const delimiter = url.searchParams.get("delimiter") ?? "";
    const maxResults = Math.min(Number(url.searchParams.get("maxResults") ?? 1000) || 1000, 1000);
    const after = url.searchParams.get("pageToken")
      ? Buffer.from(url.searchParams.get("pageToken")!, "base64url").toString()
      : null;
    // objects and common prefixes in one sorted sequence, paged together as GCS does
    const entries = new Map<string, { kind: "object" | "prefix" }>();
    for (const name of bucket.keys()) {
      if (!name.startsWith(prefix)) continue;
      const cut = delimiter ? name.indexOf(delimiter, prefix.length) : -1;
      if (cut >= 0) entries.set(name.slice(0, cut + delimiter.length), { kind: "prefix" });
      else entries.set(name, { kind: "object" });
    }
    const sorted = [...entries.keys()].sort().filter((n) => after === null || n > after);
    const page = sorted.slice(0, maxResults);
    const body: Record<string, unknown> = { kind: "storage#objects" };
    const items = page
      .filter((n) => entries.get(n)!.kind === "object")
      .map((n) => this.resource(bucketName, n, bucket.get(n)!));
    const prefixes = page.filter((n) => entries.get(n)!.kind === "prefix");
    if (items.length > 0) body.items = items;
    if (prefixes.length > 0) body.prefixes = prefixes;
    if (sorted.length > page.length) body.nextPageToken = Buffer.from(page[page.length - 1]!).toString("base64url");
    this.json(res, 200, body);
  }

  private async upload(req: IncomingMessage, res: ServerResponse, bucketName: string, url: URL): Promise<void> {
    const method = req.method ?? "POST";
    const type = url.searchParams.get("uploadType");
    const uploadId = url.searchParams.get("upload_id");
    if (uploadId) return this.resumableRequest(req, res, uploadId);
    const body = await readBody(req);
    this.bucket(bucketName);
    if (method !== "POST") throw new HttpError(501, `not implemented: ${method} upload`);
    if (type === "media") {
      this.count("upload:media");
      const name = url.searchParams.get("name");
      if (!name) throw new HttpError(400, "name required");
      const obj = this.store(bucketName, name, body, {}, req.headers["content-type"]);
      return this.json(res, 200, this.resource(bucketName, name, obj));
    }
    if (type === "multipart") {
      this.count("upload:multipart");
      const boundary = /boundary="?([^";]+)"?/.exec(req.headers["content-type"] ?? "")?.[1];
      if (!boundary) throw new HttpError(400, "multipart boundary missing");
      const [meta, data] = multipartParts(body, boundary);
      if (!meta || !data) throw new HttpError(400, "multipart body needs two parts");
      const resource = JSON.parse(meta.toString()) as Record<string, unknown>;
      const name = (url.searchParams.get("name") ?? resource.name) as string | undefined;
      if (!name) throw new HttpError(400, "name required");
      const obj = this.store(bucketName, name, Buffer.from(data), resource);
      return this.json(res, 200, this.resource(bucketName, name, obj));
    }
    if (type === "resumable") {
      this.count("upload:resumable-start");
      const resource = (body.length > 0 ? JSON.parse(body.toString()) : {}) as Record<string, unknown>;
      const name = (url.searchParams.get("name") ?? resource.name) as string | undefined;
      if (!name) throw new HttpError(400, "name required");
      const id = randomBytes(12).toString("hex");
      const contentType =
        (req.headers["x-upload-content-type"] as string | undefined) ??
        (resource.contentType as string | undefined) ??
        "application/octet-stream";
      this.sessions.set(id, { bucket: bucketName, name, resource, contentType, parts: [], size: 0 });
      const location = `${this.url}/upload/storage/v1/b/${bucketName}/o?uploadType=resumable&name=${encodeURIComponent(name)}&upload_id=${id}`;
      res.writeHead(200, { Location: location, "Content-Length": "0" }).end();
      return;
    }
    throw new HttpError(400, `unknown uploadType ${String(type)}`);
  }

  /** A PUT (chunk or status query) or DELETE (cancel) on a resumable upload session. */
  private async resumableRequest(req: IncomingMessage, res: ServerResponse, id: string): Promise<void> {
    const session = this.sessions.get(id);
    const body = await readBody(req);
    if (!session) throw new HttpError(404, "No such upload session");
    if (req.method === "DELETE") {
      this.count("upload:resumable-cancel");
      this.sessions.delete(id);
      res.writeHead(499).end();
      return;
    }
    const incomplete = (): void => {
      const headers: Record<string, string> = { "Content-Length": "0" };
      if (session.size > 0) headers.Range = `bytes=0-${session.size - 1}`;
      res.writeHead(308, headers).end();
    };
    const finish = (): void => {
      this.sessions.delete(id);
      const obj = this.store(
        session.bucket,
        session.name,
        Buffer.concat(session.parts, session.size),
        session.resource,
        session.contentType,
      );
      this.json(res, 200, this.resource(session.bucket, session.name, obj));
    };
    const range = req.headers["content-range"];
    if (!range) {
      this.count("upload:resumable-whole");
      session.parts.push(body);
      session.size += body.length;
      return finish();
    }
    const status = /^bytes \*\/(\d+|\*)$/.exec(range);
    if (status) {
      this.count("upload:resumable-status");
      if (status[1] !== "*" && Number(status[1]) === session.size) return finish();
      return incomplete();
    }
    const chunk = /^bytes (\d+)-(\d+|\*)\/(\d+|\*)$/.exec(range);
    if (!chunk) throw new HttpError(400, `bad Content-Range ${range}`);
    this.count("upload:resumable-chunk");
    const start = Number(chunk[1]);
    if (start > session.size) throw new HttpError(400, `chunk starts at ${start}, have ${session.size}`);
    // bytes the server already has are skipped, as GCS does after a resumed upload
    const fresh = body.subarray(session.size - start);
    session.parts.push(fresh);
    session.size += fresh.length;
    if (chunk[3] !== "*") {
      if (session.size === Number(chunk[3])) return finish();
      if (session.size > Number(chunk[3])) throw new HttpError(400, "more bytes than the declared total");
      return incomplete();
    }
    if (chunk[2] === "*") return finish(); // one request carrying everything
    return incomplete();
  }
}

/**
 * Worker thread of FileFormatPool: runs the codec chains on files (paths in, so no buffers cross
 * threads) and on streams fed in ~1 MiB transferred batches, with credit-based flow control so
 * that neither side buffers without bound.
 *
 * The same module also runs as each pool worker's hasher thread (`workerData.role`): a file
 * task's plaintext digest is computed there, one chunk behind the codec, so hashing overlaps
 * compression instead of adding to it (sha1 of a 16 MiB segment costs about as much as snappy).
 */
import { createHash, type Hash } from "node:crypto";
import { open, rename, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { Worker, parentPort, workerData } from "node:worker_threads";
import { defaultTempPath, fsyncDirectory, removeIfExists } from "../common/fs.js";
import { KeyNotFoundError, fromWire, toWire, type WireError } from "./errors.js";
import { nodeHashName } from "./hash.js";
import { createDecoder, createEncoder, decodePlan } from "./pipeline.js";
import { TRANSFER_CHUNK, type EncodeTaskOptions, type FromWorker, type StreamSpec, type TaskRequest, type TaskResult, type ToWorker } from "./protocol.js";
import type { Codec, EncodeFileResult, Metadata, PrivateKeyLookup } from "./types.js";

/** Worker output not yet consumed by the main thread before the worker pauses. */
const OUTPUT_CREDIT = 4 * TRANSFER_CHUNK;

/** Hashing in the hasher thread pays off only beyond a couple of chunks (each is a round trip). */
const OFF_THREAD_HASH_MIN_SIZE = 2 * TRANSFER_CHUNK;
/** Hashed chunk buffers kept for reuse by readChunks. */
const MAX_SPARE_CHUNKS = 4;
/** Chunks sent to the hasher thread and not yet hashed, per hash (bounds memory if it lags). */
const MAX_HASH_CHUNKS_IN_FLIGHT = 4;
const HASHER_ROLE = "fileformat-hasher";

const port = parentPort;
if (port === null) throw new Error("fileformat worker must run in a worker thread");
const isHasher = (workerData as { role?: string } | null)?.role === HASHER_ROLE;

function post(message: FromWorker, transfer?: ArrayBuffer[]): void {
  port!.postMessage(message, transfer ?? []);
}

/** Copies output pieces into fixed-size buffers that own their ArrayBuffer (transferable). */
class Accumulator {
  private buf = Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
  private length = 0;
  total = 0;

  constructor(private readonly emit: (full: Buffer) => Promise<void> | void) {}

  /** Returns a promise only when the consumer asks us to wait. */
  add(piece: Buffer): Promise<void> | undefined {
    this.total += piece.length;
    let offset = 0;
    let wait: Promise<void> | undefined;
    while (offset < piece.length) {
      const take = Math.min(this.buf.length - this.length, piece.length - offset);
      piece.copy(this.buf, this.length, offset, offset + take);
      this.length += take;
      offset += take;
      if (this.length === this.buf.length) {
        const result = this.handOver();
        if (result) wait = wait ? wait.then(() => result) : result;
      }
    }
    return wait;
  }

  flush(): Promise<void> | void {
    if (this.length > 0) return this.handOver();
  }

  private handOver(): Promise<void> | void {
    let full: Buffer;
    if (this.length < this.buf.length >>> 1) {
      // A small batch (idle flush): exact-size copy, so a transferred buffer never pins 1 MiB.
      full = Buffer.allocUnsafeSlow(this.length);
      this.buf.copy(full, 0, 0, this.length);
    } else {
      full = this.buf.subarray(0, this.length);
      this.buf = Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
    }
    this.length = 0;
    return this.emit(full);
  }
}

async function writeAll(handle: FileHandle, buf: Buffer): Promise<void> {
  let offset = 0;
  while (offset < buf.length) {
    const { bytesWritten } = await handle.write(buf, offset, buf.length - offset);
    offset += bytesWritten;
  }
}

/**
 * Sequential reads with one read in flight ahead of processing (overlaps I/O and CPU). Two
 * buffers alternate: a chunk is reused once the consumer asked for the one after it, which is
 * safe because no codec keeps a reference to its input after `update()` is drained and pump()
 * copies every output piece before pulling more input. Reuse avoids a fresh 1 MiB allocation
 * (and its page faults) per MiB, which is measurable next to snappy's speed.
 */
async function* readChunks(handle: FileHandle): AsyncGenerator<Buffer> {
  const buffers: Buffer[] = [Buffer.allocUnsafeSlow(TRANSFER_CHUNK), Buffer.allocUnsafeSlow(TRANSFER_CHUNK)];
  let turn = 0;
  const readOne = async (): Promise<Buffer | null> => {
    // A detached buffer went to the hasher thread with its chunk (OffThreadHash): take another.
    if (buffers[turn].buffer.byteLength === 0) buffers[turn] = hashHelper.takeSpare() ?? Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
    const buf = buffers[turn];
    turn ^= 1;
    const { bytesRead } = await handle.read(buf, 0, buf.length, null);
    return bytesRead === 0 ? null : buf.subarray(0, bytesRead);
  };
  let next = readOne();
  for (;;) {
    const chunk = await next;
    if (chunk === null) return;
    next = readOne();
    yield chunk;
  }
}

async function pump(codec: Codec, input: AsyncIterable<Buffer>, out: Accumulator, hash: PlaintextHash | null): Promise<number> {
  let originalSize = 0;
  for await (const chunk of input) {
    originalSize += chunk.length;
    for (const piece of codec.update(chunk)) {
      const wait = out.add(piece);
      if (wait) await wait;
    }
    // After the codec (which keeps no reference to its input): an OffThreadHash takes the chunk.
    const hashed = hash?.update(chunk);
    if (hashed) await hashed;
  }
  for (const piece of codec.final()) {
    const wait = out.add(piece);
    if (wait) await wait;
  }
  await out.flush();
  return originalSize;
}

function keyLookup(privateKeyPem: string | null): PrivateKeyLookup {
  return () => privateKeyPem ?? undefined;
}

function makeDecoder(metadata: Metadata, privateKeyPem: string | null): Codec {
  const plan = decodePlan(metadata);
  if (plan.encryptionKeyId !== null && !privateKeyPem) throw new KeyNotFoundError(plan.encryptionKeyId);
  return createDecoder(metadata, keyLookup(privateKeyPem));
}

/** Writes to a temp file beside `dst`; publish() fsyncs and renames, discard() removes it. */
async function withAtomicOutput<T>(dst: string, body: (out: Accumulator) => Promise<T>): Promise<T> {
  const tempPath = defaultTempPath(dst);
  const handle = await open(tempPath, "wx", 0o644);
  let closed = false;
  try {
    const out = new Accumulator((full) => writeAll(handle, full));
    const result = await body(out);
    await handle.sync();
    closed = true;
    await handle.close();
    await rename(tempPath, dst);
    await fsyncDirectory(path.dirname(path.resolve(dst)));
    return result;
  } catch (err) {
    if (!closed) await handle.close().catch(() => undefined);
    await removeIfExists(tempPath).catch(() => undefined);
    throw err;
  }
}

async function withInput<T>(src: string, body: (chunks: AsyncIterable<Buffer>, size: number) => Promise<T>): Promise<T> {
  const handle = await open(src, "r");
  try {
    return await body(readChunks(handle), (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}

/** Digest of the plaintext, computed in this thread or in the hasher thread. */
interface PlaintextHash {
  /** Returns a promise only when the caller must wait before the next update. */
  update(chunk: Buffer): Promise<void> | void;
  hex(): Promise<string>;
  /** Releases the state of an unfinished hash (no-op after hex()). */
  discard(): void;
}

class LocalHash implements PlaintextHash {
  constructor(private readonly hash: Hash) {}
  update(chunk: Buffer): void {
    this.hash.update(chunk);
  }
  async hex(): Promise<string> {
    return this.hash.digest("hex");
  }
  discard(): void {}
}

type ToHasher =
  | { type: "start"; id: number; algorithm: string }
  | { type: "chunk"; id: number; data: ArrayBuffer; length: number }
  | { type: "digest"; id: number }
  | { type: "discard"; id: number };

type FromHasher =
  | { type: "spare"; id: number; data: ArrayBuffer }
  | { type: "digest"; id: number; hex: string }
  | { type: "error"; id: number; error: WireError };

/** Hasher-thread side: one Hash per id, chunk buffers handed back for reuse. */
function serveHashes(): void {
  const hashes = new Map<number, Hash | Error>();
  const reply = (message: FromHasher, transfer?: ArrayBuffer[]): void => port!.postMessage(message, transfer ?? []);
  port!.on("message", (message: ToHasher) => {
    switch (message.type) {
      case "start":
        try {
          hashes.set(message.id, createHash(message.algorithm));
        } catch (err) {
          hashes.set(message.id, err instanceof Error ? err : new Error(String(err)));
        }
        break;
      case "chunk": {
        const hash = hashes.get(message.id);
        if (hash && !(hash instanceof Error)) hash.update(new Uint8Array(message.data, 0, message.length));
        reply({ type: "spare", id: message.id, data: message.data }, [message.data]);
        break;
      }
      case "digest": {
        const hash = hashes.get(message.id);
        hashes.delete(message.id);
        if (hash === undefined || hash instanceof Error) {
          reply({ type: "error", id: message.id, error: toWire(hash ?? new Error(`hasher thread has no hash ${message.id}`)) });
        } else {
          reply({ type: "digest", id: message.id, hex: hash.digest("hex") });
        }
        break;
      }
      case "discard":
        hashes.delete(message.id);
        break;
    }
  });
}

/** Pool-worker side: the hasher thread, started on first use and replaced when it dies. */
class HashHelper {
  private thread: Worker | null = null;
  private nextId = 1;
  private readonly waiting = new Map<number, { thread: Worker; resolve: (hex: string) => void; reject: (err: Error) => void }>();
  /** Hashes that may still send chunks, for their flow control. */
  private readonly open = new Map<number, OffThreadHash>();
  private readonly spares: ArrayBuffer[] = [];

  start(algorithm: string): OffThreadHash {
    const thread = this.thread ?? this.spawn();
    const id = this.nextId++;
    thread.postMessage({ type: "start", id, algorithm } satisfies ToHasher);
    const hash = new OffThreadHash(this, thread, id);
    this.open.set(id, hash);
    return hash;
  }

  close(id: number): void {
    this.open.delete(id);
  }

  isAlive(thread: Worker): boolean {
    return this.thread === thread;
  }

  digest(thread: Worker, id: number): Promise<string> {
    if (!this.isAlive(thread)) return Promise.reject(new Error("fileformat hasher thread died"));
    return new Promise<string>((resolve, reject) => {
      this.waiting.set(id, { thread, resolve, reject });
      thread.postMessage({ type: "digest", id } satisfies ToHasher);
    });
  }

  takeSpare(): Buffer | undefined {
    const data = this.spares.pop();
    return data === undefined ? undefined : Buffer.from(data);
  }

  private spawn(): Worker {
    const thread = new Worker(new URL(import.meta.url), { workerData: { role: HASHER_ROLE } });
    thread.unref();
    thread.on("message", (message: FromHasher) => {
      if (message.type === "spare") {
        this.open.get(message.id)?.hashed();
        if (message.data.byteLength === TRANSFER_CHUNK && this.spares.length < MAX_SPARE_CHUNKS) this.spares.push(message.data);
        return;
      }
      const waiter = this.waiting.get(message.id);
      if (!waiter) return;
      this.waiting.delete(message.id);
      if (message.type === "digest") waiter.resolve(message.hex);
      else waiter.reject(fromWire(message.error));
    });
    const die = (err: Error): void => {
      if (this.thread === thread) this.thread = null;
      // Unblocked senders fail at hex(): the thread's hashes are lost.
      for (const hash of this.open.values()) if (hash.thread === thread) hash.hashed(Infinity);
      for (const [id, waiter] of this.waiting) {
        if (waiter.thread !== thread) continue;
        this.waiting.delete(id);
        waiter.reject(err);
      }
    };
    thread.on("error", die);
    thread.on("exit", (code) => die(new Error(`fileformat hasher thread exited with code ${code}`)));
    this.thread = thread;
    return thread;
  }
}

/** Chunks go to the hasher thread (transferred, so the caller must not touch them again). */
class OffThreadHash implements PlaintextHash {
  private done = false;
  private inFlight = 0;
  private wake: (() => void) | null = null;

  constructor(
    private readonly helper: HashHelper,
    readonly thread: Worker,
    private readonly id: number,
  ) {}

  /** The hasher thread finished `count` chunks. */
  hashed(count = 1): void {
    this.inFlight = Math.max(0, this.inFlight - count);
    if (this.inFlight < MAX_HASH_CHUNKS_IN_FLIGHT && this.wake) {
      const wake = this.wake;
      this.wake = null;
      wake();
    }
  }

  update(chunk: Buffer): Promise<void> | void {
    let data = chunk.buffer as ArrayBuffer;
    if (chunk.byteOffset !== 0 || data.byteLength !== TRANSFER_CHUNK) {
      // Not a whole chunk buffer of readChunks: send a copy rather than detach memory others use.
      const copy = Buffer.allocUnsafeSlow(chunk.length);
      chunk.copy(copy);
      data = copy.buffer as ArrayBuffer;
    }
    this.thread.postMessage({ type: "chunk", id: this.id, data, length: chunk.length } satisfies ToHasher, [data]);
    if (++this.inFlight >= MAX_HASH_CHUNKS_IN_FLIGHT && this.helper.isAlive(this.thread)) {
      return new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  hex(): Promise<string> {
    this.done = true;
    this.helper.close(this.id);
    return this.helper.digest(this.thread, this.id);
  }

  discard(): void {
    if (this.done) return;
    this.done = true;
    this.helper.close(this.id);
    if (this.helper.isAlive(this.thread)) this.thread.postMessage({ type: "discard", id: this.id } satisfies ToHasher);
  }
}

const hashHelper = new HashHelper();

function hashFor(opts: EncodeTaskOptions, inputSize = 0): PlaintextHash | null {
  if (!opts.hashAlgorithm) return null;
  const algorithm = nodeHashName(opts.hashAlgorithm);
  return inputSize >= OFF_THREAD_HASH_MIN_SIZE ? hashHelper.start(algorithm) : new LocalHash(createHash(algorithm));
}

/** Runs a file encode with its plaintext hash; an unfinished hash is released on failure. */
async function encodeWithHash<T>(opts: EncodeTaskOptions, size: number, body: (hash: PlaintextHash | null) => Promise<T>): Promise<T> {
  const hash = hashFor(opts, size);
  try {
    return await body(hash);
  } finally {
    hash?.discard();
  }
}

async function runTask(task: TaskRequest): Promise<{ result: TaskResult; transfer?: ArrayBuffer[] }> {
  switch (task.kind) {
    case "encodeFile": {
      const codec = createEncoder(task.opts);
      return withInput(task.src, (input, size) =>
        encodeWithHash(task.opts, size, (hash) =>
          withAtomicOutput(task.dst, async (out) => {
            const originalSize = await pump(codec, input, out, hash);
            return { result: await encodeResult(originalSize, out.total, hash) };
          }),
        ),
      );
    }
    case "encodeFileToBuffer": {
      const codec = createEncoder(task.opts);
      const pieces: Buffer[] = [];
      const out = new Accumulator((full) => void pieces.push(full));
      const result = await withInput(task.src, (input, size) =>
        encodeWithHash(task.opts, size, async (hash) => encodeResult(await pump(codec, input, out, hash), out.total, hash)),
      );
      // allocUnsafeSlow: a buffer owning its whole ArrayBuffer, so it can be transferred.
      const data = Buffer.allocUnsafeSlow(out.total);
      let offset = 0;
      for (const piece of pieces) offset += piece.copy(data, offset);
      return { result: { ...result, data: data.buffer as ArrayBuffer }, transfer: [data.buffer as ArrayBuffer] };
    }
    case "decodeFile": {
      const codec = makeDecoder(task.metadata, task.privateKeyPem);
      return withInput(task.src, (input) =>
        withAtomicOutput(task.dst, async (out) => {
          await pump(codec, input, out, null);
          return { result: { size: out.total } };
        }),
      );
    }
  }
}

async function encodeResult(originalSize: number, storedSize: number, hash: PlaintextHash | null): Promise<EncodeFileResult> {
  const result: EncodeFileResult = { originalSize, storedSize };
  if (hash) result.hash = await hash.hex();
  return result;
}

const END = Symbol("end");

class StreamSession {
  private readonly queue: Array<Buffer | typeof END> = [];
  private wakeInput: (() => void) | null = null;
  private wakeCredit: (() => void) | null = null;
  private outstanding = 0;
  private aborted = false;
  private readonly codec: Codec;
  private readonly hash: PlaintextHash | null;
  private readonly out: Accumulator;

  constructor(
    private readonly id: number,
    spec: StreamSpec,
  ) {
    if (spec.mode === "encode") {
      this.codec = createEncoder(spec.opts);
      this.hash = hashFor(spec.opts);
    } else {
      this.codec = makeDecoder(spec.metadata, spec.privateKeyPem);
      this.hash = null;
    }
    this.out = new Accumulator((full) => this.send(full));
  }

  push(item: Buffer | typeof END): void {
    this.queue.push(item);
    this.wakeInput?.();
  }

  credit(bytes: number): void {
    this.outstanding -= bytes;
    if (this.outstanding <= OUTPUT_CREDIT) this.wakeCredit?.();
  }

  abort(): void {
    this.aborted = true;
    this.wakeInput?.();
    this.wakeCredit?.();
  }

  private send(full: Buffer): Promise<void> | void {
    if (this.aborted) throw new Error("stream aborted");
    const data = full.buffer as ArrayBuffer;
    const length = full.length; // read before the transfer detaches `full`
    post({ type: "out", id: this.id, data, length }, [data]);
    this.outstanding += length;
    if (this.outstanding > OUTPUT_CREDIT) {
      return new Promise<void>((resolve) => {
        this.wakeCredit = () => {
          this.wakeCredit = null;
          resolve();
        };
      });
    }
  }

  private async *input(): AsyncGenerator<Buffer> {
    for (;;) {
      if (this.queue.length === 0) {
        // Idle: hand over what we have so a consumer waiting for output is never stuck.
        await this.out.flush();
        if (this.queue.length === 0) await new Promise<void>((resolve) => (this.wakeInput = resolve));
        this.wakeInput = null;
      }
      if (this.aborted) throw new Error("stream aborted");
      const item = this.queue.shift();
      if (item === undefined) continue;
      if (item === END) return;
      // Acknowledged as soon as taken: the main thread may then send another batch.
      post({ type: "ack", id: this.id });
      yield item;
    }
  }

  async run(): Promise<void> {
    const originalSize = await pump(this.codec, this.input(), this.out, this.hash);
    if (this.aborted) return;
    const result = await encodeResult(originalSize, this.out.total, this.hash);
    if (this.aborted) return;
    post({ type: "done", id: this.id, result });
  }
}

const sessions = new Map<number, StreamSession>();

if (isHasher) serveHashes();
else port.on("message", (message: ToWorker) => {
  switch (message.type) {
    case "task":
      runTask(message.task).then(
        ({ result, transfer }) => post({ type: "taskDone", id: message.id, result }, transfer),
        (err: unknown) => post({ type: "taskError", id: message.id, error: toWire(err) }),
      );
      break;
    case "open": {
      let session: StreamSession;
      try {
        session = new StreamSession(message.id, message.spec);
      } catch (err) {
        post({ type: "error", id: message.id, error: toWire(err) });
        break;
      }
      sessions.set(message.id, session);
      session.run().then(
        () => sessions.delete(message.id),
        (err: unknown) => {
          const wasAborted = !sessions.has(message.id);
          sessions.delete(message.id);
          if (!wasAborted) post({ type: "error", id: message.id, error: toWire(err) });
        },
      );
      break;
    }
    case "data":
      sessions.get(message.id)?.push(Buffer.from(message.data, 0, message.length));
      break;
    case "end":
      sessions.get(message.id)?.push(END);
      break;
    case "credit":
      sessions.get(message.id)?.credit(message.bytes);
      break;
    case "abort": {
      const session = sessions.get(message.id);
      sessions.delete(message.id);
      session?.abort();
      break;
    }
  }
});

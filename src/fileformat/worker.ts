/**
 * Worker thread of FileFormatPool: runs the codec chains on files (paths in, so no buffers cross
 * threads) and on streams fed in ~1 MiB transferred batches, with credit-based flow control so
 * that neither side buffers without bound. Plaintext digests of large files are computed in a
 * hasher thread of its own (plaintext_hash.ts, hasher.ts).
 */
import { open, rename, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { parentPort, type MessagePort } from "node:worker_threads";
import { defaultTempPath, fsyncDirectory, removeIfExists } from "../common/fs.js";
import { KeyNotFoundError, toWire } from "./errors.js";
import { createDecoder, createEncoder, decodePlan } from "./pipeline.js";
import { hashFor, takeSpareChunk, type PlaintextHash } from "./plaintext_hash.js";
import { StripedSnappyEncoder, serveSnappyStripes } from "./striped.js";
import {
  TRANSFER_CHUNK,
  type EncodeTaskOptions,
  type FromWorker,
  type StreamSpec,
  type TaskRequest,
  type TaskResult,
  type ToWorker,
} from "./protocol.js";
import type { Codec, EncodeFileResult, Metadata, PrivateKeyLookup } from "./types.js";

/** Worker output not yet consumed by the main thread before the worker pauses. */
const OUTPUT_CREDIT = 4 * TRANSFER_CHUNK;

const port = parentPort;
if (port === null) throw new Error("fileformat worker must run in a worker thread");

function post(message: FromWorker, transfer?: ArrayBuffer[]): void {
  port!.postMessage(message, transfer ?? []);
}

/** Where pump() puts the stored bytes. */
interface Output {
  readonly total: number;
  /** Returns a promise only when the consumer asks us to wait. */
  add(piece: Buffer): Promise<void> | undefined;
  flush(): Promise<void> | void;
}

/** Largest scratch buffer a worker keeps between encodeFileToBuffer tasks (a WAL segment and some). */
const MAX_KEPT_SCRATCH = 17 * 1024 * 1024;
/** One per file task a worker runs at once (the pool's TASKS_PER_WORKER). */
const MAX_KEPT_SCRATCHES = 2;
const keptScratches: Buffer[] = [];

/**
 * Collects a whole encoded file in one scratch buffer reused across tasks, then hands over one
 * exact-size copy: a single copy of the output, into memory that is mostly already faulted in
 * (fresh buffers page-fault on every use, which costs more than the copy itself here).
 */
class BufferOutput implements Output {
  private buf: Buffer;
  total = 0;

  constructor() {
    this.buf = keptScratches.pop() ?? Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
  }

  add(piece: Buffer): undefined {
    if (this.total + piece.length > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < this.total + piece.length) size *= 2;
      const bigger = Buffer.allocUnsafeSlow(size);
      this.buf.copy(bigger, 0, 0, this.total);
      this.buf = bigger;
    }
    piece.copy(this.buf, this.total);
    this.total += piece.length;
    return undefined;
  }

  flush(): void {}

  /** The output in a buffer owning its whole ArrayBuffer (transferable); the scratch is kept for the next task. */
  take(): Buffer {
    // allocUnsafeSlow: a buffer owning its whole ArrayBuffer, so it can be transferred.
    const data = Buffer.allocUnsafeSlow(this.total);
    this.buf.copy(data, 0, 0, this.total);
    this.release();
    return data;
  }

  release(): void {
    if (this.buf.length <= MAX_KEPT_SCRATCH && keptScratches.length < MAX_KEPT_SCRATCHES) keptScratches.push(this.buf);
  }
}

/** Copies output pieces into fixed-size buffers that own their ArrayBuffer (transferable). */
class Accumulator implements Output {
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
  const buffers: Buffer[] = [takeReadBuffer(), takeReadBuffer()];
  let turn = 0;
  const readOne = async (): Promise<Buffer | null> => {
    // A detached buffer went to the hasher thread with its chunk (OffThreadHash): take another.
    if (buffers[turn].buffer.byteLength === 0)
      buffers[turn] = takeSpareChunk() ?? Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
    const buf = buffers[turn];
    turn ^= 1;
    const { bytesRead } = await handle.read(buf, 0, buf.length, null);
    return bytesRead === 0 ? null : buf.subarray(0, bytesRead);
  };
  let next: Promise<Buffer | null> | null = readOne();
  try {
    for (;;) {
      const chunk: Buffer | null = await next;
      next = null;
      if (chunk === null) return;
      next = readOne();
      yield chunk;
    }
  } finally {
    // A read still in flight (the consumer stopped early) writes into its buffer: not reused then.
    if (next === null) for (const buf of buffers) keepReadBuffer(buf);
  }
}

/** Read buffers kept between file tasks (two per task, two tasks at once per worker). */
const MAX_KEPT_READ_BUFFERS = 4;
const keptReadBuffers: Buffer[] = [];

function takeReadBuffer(): Buffer {
  return keptReadBuffers.pop() ?? Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
}

/** Fresh 1 MiB buffers page-fault in again on every task; reused ones are already mapped. */
function keepReadBuffer(buf: Buffer): void {
  if (buf.buffer.byteLength === TRANSFER_CHUNK && keptReadBuffers.length < MAX_KEPT_READ_BUFFERS)
    keptReadBuffers.push(buf);
}

/**
 * pump() for a striped snappy stream: `striped` compresses (with its helper), `tail` encrypts
 * (or passes through) the framed output in stream order.
 */
async function pumpStriped(
  striped: StripedSnappyEncoder,
  tail: Codec,
  input: AsyncIterable<Buffer>,
  out: Output,
): Promise<number> {
  const emit = async (framed: Buffer[]): Promise<void> => {
    for (const piece of framed) {
      for (const stored of tail.update(piece)) {
        const wait = out.add(stored);
        if (wait) await wait;
      }
    }
  };
  let originalSize = 0;
  try {
    for await (const chunk of input) {
      originalSize += chunk.length; // read before update(): the chunk may be transferred
      await emit(striped.update(chunk));
      while (striped.backlogged) {
        await striped.waitForHelper();
        await emit(striped.ready());
      }
    }
    striped.end();
    for (;;) {
      await emit(striped.ready());
      if (!striped.pending) break;
      await striped.waitForHelper();
    }
    for (const piece of tail.final()) {
      const wait = out.add(piece);
      if (wait) await wait;
    }
    await out.flush();
  } finally {
    striped.close();
  }
  return originalSize;
}

async function pump(
  codec: Codec,
  input: AsyncIterable<Buffer>,
  out: Output,
  hash: PlaintextHash | null,
): Promise<number> {
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

async function withInput<T>(
  src: string,
  body: (chunks: AsyncIterable<Buffer>, size: number) => Promise<T>,
): Promise<T> {
  const handle = await open(src, "r");
  try {
    return await body(readChunks(handle), (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}
/** Runs a file encode with its plaintext hash; an unfinished hash is released on failure. */
async function encodeWithHash<T>(
  task: { opts: EncodeTaskOptions; hashOffThread?: boolean },
  size: number,
  body: (hash: PlaintextHash | null) => Promise<T>,
): Promise<T> {
  const hash = hashFor(task.opts, size, task.hashOffThread ?? true);
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
        encodeWithHash(task, size, (hash) =>
          withAtomicOutput(task.dst, async (out) => {
            const originalSize = await pump(codec, input, out, hash);
            return { result: await encodeResult(originalSize, out.total, hash) };
          }),
        ),
      );
    }
    case "encodeFileToBuffer": {
      const codec = createEncoder(task.opts);
      const out = new BufferOutput();
      let result: EncodeFileResult;
      try {
        result = await withInput(task.src, (input, size) =>
          encodeWithHash(task, size, async (hash) =>
            encodeResult(await pump(codec, input, out, hash), out.total, hash),
          ),
        );
      } catch (err) {
        out.release();
        throw err;
      }
      const data = out.take();
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

async function encodeResult(
  originalSize: number,
  storedSize: number,
  hash: PlaintextHash | null,
): Promise<EncodeFileResult> {
  const result: EncodeFileResult = { originalSize, storedSize };
  if (hash) result.hash = await hash.hex();
  return result;
}

const END = Symbol("end");

/** A consumed whole-batch buffer (not moved elsewhere meanwhile) the main thread can reuse. */
function reusable(chunk: Buffer | null): ArrayBuffer | null {
  if (chunk === null || chunk.byteOffset !== 0 || chunk.buffer.byteLength !== TRANSFER_CHUNK) return null;
  return chunk.buffer as ArrayBuffer;
}

class StreamSession {
  private readonly queue: Array<Buffer | typeof END> = [];
  private wakeInput: (() => void) | null = null;
  private wakeCredit: (() => void) | null = null;
  private outstanding = 0;
  private aborted = false;
  private readonly codec: Codec;
  private readonly hash: PlaintextHash | null;
  private readonly out: Accumulator;
  private readonly striped: StripedSnappyEncoder | null = null;
  /** Encode input goes back for reuse (decoders are not relied on to drop their input). */
  private readonly recycle: boolean;
  private readonly outputPath: string | null;
  private file: FileHandle | null = null;

  constructor(
    private readonly id: number,
    spec: StreamSpec,
    stripes?: MessagePort,
  ) {
    this.recycle = spec.mode === "encode";
    this.outputPath = (spec.mode === "encode" && spec.outputPath) || null;
    if (spec.mode === "encode" && stripes !== undefined) {
      // The pool stripes only snappy streams without a plaintext hash (the helper takes the input).
      this.striped = new StripedSnappyEncoder(stripes);
      this.codec = createEncoder({ ...spec.opts, algorithm: null });
      this.hash = null;
    } else if (spec.mode === "encode") {
      this.codec = createEncoder(spec.opts);
      this.hash = hashFor(spec.opts);
    } else {
      this.codec = makeDecoder(spec.metadata, spec.privateKeyPem);
      this.hash = null;
    }
    this.out = new Accumulator((full) => (this.file !== null ? writeAll(this.file, full) : this.send(full)));
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
    this.striped?.close();
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
    // The batch yielded last: consumed once the next one is asked for (pump() and pumpStriped()
    // copy every output piece before pulling more), so it goes back with the next ack.
    let previous: Buffer | null = null;
    for (;;) {
      if (this.queue.length === 0) {
        // Idle: hand over what we have so a consumer waiting for output is never stuck.
        if (this.file === null) await this.out.flush();
        if (this.queue.length === 0) await new Promise<void>((resolve) => (this.wakeInput = resolve));
        this.wakeInput = null;
      }
      if (this.aborted) throw new Error("stream aborted");
      const item = this.queue.shift();
      if (item === undefined) continue;
      if (item === END) return;
      // Acknowledged as soon as taken: the main thread may then send another batch.
      const spare = this.recycle ? reusable(previous) : null;
      if (spare) post({ type: "ack", id: this.id, spare }, [spare]);
      else post({ type: "ack", id: this.id });
      previous = item;
      yield item;
    }
  }

  async run(): Promise<void> {
    let originalSize: number;
    // Written here, not sent: one copy and one thread hop less per MiB of output.
    if (this.outputPath !== null) this.file = await open(this.outputPath, "w", 0o644);
    try {
      originalSize = this.striped
        ? await pumpStriped(this.striped, this.codec, this.input(), this.out)
        : await pump(this.codec, this.input(), this.out, this.hash);
    } finally {
      await this.file?.close();
    }
    if (this.aborted) return;
    const result = await encodeResult(originalSize, this.out.total, this.hash);
    if (this.striped) result.helperRanges = this.striped.helperRanges;
    if (this.aborted) return;
    post({ type: "done", id: this.id, result });
  }
}

const sessions = new Map<number, StreamSession>();

port.on("message", (message: ToWorker) => {
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
        session = new StreamSession(message.id, message.spec, message.stripes);
      } catch (err) {
        message.stripes?.close();
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
    case "stripeHelper":
      serveSnappyStripes(message.port, (data) => {
        if (data.byteLength === TRANSFER_CHUNK) post({ type: "spare", data }, [data]);
      });
      break;
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

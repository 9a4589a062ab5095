/**
 * Worker-thread pool for the CPU-heavy part of the file format: file-to-file work (paths cross
 * threads, not data) and streams whose codec runs in a worker (batches of ~1 MiB transferred
 * ArrayBuffers, bounded in flight both ways).
 */
import { availableParallelism } from "node:os";
import { Duplex } from "node:stream";
import { MessageChannel, Worker, type MessagePort, type TransferListItem } from "node:worker_threads";
import { FileFormatError, KeyNotFoundError, fromWire } from "./errors.js";
import { nodeHashName } from "./hash.js";
import { decodePlan, validateEncodeOptions } from "./pipeline.js";
import {
  TRANSFER_CHUNK,
  type EncodeTaskOptions,
  type FromWorker,
  type StreamSpec,
  type TaskRequest,
  type TaskResult,
  type ToWorker,
} from "./protocol.js";
import type { EncodeFileResult, Metadata } from "./types.js";

/** File tasks running at once per worker: two overlap one task's I/O with the other's CPU. */
const TASKS_PER_WORKER = 2;
/** Input batches sent to a worker stream and not yet taken by it. */
const MAX_BATCHES_IN_FLIGHT = 2;

const WORKER_URL = new URL("./worker.js", import.meta.url);

interface PendingTask {
  id: number;
  task: TaskRequest;
  resolve: (result: TaskResult) => void;
  reject: (err: Error) => void;
}

class Slot {
  readonly worker: Worker;
  readonly tasks = new Map<number, PendingTask>();
  readonly streams = new Map<number, WorkerStream>();
  dead = false;

  constructor(
    private readonly onDeath: (slot: Slot, err: Error) => void,
    private readonly onSpare: (data: ArrayBuffer) => void,
  ) {
    this.worker = new Worker(WORKER_URL);
    this.worker.unref();
    this.worker.on("message", (message: FromWorker) => this.onMessage(message));
    this.worker.on("error", (err) => this.die(err));
    this.worker.on("exit", (code) => this.die(new Error(`fileformat worker exited with code ${code}`)));
  }

  get load(): number {
    return this.tasks.size + this.streams.size;
  }

  post(message: ToWorker, transfer?: TransferListItem[]): void {
    this.worker.postMessage(message, transfer ?? []);
  }

  /** Keeps the process alive only while the worker has work (a forgotten pool does not hang exit). */
  updateRef(): void {
    if (this.load > 0) this.worker.ref();
    else this.worker.unref();
  }

  private onMessage(message: FromWorker): void {
    if (message.type === "spare") return this.onSpare(message.data);
    if (message.type === "ack" && message.spare) this.onSpare(message.spare);
    switch (message.type) {
      case "taskDone":
      case "taskError": {
        const pending = this.tasks.get(message.id);
        if (!pending) return;
        this.tasks.delete(message.id);
        this.updateRef();
        if (message.type === "taskDone") pending.resolve(message.result);
        else pending.reject(fromWire(message.error));
        break;
      }
      default:
        this.streams.get(message.id)?.onWorkerMessage(message);
    }
  }

  private die(err: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.onDeath(this, err);
    for (const task of this.tasks.values()) task.reject(err);
    this.tasks.clear();
    for (const stream of this.streams.values()) stream.destroy(err);
    this.streams.clear();
  }
}

/** The main-thread end of a worker stream. */
class WorkerStream extends Duplex {
  private batch: Buffer;
  private batchLength = 0;
  private inFlight = 0;
  private blockedWrite: (() => void) | null = null;
  private finalCallback: ((error?: Error | null) => void) | null = null;
  private uncredited = 0;
  private finished = false;
  private readonly resultPromise: Promise<EncodeFileResult>;
  private resolveResult!: (result: EncodeFileResult) => void;
  private rejectResult!: (err: Error) => void;

  constructor(
    private readonly slot: Slot,
    private readonly id: number,
    spec: StreamSpec,
    /** The writer gives up whole TRANSFER_CHUNK buffers: they are transferred, not copied. */
    private readonly transferInput = false,
    /** A TRANSFER_CHUNK-sized buffer owning its ArrayBuffer (a recycled one when there is one). */
    private readonly takeBuffer: () => Buffer,
    /** Striped snappy: the leader's end of the channel to its helper worker. */
    stripes?: MessagePort,
  ) {
    super({ readableHighWaterMark: TRANSFER_CHUNK, writableHighWaterMark: TRANSFER_CHUNK });
    this.batch = takeBuffer();
    this.resultPromise = new Promise<EncodeFileResult>((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
    this.resultPromise.catch(() => undefined); // observed through the stream's error too
    slot.streams.set(id, this);
    slot.updateRef();
    if (stripes) slot.post({ type: "open", id, spec, stripes }, [stripes]);
    else slot.post({ type: "open", id, spec });
  }

  result(): Promise<EncodeFileResult> {
    return this.resultPromise;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (
      this.transferInput &&
      this.batchLength === 0 &&
      chunk.length === TRANSFER_CHUNK &&
      chunk.byteOffset === 0 &&
      chunk.buffer.byteLength === TRANSFER_CHUNK
    ) {
      // A whole batch of its own: moved to the worker (the caller's buffer is detached).
      this.post(chunk.buffer as ArrayBuffer, TRANSFER_CHUNK);
      if (this.inFlight < MAX_BATCHES_IN_FLIGHT) callback();
      else this.blockedWrite = () => callback();
      return;
    }
    let offset = 0;
    while (offset < chunk.length) {
      const take = Math.min(this.batch.length - this.batchLength, chunk.length - offset);
      chunk.copy(this.batch, this.batchLength, offset, offset + take);
      this.batchLength += take;
      offset += take;
      if (this.batchLength === this.batch.length) this.sendBatch();
    }
    // Adaptive batching: a partial batch goes out only when the worker has nothing to do.
    if (this.inFlight === 0 && this.batchLength > 0) this.sendBatch();
    if (this.inFlight < MAX_BATCHES_IN_FLIGHT) callback();
    else this.blockedWrite = () => callback();
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (this.batchLength > 0) this.sendBatch();
    this.finalCallback = callback;
    this.slot.post({ type: "end", id: this.id });
  }

  override _read(): void {
    this.sendCredit();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.finished) {
      this.finished = true;
      if (!this.slot.dead) this.slot.post({ type: "abort", id: this.id });
      this.rejectResult(error ?? new Error("stream destroyed before it finished"));
    }
    this.detach();
    callback(error);
  }

  onWorkerMessage(message: FromWorker): void {
    switch (message.type) {
      case "out":
        this.uncredited += message.length;
        if (this.push(Buffer.from(message.data, 0, message.length))) this.sendCredit();
        break;
      case "ack":
        this.inFlight--;
        if (this.inFlight === 0 && this.batchLength > 0) this.sendBatch();
        if (this.inFlight < MAX_BATCHES_IN_FLIGHT && this.blockedWrite) {
          const resume = this.blockedWrite;
          this.blockedWrite = null;
          resume();
        }
        break;
      case "done": {
        this.finished = true;
        this.detach();
        this.resolveResult(message.result);
        this.push(null);
        const callback = this.finalCallback;
        this.finalCallback = null;
        callback?.();
        break;
      }
      case "error":
        this.destroy(fromWire(message.error));
        break;
    }
  }

  private sendBatch(): void {
    let data: ArrayBuffer;
    if (this.batchLength === this.batch.length) {
      data = this.batch.buffer as ArrayBuffer;
      this.batch = this.takeBuffer();
    } else {
      // Exact-size copy of a partial batch; the big buffer stays ours.
      const copy = Buffer.allocUnsafeSlow(this.batchLength);
      this.batch.copy(copy, 0, 0, this.batchLength);
      data = copy.buffer as ArrayBuffer;
    }
    const length = this.batchLength;
    this.batchLength = 0;
    this.post(data, length);
  }

  private post(data: ArrayBuffer, length: number): void {
    this.inFlight++;
    this.slot.post({ type: "data", id: this.id, data, length }, [data]);
  }

  private sendCredit(): void {
    if (this.uncredited === 0 || this.finished) return;
    const bytes = this.uncredited;
    this.uncredited = 0;
    this.slot.post({ type: "credit", id: this.id, bytes });
  }

  private detach(): void {
    if (this.slot.streams.get(this.id) === this) {
      this.slot.streams.delete(this.id);
      this.slot.updateRef();
    }
  }
}

export type PoolEncodeStream = Duplex & { result(): Promise<EncodeFileResult> };

/** Consumed input buffers kept for reuse: enough for the batches in flight of a few streams. */
const MAX_SPARES = 16;

export class FileFormatPool {
  private readonly slots: Slot[] = [];
  /**
   * Input batches the workers consumed, back for reuse: a fresh 1 MiB ArrayBuffer per batch
   * made every thread collect garbage (external memory) all through a backup.
   */
  private readonly spares: ArrayBuffer[] = [];
  private readonly queue: PendingTask[] = [];
  private nextId = 1;
  private closed = false;
  /** CPU cores to count on (see withHashPlacement). */
  private readonly cores: number;

  constructor(threadCount: number, options: { cores?: number } = {}) {
    this.cores = options.cores ?? availableParallelism();
    const count = Math.max(1, Math.floor(threadCount) || 1);
    for (let i = 0; i < count; i++) this.slots.push(this.spawn());
  }

  /**
   * A TRANSFER_CHUNK-sized buffer owning its whole ArrayBuffer (transferable), reused when a
   * worker gave one back: writers of `transferInput` streams fill these.
   */
  readonly takeBuffer = (): Buffer => {
    const spare = this.spares.pop();
    return spare !== undefined ? Buffer.from(spare) : Buffer.allocUnsafeSlow(TRANSFER_CHUNK);
  };

  /** src plaintext file → dst stored file (atomic: temp + fsync + rename) */
  async encodeFile(src: string, dst: string, opts: EncodeTaskOptions): Promise<EncodeFileResult> {
    checkEncodeOptions(opts);
    const result = await this.run({ kind: "encodeFile", src, dst, opts: plainOptions(opts) });
    return encodeResult(result);
  }

  /** src plaintext file → stored bytes in memory (for WAL to object storage without spooling) */
  async encodeFileToBuffer(src: string, opts: EncodeTaskOptions): Promise<EncodeFileResult & { data: Buffer }> {
    checkEncodeOptions(opts);
    const result = await this.run({ kind: "encodeFileToBuffer", src, opts: plainOptions(opts) });
    return { ...encodeResult(result), data: Buffer.from(result.data!) };
  }

  /** stored file → plaintext file (atomic; nothing left at dst on IntegrityError) */
  async decodeFile(
    src: string,
    dst: string,
    metadata: Metadata,
    privateKeyPem: string | null,
  ): Promise<{ size: number }> {
    checkDecodeArgs(metadata, privateKeyPem);
    const result = await this.run({ kind: "decodeFile", src, dst, metadata: { ...metadata }, privateKeyPem });
    return { size: result.size ?? 0 };
  }

  /**
   * streaming, CPU work in a worker, bounded memory. `transferInput`: whole TRANSFER_CHUNK-sized
   * buffers written (offset 0, owning their ArrayBuffer) are moved to the worker instead of
   * copied, leaving them detached (length 0) for the writer. `striped`: a snappy stream
   * keeps two workers busy (ranges compressed on a second worker, the bytes unchanged); zstd
   * (one frame; its own threads measured slower here) and plaintext-hashed streams are not.
   * `outputPath`: the worker writes the stored bytes to that file (the readable side ends empty;
   * read it, e.g. `resume()`, to see the end).
   */
  createEncodeStream(
    opts: EncodeTaskOptions,
    streamOpts: { transferInput?: boolean; striped?: boolean; outputPath?: string } = {},
  ): PoolEncodeStream {
    checkEncodeOptions(opts);
    const plain = plainOptions(opts);
    const spec: StreamSpec = { mode: "encode", opts: plain };
    if (streamOpts.outputPath !== undefined) spec.outputPath = streamOpts.outputPath;
    if (streamOpts.striped && opts.algorithm === "snappy" && !opts.hashAlgorithm) {
      const striped = this.openStriped(spec, streamOpts.transferInput);
      if (striped) return striped;
    }
    return this.openStream(spec, streamOpts.transferInput);
  }

  createDecodeStream(metadata: Metadata, privateKeyPem: string | null): Duplex {
    checkDecodeArgs(metadata, privateKeyPem);
    return this.openStream({ mode: "decode", metadata: { ...metadata }, privateKeyPem });
  }

  /**
   * Rejects queued tasks and open streams, lets tasks already running in a worker finish (so
   * none is cut off between writing its temp file and removing it), then stops the workers.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new FileFormatError("FileFormatPool closed");
    for (const task of this.queue.splice(0)) task.reject(err);
    const running: Array<Promise<unknown>> = [];
    for (const slot of this.slots) {
      for (const stream of slot.streams.values()) stream.destroy(err);
      for (const task of slot.tasks.values()) {
        running.push(
          new Promise<void>((resolve) => {
            const { resolve: done, reject: failed } = task;
            task.resolve = (result) => {
              done(result);
              resolve();
            };
            task.reject = (error) => {
              failed(error);
              resolve();
            };
          }),
        );
      }
    }
    await Promise.all(running);
    const slots = this.slots.splice(0);
    for (const slot of slots) slot.dead = true;
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }

  private spawn(): Slot {
    return new Slot(
      (dead, err) => {
        const index = this.slots.indexOf(dead);
        if (index >= 0 && !this.closed) {
          // Replace a crashed worker so the pool keeps its size; its in-flight work fails with `err`.
          this.slots[index] = this.spawn();
          void err;
          setImmediate(() => this.dispatch());
        }
      },
      (data) => {
        if (data.byteLength === TRANSFER_CHUNK && this.spares.length < MAX_SPARES) this.spares.push(data);
      },
    );
  }

  private openStream(spec: StreamSpec, transferInput = false): PoolEncodeStream {
    if (this.closed) throw new FileFormatError("FileFormatPool closed");
    const slot = this.leastLoaded();
    return new WorkerStream(slot, this.nextId++, spec, transferInput, this.takeBuffer);
  }

  /**
   * A snappy encode stream whose compression is shared with a second worker (striped.ts): one
   * large stream then keeps two cores busy. Null with fewer than two live workers.
   */
  private openStriped(spec: StreamSpec, transferInput = false): PoolEncodeStream | null {
    if (this.closed) throw new FileFormatError("FileFormatPool closed");
    const leader = this.leastLoaded();
    const helper = this.leastLoaded((slot) => slot !== leader);
    if (!leader || !helper) return null;
    const { port1, port2 } = new MessageChannel();
    helper.post({ type: "stripeHelper", port: port2 }, [port2]);
    return new WorkerStream(leader, this.nextId++, spec, transferInput, this.takeBuffer, port1);
  }

  private run(task: TaskRequest): Promise<TaskResult> {
    if (this.closed) return Promise.reject(new FileFormatError("FileFormatPool closed"));
    return new Promise<TaskResult>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, task, resolve, reject });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      const slot = this.leastLoaded((s) => s.tasks.size < TASKS_PER_WORKER);
      if (!slot) return;
      const pending = this.queue.shift()!;
      const { resolve, reject } = pending;
      const settle = (): void => {
        setImmediate(() => this.dispatch());
      };
      slot.tasks.set(pending.id, {
        ...pending,
        resolve: (result) => {
          settle();
          resolve(result);
        },
        reject: (err) => {
          settle();
          reject(err);
        },
      });
      slot.updateRef();
      slot.post({ type: "task", id: pending.id, task: this.withHashPlacement(pending.task) });
    }
  }

  /**
   * A hasher thread per encode overlaps hashing with the codec: quicker while cores are idle, but
   * more CPU in all (measured ~2 ms per 16 MiB WAL segment), so once the file tasks and streams
   * running (this one included) keep every core busy, each hashes in its own worker.
   */
  private withHashPlacement(task: TaskRequest): TaskRequest {
    if (task.kind === "decodeFile" || !task.opts.hashAlgorithm) return task;
    let running = 0;
    for (const slot of this.slots) if (!slot.dead) running += slot.load;
    return { ...task, hashOffThread: running * 2 <= this.cores };
  }

  private leastLoaded(filter: (slot: Slot) => boolean = () => true): Slot {
    let best: Slot | undefined;
    for (const slot of this.slots) {
      if (!slot.dead && filter(slot) && (best === undefined || slot.load < best.load)) best = slot;
    }
    return best as Slot;
  }
}

function checkEncodeOptions(opts: EncodeTaskOptions): void {
  validateEncodeOptions(opts);
  if (opts.hashAlgorithm) nodeHashName(opts.hashAlgorithm);
}

function checkDecodeArgs(metadata: Metadata, privateKeyPem: string | null): void {
  const plan = decodePlan(metadata);
  if (plan.encryptionKeyId !== null && !privateKeyPem) throw new KeyNotFoundError(plan.encryptionKeyId);
}

/** Only structured-clonable fields cross to the worker. */
function plainOptions(opts: EncodeTaskOptions): EncodeTaskOptions {
  const plain: EncodeTaskOptions = {
    algorithm: opts.algorithm,
    level: opts.level,
    encryptionKeyId: opts.encryptionKeyId,
    publicKeyPem: opts.publicKeyPem,
  };
  if (opts.zstdThreads !== undefined) plain.zstdThreads = opts.zstdThreads;
  if (opts.hashAlgorithm !== undefined) plain.hashAlgorithm = opts.hashAlgorithm;
  return plain;
}

function encodeResult(result: TaskResult): EncodeFileResult {
  const out: EncodeFileResult = { originalSize: result.originalSize ?? 0, storedSize: result.storedSize ?? 0 };
  if (result.hash !== undefined) out.hash = result.hash;
  return out;
}

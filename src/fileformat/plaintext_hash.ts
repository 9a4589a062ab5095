/**
 * Plaintext digests for the pool worker's file tasks: small inputs are hashed in the worker
 * itself, larger ones in the worker's hasher thread (hasher.ts), started on first use.
 */
import { createHash, type Hash } from "node:crypto";
import { Worker } from "node:worker_threads";
import { fromWire } from "./errors.js";
import { nodeHashName } from "./hash.js";
import { TRANSFER_CHUNK, type EncodeTaskOptions, type FromHasher, type ToHasher } from "./protocol.js";

/** Hashing in the hasher thread pays off only beyond a couple of chunks (each is a round trip). */
const OFF_THREAD_HASH_MIN_SIZE = 2 * TRANSFER_CHUNK;
/** Hashed chunk buffers kept for reuse by readChunks. */
const MAX_SPARE_CHUNKS = 4;
/** Chunks sent to the hasher thread and not yet hashed, per hash (bounds memory if it lags). */
const MAX_HASH_CHUNKS_IN_FLIGHT = 4;

const HASHER_URL = new URL("./hasher.js", import.meta.url);

/** Digest of the plaintext, computed in this thread or in the hasher thread. */
export interface PlaintextHash {
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

/** Pool-worker side: the hasher thread, started on first use and replaced when it dies. */
class HashHelper {
  private thread: Worker | null = null;
  private nextId = 1;
  private readonly waiting = new Map<
    number,
    { thread: Worker; resolve: (hex: string) => void; reject: (err: Error) => void }
  >();
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
    const thread = new Worker(HASHER_URL);
    thread.unref();
    thread.on("message", (message: FromHasher) => {
      if (message.type === "spare") {
        this.open.get(message.id)?.hashed();
        if (message.data.byteLength === TRANSFER_CHUNK && this.spares.length < MAX_SPARE_CHUNKS)
          this.spares.push(message.data);
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

/**
 * The digest of a file task's plaintext (null when the task wants none); `offThread`: a large
 * input may go to the hasher thread.
 */
export function hashFor(opts: EncodeTaskOptions, inputSize = 0, offThread = true): PlaintextHash | null {
  if (!opts.hashAlgorithm) return null;
  const algorithm = nodeHashName(opts.hashAlgorithm);
  return offThread && inputSize >= OFF_THREAD_HASH_MIN_SIZE
    ? hashHelper.start(algorithm)
    : new LocalHash(createHash(algorithm));
}

/** A spare chunk buffer back from the hasher thread, for readChunks to reuse. */
export function takeSpareChunk(): Buffer | undefined {
  return hashHelper.takeSpare();
}

/**
 * Snappy framing of one stream on two worker threads. A basebackup chunk is often one large file
 * (pgbench_accounts: 640 MiB), so one worker compressed it while the other core idled. Snappy
 * data chunks are independent, so the stream is cut on 64 KiB block boundaries of the stream
 * itself: the leader (the worker owning the stream) hands whole-block ranges of its input batches
 * to a helper worker over a MessagePort, encodes the rest itself, and lays the results out in
 * stream order. The bytes are exactly SnappyFrameEncoder's (one identifier, the same blocks), so
 * every reader, upstream's included, reads them as before. Encryption stays with the leader: it
 * is sequential and runs over the much smaller compressed bytes.
 */
import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import { FileFormatError, fromWire, toWire } from "./errors.js";
import type { FromStripeHelper, ToStripeHelper } from "./protocol.js";
import { SNAPPY_BLOCK, STREAM_IDENTIFIER, encodeBlocks } from "./snappy.js";

/** Ranges handed to the helper and not yet back: one being encoded, one waiting. */
const HELPER_IN_FLIGHT = 2;
/**
 * Output pieces held behind one the helper still owes: a helper whose thread is busy elsewhere
 * makes the leader wait here instead of buffering without bound.
 */
const MAX_BACKLOG = 16;
/** Smaller ranges are encoded by the leader: a round trip costs more than it saves. */
const MIN_HELPER_RANGE = 4 * SNAPPY_BLOCK;

interface Piece {
  out: Buffer | null;
}

/** The leader's side: feed it input batches in order, take framed output in order. */
export class StripedSnappyEncoder {
  private readonly carry = Buffer.allocUnsafe(SNAPPY_BLOCK);
  private carryLength = 0;
  private started = false;
  /** Output pieces in stream order; helper pieces are filled in when they come back. */
  private readonly order: Piece[] = [];
  private readonly awaiting = new Map<number, Piece>();
  private nextSeq = 0;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  private closed = false;
  /** Ranges the helper encoded (for tests and logs). */
  helperRanges = 0;

  constructor(private readonly port: MessagePort) {
    port.on("message", (message: FromStripeHelper) => this.receive(message));
    port.on("close", () => {
      if (this.awaiting.size > 0) this.failure ??= new FileFormatError("snappy helper thread went away");
      this.wakeUp();
    });
  }

  /**
   * Takes an input batch (the leader's to keep or give away: a range of it may be transferred,
   * detaching `chunk`) and returns the framed output now ready, in stream order.
   */
  update(chunk: Buffer): Buffer[] {
    this.poll();
    this.check();
    let offset = 0;
    if (this.carryLength > 0) {
      const take = Math.min(SNAPPY_BLOCK - this.carryLength, chunk.length);
      chunk.copy(this.carry, this.carryLength, 0, take);
      this.carryLength += take;
      offset = take;
      if (this.carryLength === SNAPPY_BLOCK) {
        this.encodeHere(this.carry);
        this.carryLength = 0;
      }
    }
    const whole = offset + Math.floor((chunk.length - offset) / SNAPPY_BLOCK) * SNAPPY_BLOCK;
    // The tail first: the whole blocks may be transferred below.
    if (whole < chunk.length) {
      chunk.copy(this.carry, 0, whole);
      this.carryLength = chunk.length - whole;
    }
    if (whole > offset) {
      if (this.awaiting.size < HELPER_IN_FLIGHT && whole - offset >= MIN_HELPER_RANGE)
        this.handOut(chunk, offset, whole);
      else this.encodeHere(chunk.subarray(offset, whole));
    }
    return this.ready();
  }

  /** The last partial block; then drain() until nothing is pending. */
  end(): void {
    if (this.carryLength > 0) this.encodeHere(this.carry.subarray(0, this.carryLength));
    this.carryLength = 0;
  }

  get pending(): boolean {
    return this.order.length > 0;
  }

  /** Too much output waits for the helper: take none more input before waitForHelper(). */
  get backlogged(): boolean {
    return this.order.length > MAX_BACKLOG && this.order[0].out === null;
  }

  /** Output ready in stream order (the identifier before the first data chunk). */
  ready(): Buffer[] {
    this.check();
    const out: Buffer[] = [];
    while (this.order.length > 0 && this.order[0].out !== null) {
      const framed = this.order.shift()!.out!;
      if (framed.length === 0) continue;
      if (!this.started) {
        this.started = true;
        out.push(STREAM_IDENTIFIER);
      }
      out.push(framed);
    }
    return out;
  }

  /** Resolves when the oldest piece came back from the helper (or the helper failed). */
  async waitForHelper(): Promise<void> {
    while (this.failure === null && this.order.length > 0 && this.order[0].out === null) {
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    this.check();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.failure ??= this.awaiting.size > 0 ? new FileFormatError("stream aborted") : null;
    this.port.close();
    this.wakeUp();
  }

  /**
   * Takes the helper's replies now: a leader with input queued runs from microtasks and would
   * see them as events only when its input runs dry, leaving the helper idle meanwhile.
   */
  private poll(): void {
    if (this.closed) return;
    for (;;) {
      const received = receiveMessageOnPort(this.port);
      if (received === undefined) return;
      this.receive(received.message as FromStripeHelper);
    }
  }

  private receive(message: FromStripeHelper): void {
    const piece = this.awaiting.get(message.seq);
    if (piece === undefined) return;
    this.awaiting.delete(message.seq);
    if (message.error !== undefined) this.failure ??= fromWire(message.error);
    else piece.out = Buffer.from(message.data, 0, message.length);
    this.wakeUp();
  }

  private encodeHere(data: Uint8Array): void {
    this.order.push({ out: encodeBlocks(data) });
  }

  private handOut(chunk: Buffer, start: number, end: number): void {
    const seq = this.nextSeq++;
    const piece: Piece = { out: null };
    this.order.push(piece);
    this.awaiting.set(seq, piece);
    this.helperRanges += 1;
    const data = chunk.buffer as ArrayBuffer;
    const message: ToStripeHelper = { seq, data, offset: chunk.byteOffset + start, length: end - start };
    this.port.postMessage(message, [data]);
  }

  private check(): void {
    if (this.failure !== null) throw this.failure;
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/**
 * The helper's side, in another worker: encodes the ranges it is sent until the port closes;
 * `consumed` gets each input buffer once encoded (for reuse).
 */
export function serveSnappyStripes(port: MessagePort, consumed: (data: ArrayBuffer) => void): void {
  port.on("message", (message: ToStripeHelper) => {
    let reply: FromStripeHelper;
    let transfer: ArrayBuffer[] = [];
    try {
      let encoded = encodeBlocks(new Uint8Array(message.data, message.offset, message.length));
      consumed(message.data); // encodeBlocks copied what it keeps
      if (encoded.byteOffset !== 0 || encoded.buffer.byteLength !== encoded.length) {
        // A small result may sit in Node's shared pool, which cannot be transferred.
        const own = Buffer.allocUnsafeSlow(encoded.length);
        encoded.copy(own);
        encoded = own;
      }
      const data = encoded.buffer as ArrayBuffer;
      reply = { seq: message.seq, data, length: encoded.length };
      transfer = [data];
    } catch (err) {
      reply = { seq: message.seq, data: new ArrayBuffer(0), length: 0, error: toWire(err) };
    }
    port.postMessage(reply, transfer);
  });
  port.on("close", () => port.removeAllListeners());
}

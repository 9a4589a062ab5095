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
import type { MessagePort } from "node:worker_threads";
import type { ToStripeHelper } from "./protocol.js";
import { SNAPPY_BLOCK, STREAM_IDENTIFIER, encodeBlocks } from "./snappy.js";
import { HELPER_IN_FLIGHT, StripeLeader, replyToLeader } from "./stripe_leader.js";

/** Smaller ranges are encoded by the leader: a round trip costs more than it saves. */
const MIN_HELPER_RANGE = 4 * SNAPPY_BLOCK;

/** The leader's side: feed it input batches in order, take framed output in order. */
export class StripedSnappyEncoder extends StripeLeader {
  private readonly carry = Buffer.allocUnsafe(SNAPPY_BLOCK);
  private carryLength = 0;
  private started = false;
  /** Ranges the helper encoded (for tests and logs). */
  helperRanges = 0;

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

  /** Output ready in stream order (the identifier before the first data chunk). */
  ready(): Buffer[] {
    const out = this.takeFilled();
    if (out.length > 0 && !this.started) {
      this.started = true;
      out.unshift(STREAM_IDENTIFIER);
    }
    return out;
  }

  private encodeHere(data: Uint8Array): void {
    this.pushFilled({ out: encodeBlocks(data) });
  }

  private handOut(chunk: Buffer, start: number, end: number): void {
    const seq = this.pushAwaiting({ out: null });
    this.helperRanges += 1;
    const data = chunk.buffer as ArrayBuffer;
    const message: ToStripeHelper = { seq, data, offset: chunk.byteOffset + start, length: end - start };
    this.port.postMessage(message, [data]);
  }
}

/**
 * The helper's side, in another worker: encodes the ranges it is sent until the port closes;
 * `consumed` gets each input buffer once encoded (for reuse).
 */
export function serveSnappyStripes(port: MessagePort, consumed: (data: ArrayBuffer) => void): void {
  port.on("message", (message: ToStripeHelper) =>
    replyToLeader(port, message.seq, () => {
      const encoded = encodeBlocks(new Uint8Array(message.data, message.offset, message.length));
      consumed(message.data); // encodeBlocks copied what it keeps
      return encoded;
    }),
  );
  port.on("close", () => port.removeAllListeners());
}

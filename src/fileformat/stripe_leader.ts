/**
 * The leader's half of a stream whose snappy work is shared with a helper thread over a
 * MessagePort (striped.ts encodes, striped_decode.ts decodes): output pieces kept in stream
 * order, some filled here and some when the helper's reply for them comes back, with a bound on
 * how far the leader may run ahead of a slow helper.
 */
import { receiveMessageOnPort, type MessagePort } from "node:worker_threads";
import { FileFormatError, fromWire, toWire } from "./errors.js";
import type { FromStripeHelper } from "./protocol.js";

/** Ranges handed to the helper and not yet back: one being worked on, one waiting. */
export const HELPER_IN_FLIGHT = 2;
/**
 * Output pieces held behind one the helper still owes: a helper whose thread is busy elsewhere
 * makes the leader wait here instead of buffering without bound.
 */
const MAX_BACKLOG = 16;

export interface StripePiece {
  out: Buffer | null;
}

export abstract class StripeLeader<P extends StripePiece = StripePiece> {
  /** Output pieces in stream order; helper pieces are filled in when they come back. */
  protected readonly order: P[] = [];
  protected readonly awaiting = new Map<number, P>();
  private nextSeq = 0;
  protected failure: Error | null = null;
  private wake: (() => void) | null = null;
  protected closed = false;

  constructor(protected readonly port: MessagePort) {
    port.on("message", (message: FromStripeHelper) => this.receive(message));
    port.on("close", () => {
      this.helperClosed();
      this.wakeUp();
    });
  }

  get pending(): boolean {
    return this.order.length > 0;
  }

  /** Too much output waits behind a piece the helper owes: take no more input before waitForHelper(). */
  get backlogged(): boolean {
    return this.order.length > MAX_BACKLOG && this.order[0]!.out === null;
  }

  /** Resolves when the oldest piece is filled (by the helper, or here) or the stream failed. */
  async waitForHelper(): Promise<void> {
    while (this.failure === null && this.order.length > 0 && this.order[0]!.out === null) {
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.poll();
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

  /** The helper's end went away with pieces still owed (default: the stream fails). */
  protected helperClosed(): void {
    if (this.awaiting.size > 0) this.failure ??= new FileFormatError("snappy helper thread went away");
  }

  /** Filled pieces from the front, in stream order. */
  protected takeFilled(): Buffer[] {
    this.poll();
    this.check();
    const out: Buffer[] = [];
    while (this.order.length > 0 && this.order[0]!.out !== null) {
      const piece = this.order.shift()!.out!;
      if (piece.length > 0) out.push(piece);
    }
    return out;
  }

  /** Queues a piece filled here. */
  protected pushFilled(piece: P): void {
    this.order.push(piece);
  }

  /** Queues a piece the helper is to fill; returns its sequence number for the message. */
  protected pushAwaiting(piece: P): number {
    const seq = this.nextSeq++;
    this.order.push(piece);
    this.awaiting.set(seq, piece);
    return seq;
  }

  /**
   * Takes the helper's replies now: a leader with input queued runs from microtasks and would
   * see them as events only when its input runs dry, leaving the helper idle meanwhile.
   */
  protected poll(): void {
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
    this.received(piece);
    if (message.error !== undefined) {
      this.failure ??= fromWire(message.error);
      piece.out = Buffer.alloc(0);
    } else piece.out = Buffer.from(message.data, 0, message.length);
    this.wakeUp();
  }

  /** A reply for `piece` arrived (before its output is set). */
  protected received(piece: P): void {
    void piece;
  }

  protected check(): void {
    if (this.failure !== null) throw this.failure;
  }

  protected wakeUp(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/**
 * The helper's reply for range `seq`: the output of `work()` (its memory moved to the leader, a
 * copy first unless the buffer owns exactly its memory: a small result may sit in Node's shared
 * pool, which must not be transferred) or why there is none.
 */
export function replyToLeader(port: MessagePort, seq: number, work: () => Buffer): void {
  let reply: FromStripeHelper;
  let transfer: ArrayBuffer[] = [];
  try {
    let out = work();
    if (out.byteOffset !== 0 || out.buffer.byteLength !== out.length) {
      const own = Buffer.allocUnsafeSlow(out.length);
      out.copy(own);
      out = own;
    }
    const data = out.buffer as ArrayBuffer;
    reply = { seq, data, length: out.length };
    transfer = [data];
  } catch (err) {
    reply = { seq, data: new ArrayBuffer(0), length: 0, error: toWire(err) };
  }
  port.postMessage(reply, transfer);
}

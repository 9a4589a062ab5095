/**
 * A decoder's output piece, filled across update() calls and handed on whole (the rest at
 * final()): small inputs then neither allocate a piece each nor hand on small pieces, each of
 * which costs a trip through the streams and the tar extractor downstream.
 */
export class OutputPiece {
  buffer: Buffer | null = null;
  length = 0;

  constructor(private readonly size: number) {}

  /** The piece being filled (allocated on first use). */
  current(): Buffer {
    this.buffer ??= Buffer.allocUnsafe(this.size);
    return this.buffer;
  }

  /** Room left in the current piece (a whole piece when none is started). */
  room(): number {
    return this.buffer === null ? this.size : this.buffer.length - this.length;
  }

  /** Hands on what was filled (null when nothing was) and starts a new piece on next use. */
  take(): Buffer | null {
    if (this.buffer === null || this.length === 0) return null;
    const piece = this.buffer.subarray(0, this.length);
    this.buffer = null;
    this.length = 0;
    return piece;
  }
}

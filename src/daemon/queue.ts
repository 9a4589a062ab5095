/**
 * Unbounded FIFO with async consumers, the equivalent of upstream's `queue.Queue` between threads.
 * `close()` wakes every waiting consumer with `undefined` so worker loops can end.
 */
export class AsyncQueue<T> {
  private items: T[] = [];
  private waiters: Array<(item: T | undefined) => void> = [];
  private closed = false;

  get size(): number {
    return this.items.length;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  put(item: T): void {
    if (this.closed) throw new Error("queue is closed");
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  /** Next item, or undefined once the queue is closed and drained. */
  get(): Promise<T | undefined> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Items that were queued but not taken (for shutdown bookkeeping). */
  drain(): T[] {
    const items = this.items;
    this.items = [];
    return items;
  }

  close(): void {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) waiter(undefined);
  }
}

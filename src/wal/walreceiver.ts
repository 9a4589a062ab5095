/**
 * walreceiver mode (operations.md §6.2, §11): a built-in physical replication client.
 *
 * Differences from upstream, on purpose:
 * - Incomplete segments are never padded and stored under the segment's name. After
 *   `partialIntervalMs` without messages, every 6 × `partialIntervalMs` while WAL trickles in, and
 *   on shutdown, the bytes received so far are stored as `xlog/<SEG>.partial`, a name restore
 *   never serves; the full segment replaces it later.
 * - Write and flush feedback report only WAL that is stored (the end of the highest contiguous
 *   uploaded segment), so the slot never advances over WAL that is not in the backup.
 * - Timeline switches are followed: when the server ends a historic timeline (CopyDone, then the
 *   next timeline and its start), the history file of the new timeline is stored, the bytes of the
 *   segment that holds the switch point are carried over to the new timeline's segment (as
 *   PostgreSQL does at promotion) and streaming continues on the new timeline.
 * - Streaming resumes from the state file's position or, on PG ≥ 15, the slot's position
 *   (READ_REPLICATION_SLOT) when that is further, before falling back to the server's current position.
 */
import type { Logger } from "pino";
import type { ConnectionInfo } from "../config/index.js";
import { formatLsn } from "./lsn.js";
import { historyFileName, lsnToWalName, WAL_SEG_SIZE } from "./names.js";
import {
  ReplicationConnection,
  ReplicationError,
  type ReplicationStream,
  type TimelineEnd,
  type XLogData,
} from "./replication.js";
import { parseTimelineHistory, timelineForLsn } from "./timeline.js";

const SEG = BigInt(WAL_SEG_SIZE);

/** Where received WAL goes; every promise resolves once the object is in storage. */
export interface WalSink {
  storeSegment(name: string, data: Buffer): Promise<void>;
  storeHistory(name: string, data: Buffer): Promise<void>;
  /** `data` is the first bytes of segment `name`, stored as `<name>.partial`. */
  storePartial(name: string, data: Buffer): Promise<void>;
  /** Removes `<name>.partial` if it exists. */
  deletePartial(name: string): Promise<void>;
}

export interface WalReceiverOptions {
  site: string;
  /** Replication connection keywords, password included (never logged). */
  connectionInfo: ConnectionInfo;
  slot?: string | undefined;
  /** Resume position (walreceivers.<site>.last_flushed_lsn of the state file). */
  startLsn: bigint | null;
  sink: WalSink;
  log: Logger;
  /** Idle time after which the incomplete segment is stored as `.partial` (default 10 s). */
  partialIntervalMs?: number;
  /** Interval of unsolicited standby status updates (default 10 s, like upstream's keepalive). */
  statusIntervalMs?: number;
  /** Completed segments held in memory while being stored before reading pauses (default 4). */
  maxSegmentsInFlight?: number;
}

interface Segment {
  start: bigint;
  name: string;
  buffer: Buffer;
  filled: number;
  /** Bytes already stored as `.partial`. */
  partialStored: number;
}

export class WalReceiver {
  latestActivity = new Date();
  /** Start of the first segment not stored yet: everything before it is in storage. */
  lastFlushedLsn: bigint | null;
  timeline: number | null = null;
  private conn: ReplicationConnection | null = null;
  private stream: ReplicationStream | null = null;
  private stopping = false;
  private failure: Error | null = null;
  private current: Segment | null = null;
  private expectedLsn: bigint | null = null;
  private inFlight = new Map<bigint, Promise<void>>();
  private stored = new Set<bigint>();
  private storedLsn: bigint | null = null;
  private partialChain: Promise<void> = Promise.resolve();
  /** Segments that may have a `.partial` object in storage. */
  private partialNames = new Set<string>();
  private lastMessageAt = Date.now();
  private lastStatusAt = 0;
  private lastPartialAt = Date.now();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: WalReceiverOptions) {
    this.lastFlushedLsn = options.startLsn;
  }

  private get log(): Logger {
    return this.options.log;
  }

  /** Streams until `stop()` (resolves) or an error (rejects). */
  async run(): Promise<void> {
    const { slot } = this.options;
    // Named, so the walsender is recognisable in pg_stat_replication (unless the node sets a name).
    const conn = await ReplicationConnection.connect({
      application_name: "pghoard_walreceiver",
      ...this.options.connectionInfo,
    });
    this.conn = conn;
    try {
      if (slot) {
        const created = await conn.createPhysicalSlot(slot);
        this.log.info(
          created ? `Created physical replication slot ${slot}` : `Replication slot ${slot} already exists`,
        );
      }
      const ident = await conn.identifySystem();
      this.log.info(
        `System identified itself as system ${ident.systemId}, timeline ${ident.timeline}, xlogpos ${formatLsn(ident.xlogpos)}`,
      );
      for (let tli = ident.timeline; tli > 1; tli--) await this.storeHistory(conn, tli);

      let start = this.lastFlushedLsn;
      let source = "the state file";
      if (slot) {
        // The slot only moves over WAL we reported stored; if it is ahead of the state file (written
        // every few seconds) start there, so the slot is never moved back over removed WAL.
        const info = await conn.readSlot(slot);
        if (info?.restartLsn && (start === null || info.restartLsn - (info.restartLsn % SEG) > start)) {
          start = info.restartLsn;
          source = `slot ${slot}`;
        }
      }
      if (start === null) {
        start = ident.xlogpos;
        source = "the server's current position";
      }
      start -= start % SEG;
      const history =
        ident.timeline > 1 ? parseTimelineHistory((await conn.timelineHistory(ident.timeline)).content) : [];
      let timeline = timelineForLsn(history, ident.timeline, start);
      this.storedLsn = start;
      this.lastFlushedLsn = start;
      this.expectedLsn = start;
      // A previous run may have left a .partial of the segment we restart with.
      this.partialNames.add(lsnToWalName(start, timeline));
      this.timer = setInterval(() => this.tick(), 1000);
      this.timer.unref();

      let position = start;
      for (;;) {
        this.timeline = timeline;
        this.log.info(
          `Starting replication from ${formatLsn(position)} (from ${source}), timeline ${timeline}, slot ${slot ?? "none"}`,
        );
        const stream = conn.startReplication(
          { slot, startLsn: position, timeline },
          {
            onXLogData: (msg) => this.onXLogData(msg),
            onKeepalive: (_walEnd, reply) => {
              if (reply) this.sendStatus(true);
            },
          },
        );
        this.stream = stream;
        const end = await stream.done;
        this.stream = null;
        if (this.failure) throw this.failure;
        if (!end || this.stopping) break;
        this.log.info(
          `Timeline ${timeline} ended at ${formatLsn(end.nextStartLsn)}; following timeline ${end.nextTimeline}`,
        );
        await this.switchTimeline(end);
        await this.storeHistory(conn, end.nextTimeline);
        timeline = end.nextTimeline;
        position = end.nextStartLsn;
        source = "the timeline switch";
      }
      await this.finishOnStop();
    } finally {
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      this.stream = null;
      this.conn = null;
      await conn.close();
    }
  }

  /** Ends streaming; `run()` then stores the incomplete segment as `.partial` and returns. */
  stop(): void {
    this.stopping = true;
    // A paused socket would never deliver the server's answer to our CopyDone.
    this.stream?.resume();
    this.stream?.stop();
    if (!this.stream) void this.conn?.close();
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.stream?.stop();
  }

  private async storeHistory(conn: ReplicationConnection, tli: number): Promise<void> {
    const { filename, content } = await conn.timelineHistory(tli);
    const name = filename || historyFileName(tli);
    this.log.debug(`Received timeline history ${name} for timeline ${tli}`);
    await this.options.sink.storeHistory(name, content);
  }

  private onXLogData(msg: XLogData): void {
    if (this.failure) return;
    this.latestActivity = new Date();
    this.lastMessageAt = Date.now();
    try {
      let pos = msg.dataStart;
      if (this.expectedLsn !== null && pos !== this.expectedLsn) {
        throw new ReplicationError(`WAL gap: expected data at ${formatLsn(this.expectedLsn)}, got ${formatLsn(pos)}`);
      }
      let data = msg.payload;
      while (data.length > 0) {
        const segStart = pos - (pos % SEG);
        const offset = Number(pos % SEG);
        let seg = this.current;
        if (!seg) {
          seg = {
            start: segStart,
            name: lsnToWalName(segStart, this.timeline ?? 1),
            buffer: Buffer.allocUnsafe(WAL_SEG_SIZE),
            filled: 0,
            partialStored: 0,
          };
          this.current = seg;
        }
        if (seg.start !== segStart || seg.filled !== offset) {
          throw new ReplicationError(
            `WAL gap in segment ${seg.name}: have ${seg.filled} bytes, got data at offset ${offset}`,
          );
        }
        const n = Math.min(data.length, WAL_SEG_SIZE - offset);
        // Copy now: the payload is a view into pg-protocol's reusable read buffer.
        data.copy(seg.buffer, offset, 0, n);
        seg.filled = offset + n;
        pos += BigInt(n);
        data = data.subarray(n);
        if (seg.filled === WAL_SEG_SIZE) {
          this.current = null;
          this.completeSegment(seg);
        }
      }
      this.expectedLsn = pos;
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private completeSegment(seg: Segment): void {
    const maxInFlight = this.options.maxSegmentsInFlight ?? 4;
    const promise = this.options.sink.storeSegment(seg.name, seg.buffer).then(
      async () => {
        this.log.debug(`Stored WAL segment ${seg.name}`);
        this.inFlight.delete(seg.start);
        this.stored.add(seg.start);
        this.advanceStored();
        if (this.partialNames.has(seg.name)) {
          this.partialNames.delete(seg.name);
          // A partial upload of this segment may still be running: remove it after that.
          await this.partialChain;
          await this.options.sink.deletePartial(seg.name).catch((err: unknown) => {
            this.log.warn(`Could not delete ${seg.name}.partial: ${(err as Error)?.message ?? String(err)}`);
          });
        }
      },
      (err: unknown) => {
        this.inFlight.delete(seg.start);
        this.fail(
          new ReplicationError(
            `Storing WAL segment ${seg.name} failed: ${(err as Error)?.message ?? String(err)}`,
            undefined,
            { cause: err },
          ),
        );
      },
    );
    this.inFlight.set(
      seg.start,
      promise.catch(() => undefined),
    );
    if (this.inFlight.size >= maxInFlight) this.stream?.pause();
  }

  private advanceStored(): void {
    if (this.storedLsn === null) return;
    const before = this.storedLsn;
    while (this.stored.has(this.storedLsn)) {
      this.stored.delete(this.storedLsn);
      this.storedLsn += SEG;
    }
    if (this.storedLsn !== before) {
      this.lastFlushedLsn = this.storedLsn;
      this.sendStatus(false);
    }
    if (this.inFlight.size < (this.options.maxSegmentsInFlight ?? 4)) this.stream?.resume();
  }

  private sendStatus(replyRequested: boolean): void {
    if (this.storedLsn === null || !this.stream) return;
    this.lastStatusAt = Date.now();
    try {
      this.stream.sendStatus(this.storedLsn, this.storedLsn, 0n, replyRequested);
    } catch (err) {
      this.log.warn(`Could not send a standby status update: ${(err as Error).message}`);
    }
  }

  private tick(): void {
    const now = Date.now();
    if (now - this.lastStatusAt >= (this.options.statusIntervalMs ?? 10_000)) this.sendStatus(false);
    const interval = this.options.partialIntervalMs ?? 10_000;
    // Idle, or a slow trickle that never goes idle: either way the received bytes reach storage.
    if (now - this.lastMessageAt >= interval || now - this.lastPartialAt >= 6 * interval) void this.storePartial();
  }

  /** Stores the bytes of the incomplete segment received so far as `<SEG>.partial`, if any are new. */
  private storePartial(): Promise<void> {
    const seg = this.current;
    if (!seg || seg.filled === 0 || seg.filled === seg.partialStored) return this.partialChain;
    this.lastPartialAt = Date.now();
    const filled = seg.filled;
    seg.partialStored = filled;
    this.partialNames.add(seg.name);
    // Bytes before `filled` never change (only appended to), so a view is stable.
    const data = seg.buffer.subarray(0, filled);
    this.partialChain = this.partialChain
      .then(() => this.options.sink.storePartial(seg.name, data))
      .then(
        () => this.log.info(`Stored ${filled} bytes of incomplete WAL segment ${seg.name} as ${seg.name}.partial`),
        (err: unknown) =>
          this.log.error(`Storing ${seg.name}.partial failed: ${(err as Error)?.message ?? String(err)}`),
      );
    return this.partialChain;
  }

  /** The old timeline's incomplete segment is kept as `.partial`; its bytes start the new timeline's segment. */
  private async switchTimeline(end: TimelineEnd): Promise<void> {
    const seg = this.current;
    const switchSegStart = end.nextStartLsn - (end.nextStartLsn % SEG);
    if (!seg) {
      this.expectedLsn = end.nextStartLsn;
      return;
    }
    if (seg.start !== switchSegStart) {
      throw new ReplicationError(
        `Timeline switch at ${formatLsn(end.nextStartLsn)} is outside the segment being received (${seg.name})`,
      );
    }
    const keep = Number(end.nextStartLsn % SEG);
    if (seg.filled < keep) {
      throw new ReplicationError(
        `Timeline switch at ${formatLsn(end.nextStartLsn)} but only ${seg.filled} bytes of ${seg.name} were received`,
      );
    }
    seg.filled = keep;
    await this.storePartial();
    // The old timeline's partial stays in storage (as PostgreSQL keeps <SEG>.partial at promotion).
    this.partialNames.delete(seg.name);
    const copy = Buffer.allocUnsafe(WAL_SEG_SIZE);
    seg.buffer.copy(copy, 0, 0, keep);
    const newName = lsnToWalName(seg.start, end.nextTimeline);
    this.current = { start: seg.start, name: newName, buffer: copy, filled: keep, partialStored: 0 };
    this.expectedLsn = end.nextStartLsn;
  }

  /** On stop: keep the received bytes (as `.partial`) and wait for segments being stored. */
  private async finishOnStop(): Promise<void> {
    await this.storePartial();
    const pending = [...this.inFlight.values()];
    if (pending.length > 0) {
      this.log.info(`Waiting for ${pending.length} WAL segment(s) of site ${this.options.site} to be stored`);
      await Promise.all(pending);
    }
    if (this.failure) throw this.failure;
  }
}
